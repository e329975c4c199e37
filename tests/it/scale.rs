//! Redis Cluster and Redis over TLS, each started here whatever the run.
//! (The second pass of `scripts/test.sh` also runs every other test on a cluster.)

use crate::support::*;
use redis::Commands;
use reqwest::StatusCode;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const GRAPH_KEY: &str = "annika:tokens:agent:https://graph.microsoft.com/.default";
const USER_READ_KEY: &str = "annika:tokens:agent:User.Read";

#[tokio::test(flavor = "multi_thread")]
async fn on_a_cluster_the_layout_spans_nodes_and_every_operation_works() {
    let app = TestApp::spawn_on(RedisServer::start_cluster(), &[]).await;
    for path in [
        format!("/api/tokens/{GRAPH_ENCODED}"),
        "/api/tokens/User.Read".to_owned(),
    ] {
        let (status, body) = app.get(&path, Some(&app.keys.reader)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The SPEC's key names are kept, so the keys of one token fall into different
    // slots, and here onto different nodes.
    let mut slots = BTreeSet::new();
    let mut conn = app.redis.conn();
    for key in [GRAPH_KEY, USER_READ_KEY, "annika:tokens:active"] {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .unwrap();
        slots.insert(slot);
    }
    assert_eq!(slots.len(), 3, "the test keys share a slot: {slots:?}");
    let holders = app
        .redis
        .node_conns()
        .into_iter()
        .map(|mut node| {
            let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut node).unwrap();
            keys
        })
        .filter(|keys| !keys.is_empty())
        .count();
    assert!(holders >= 2, "every key on one node: not a real spread");

    let members: BTreeSet<String> = conn.smembers("annika:tokens:active").unwrap();
    assert_eq!(
        members,
        BTreeSet::from([GRAPH_KEY.to_owned(), USER_READ_KEY.to_owned()])
    );
    let listed = app.get("/api/tokens", Some(&app.keys.admin)).await.1;
    assert_eq!(listed["count"], 2, "{listed}");

    // Refresh: a new token, its count up by one, in the same key.
    let (status, body) = app
        .post("/api/tokens/refresh/User.Read", Some(&app.keys.admin))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored: String = conn.get(USER_READ_KEY).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["refresh_count"], 1);

    // Delete: the token and every index entry go.
    let (status, _) = app
        .delete("/api/tokens/User.Read", Some(&app.keys.admin))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!conn.exists::<_, bool>(USER_READ_KEY).unwrap());
    let members: BTreeSet<String> = conn.smembers("annika:tokens:active").unwrap();
    assert_eq!(members, BTreeSet::from([GRAPH_KEY.to_owned()]));
    let scheduled: Option<f64> = conn
        .zscore("annika:tokens:schedule", USER_READ_KEY)
        .unwrap();
    assert_eq!(scheduled, None);

    // The sweep (schedule, MGET across slots, prune step) runs cleanly.
    let summary = app.state.tokens.sweep().await.unwrap();
    assert_eq!(summary.failed, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_a_custom_ca_and_an_acl_user() {
    let redis = RedisServer::start_tls();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "broker", "on", ">broker-pw", "~*", "&*", "+@all"][..])
        .query(&mut redis.conn())
        .unwrap();
    let app = TestApp::spawn_on(
        redis,
        &[
            ("REDIS_USERNAME", "broker"),
            ("REDIS_PASSWORD", "broker-pw"),
        ],
    )
    .await;
    let (status, body) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut conn = app.redis.conn();
    assert!(conn.exists::<_, bool>(GRAPH_KEY).unwrap());
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    assert!(
        clients.lines().any(|l| l.contains(" user=broker ")),
        "the service logs in as its ACL user: {clients}"
    );
    let (status, body) = app.get("/api/tokens/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_fails_at_start_with_one_clear_line() {
    let redis = RedisServer::start_tls();
    let dir = std::env::temp_dir().join(format!("tb-wrong-ca-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = make_ca(&dir, "wrong", false);
    let idp = Idp::start().await;
    let keys = Keys::new();
    let mut env = redis.env();
    env.retain(|(k, _)| k != "REDIS_CA_CERT");
    env.push(("REDIS_CA_CERT".into(), wrong.ca.display().to_string()));
    env.extend(idp.env());
    env.push(("TOKEN_API_KEYS".into(), keys.json.clone()));
    let port = free_port();
    env.push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()));
    let mut handler = Handler::start(&[], &env, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = handler.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the handler kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_, _, logs) = handler.finish();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success());
    let last = logs.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("handler: REDIS_CA_CERT:") && last.contains("certificate"),
        "{logs}"
    );
}
