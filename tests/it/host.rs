//! The `handler` binary driven the way the Azure Functions host drives it.

use crate::support::*;
use redis::Commands;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;
use std::path::Path;

fn timer_payload(schedule_status: Value) -> Value {
    json!({
        "Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": schedule_status, "IsPastDue": false}},
        "Metadata": {"sys": {"MethodName": "timer-refresh", "UtcNow": "2026-11-26T10:00:00.004Z", "RandGuid": "6f1e..."}, "Unknown": [1, 2]}
    })
}

/// Posts the timer invocation chunked, as the host often does.
async fn invoke_timer(handler: &Handler, payload: &Value) -> (StatusCode, Value) {
    let bytes = serde_json::to_vec(payload).unwrap();
    let (head, tail) = bytes.split_at(bytes.len() / 2);
    let chunks = vec![Ok::<_, std::io::Error>(head.to_vec()), Ok(tail.to_vec())];
    let response = reqwest::Client::new()
        .post(handler.url("/timer-refresh"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(response.headers()["content-type"], "application/json");
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn as_a_custom_handler_it_serves_forwarded_requests_and_timer_invocations() {
    let mut redis = RedisServer::start();
    let idp = Idp::start().await;
    let keys = Keys::new();
    let port = free_port();
    let mut env = handler_env(&redis, idp.env(), &keys);
    env.push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()));
    let mut handler = Handler::start(&[], &env, port);
    assert_eq!(handler.wait_for_probe().await, StatusCode::OK);

    // A forwarded request: original path with the route prefix, host headers.
    let response = reqwest::Client::new()
        .get(handler.url(&format!(
            "/api/tokens/{GRAPH_ENCODED}?code=host-function-key"
        )))
        .header(
            "X-Azure-Functions-InvocationId",
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        )
        .header("X-Azure-Functions-HostVersion", "4.1040.0.0")
        .header("User-Agent", "Azure-Functions-Host/4.1040.0.0")
        .bearer_auth(&keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let stored: String = redis
        .conn()
        .get(format!("annika:tokens:agent:{GRAPH}"))
        .unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(body["token"], stored["token"]);

    // First run of a timer: ScheduleStatus is null.
    let (status, answer) = invoke_timer(&handler, &timer_payload(Value::Null)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["Outputs"], json!({}));
    assert_eq!(answer["ReturnValue"], Value::Null);
    assert!(
        answer["Logs"][0]
            .as_str()
            .unwrap()
            .starts_with("sweep: due=0"),
        "{answer}"
    );

    // A token inside the refresh window is refreshed by the next invocation.
    idp.set_expires_in(600);
    reqwest::Client::new()
        .post(handler.url("/api/tokens/refresh/User.Read"))
        .bearer_auth(&keys.reader)
        .send()
        .await
        .unwrap();
    idp.set_expires_in(3599);
    let requests = idp.requests();
    let status_filled = json!({"Last": "2026-11-26T09:55:00+00:00", "Next": "2026-11-26T10:05:00+00:00", "LastUpdated": "2026-11-26T09:55:00+00:00"});
    let (status, answer) = invoke_timer(&handler, &timer_payload(status_filled)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let line = answer["Logs"][0].as_str().unwrap();
    assert!(
        line.contains("due=1") && line.contains("refreshed=1"),
        "{line}"
    );
    assert_eq!(idp.requests(), requests + 1);
    let stored: String = redis.conn().get("annika:tokens:agent:User.Read").unwrap();
    assert!(stored.contains(r#""refresh_count":1"#), "{stored}");

    // Not the host's payload: a JSON 400, never a crash.
    let response = reqwest::Client::new()
        .post(handler.url("/timer-refresh"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "Invalid invocation");

    // Redis down: the sweep cannot run, and only then is the answer non-2xx.
    redis.stop();
    let (status, answer) = invoke_timer(&handler, &timer_payload(Value::Null)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");

    let exit = handler.terminate();
    assert!(exit.success(), "graceful shutdown on SIGTERM: {exit}");
    let logs = handler.logs();
    assert!(logs.contains("audit"), "token reads are audited: {logs}");
    let mut secrets = idp.issued();
    assert!(secrets.len() >= 3);
    secrets.extend([
        idp::CLIENT_SECRET.to_owned(),
        idp::PASSWORD.to_owned(),
        redis.password.clone(),
        keys.reader.clone(),
    ]);
    for secret in secrets {
        assert!(!logs.contains(&secret), "a secret reached the logs");
    }
}

/// A function as the host registers it: name, HTTP methods and route template.
struct HostRoute {
    function: String,
    methods: Vec<String>,
    route: String,
}

fn host_routes() -> Vec<HostRoute> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut routes = Vec::new();
    for folder in ["tokens", "tokens-refresh", "timer-refresh"] {
        let text = std::fs::read_to_string(root.join(folder).join("function.json")).unwrap();
        let function: Value = serde_json::from_str(&text).unwrap();
        let bindings = function["bindings"].as_array().unwrap();
        for binding in bindings.iter().filter(|b| b["type"] == "httpTrigger") {
            assert_eq!(
                bindings.len(),
                2,
                "forwarding needs exactly one httpTrigger and one http output"
            );
            routes.push(HostRoute {
                function: folder.into(),
                methods: binding["methods"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_str().unwrap().to_uppercase())
                    .collect(),
                route: binding["route"].as_str().unwrap().into(),
            });
        }
    }
    // The host registers routes in function-name order and the first match wins.
    routes.sort_by_key(|r| r.function.to_lowercase());
    routes
}

/// Which function the host would pick; a catch-all `{*x}` also matches nothing.
fn host_match<'a>(routes: &'a [HostRoute], method: &str, path: &str) -> Option<&'a HostRoute> {
    let path = path.strip_prefix("/api/")?.split('?').next()?;
    routes.iter().find(|r| {
        let prefix = r.route.split("{*").next().unwrap();
        let matches = path == prefix.trim_end_matches('/') || path.starts_with(prefix);
        matches && r.methods.iter().any(|m| m == method)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_of_the_function_json_files_is_served() {
    let redis = RedisServer::start();
    let idp = Idp::start().await;
    let keys = Keys::new();
    let port = free_port();
    let mut env = handler_env(&redis, idp.env(), &keys);
    env.push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()));
    let mut handler = Handler::start(&[], &env, port);
    handler.wait_for_probe().await;

    let routes = host_routes();
    let cases = [
        ("GET", "/api/tokens", "tokens"),
        ("GET", "/api/tokens?scope=User.Read", "tokens"),
        ("GET", "/api/tokens/health", "tokens"),
        (
            "GET",
            &format!("/api/tokens/{GRAPH_ENCODED}") as &str,
            "tokens",
        ),
        ("GET", &format!("/api/tokens/{GRAPH}"), "tokens"),
        (
            "POST",
            &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
            "tokens-refresh",
        ),
        (
            "POST",
            &format!("/api/tokens/refresh/{GRAPH}"),
            "tokens-refresh",
        ),
        ("PUT", "/api/tokens/User.Read?user_id=erin", "tokens"),
        ("DELETE", "/api/tokens/User.Read", "tokens"),
    ];
    let mut served = std::collections::HashSet::new();
    let http = reqwest::Client::new();
    for (method, path, function) in cases {
        let route = host_match(&routes, method, path)
            .unwrap_or_else(|| panic!("the host routes no function for {method} {path}"));
        assert_eq!(route.function, function, "{method} {path}");
        served.insert((route.function.clone(), method.to_owned()));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        // Every request carries a grant body; only PUT reads it.
        let response = http
            .request(method.clone(), handler.url(path))
            .bearer_auth(&keys.admin)
            .json(&json!({"access_token": "eyJ.erin.token", "expires_in": 3600}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path} -> {status} {body}");
    }
    // Every method of every HTTP function was exercised above.
    for route in &routes {
        for method in &route.methods {
            assert!(
                served.contains(&(route.function.clone(), method.clone())),
                "{} {method} untested",
                route.function
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_setting_stops_the_program_with_one_line_naming_it() {
    for (var, value) in [
        ("AZURE_AUTHORITY_HOST", "http://login.example.com"),
        ("TOKEN_REFRESH_BEFORE_SECS", "soon"),
        ("AGENT_TOKEN_FLOW", "magic"),
    ] {
        let env = vec![(var.to_owned(), value.to_owned())];
        let handler = Handler::start(&["serve", "--port", &free_port().to_string()], &env, 0);
        let (status, _, stderr) = handler.finish();
        assert!(!status.success());
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_runs_with_nothing_configured() {
    let port = free_port();
    let mut handler = Handler::start(&["dev", "--port", &port.to_string()], &[], port);
    // The key line is on stdout, as a terminal would show it.
    handler
        .wait_for_log("API key (admin, this run only): ")
        .await;
    let key = handler
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("API key (admin, this run only): "))
        .expect("dev prints an API key")
        .to_owned();
    handler.wait_for_probe().await;
    let http = reqwest::Client::new();
    let (status, body, _) = send(
        &http,
        reqwest::Method::GET,
        &handler.url(&format!("/api/tokens/{GRAPH_ENCODED}")),
        Some(&key),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["token"].as_str().unwrap().split('.').count(),
        3,
        "a signed JWT"
    );
    // The development issuer answers Entra Agent ID's requests: the token is the
    // dev agent user's, and a refresh redeems its refresh token.
    let (status, refreshed, _) = send(
        &http,
        reqwest::Method::POST,
        &handler.url(&format!("/api/tokens/refresh/{GRAPH_ENCODED}")),
        Some(&key),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_ne!(refreshed["token"], body["token"]);
    let (_, listing, _) = send(
        &http,
        reqwest::Method::GET,
        &handler.url("/api/tokens"),
        Some(&key),
    )
    .await;
    assert_eq!(listing["tokens"][0]["flow"], "agent_user", "{listing}");
    assert_eq!(listing["tokens"][0]["refresh_count"], 1, "{listing}");
    let (status, body, _) = send(
        &http,
        reqwest::Method::GET,
        &handler.url("/api/tokens/health"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["store"], "memory");
    let (status, _, _) = send(
        &http,
        reqwest::Method::GET,
        &handler.url("/api/tokens"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "dev still wants its key");
    assert!(handler.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_new_prints_a_key_whose_hash_is_in_its_entry() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args([
            "keys",
            "new",
            "--name",
            "reporting-app",
            "--scope",
            GRAPH,
            "--admin",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim();
    let entry: Value = serde_json::from_str(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("entry:"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert_eq!(entry["name"], "reporting-app");
    assert_eq!(entry["scopes"], json!([GRAPH]));
    assert_eq!(entry["admin"], true);
    let hash = sha2::Sha256::digest(key.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(entry["sha256"], hex);
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_mode_prints_its_summary_and_fails_without_redis() {
    let mut redis = RedisServer::start();
    let idp = Idp::start().await;
    let env = handler_env(&redis, idp.env(), &Keys::new());
    let run = |env: &[(String, String)]| Handler::start(&["sweep"], env, 0).finish();
    let (status, stdout, logs) = run(&env);
    assert!(status.success(), "{logs}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (summary["due"].as_u64(), summary["refreshed"].as_u64()),
        (Some(1), Some(1)),
        "{summary}"
    );
    assert!(
        redis
            .conn()
            .exists::<_, bool>(format!("annika:tokens:agent:{GRAPH}"))
            .unwrap()
    );

    redis.stop();
    let (status, _, logs) = run(&env);
    assert!(!status.success());
    assert!(logs.contains("sweep could not run"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn log_format_json_writes_one_json_object_per_line() {
    let redis = RedisServer::start();
    let idp = Idp::start().await;
    let keys = Keys::new();
    let port = free_port();
    let mut env = handler_env(&redis, idp.env(), &keys);
    env.push(("LOG_FORMAT".into(), "json".into()));
    let mut handler = Handler::start(&["serve", "--port", &port.to_string()], &env, port);
    handler.wait_for_probe().await;
    let response = reqwest::Client::new()
        .get(handler.url(&format!("/api/tokens/{GRAPH_ENCODED}")))
        .bearer_auth(&keys.reader)
        .header("x-request-id", "json-log-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(handler.terminate().success());
    let logs = handler.logs();
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    let read = lines
        .iter()
        .find(|l| l["target"] == "audit" && l["fields"]["action"] == "read")
        .unwrap_or_else(|| panic!("no audit event for the read: {logs}"));
    assert_eq!(read["fields"]["caller"], "reader-app");
    assert_eq!(read["fields"]["request_id"], "json-log-1");
    assert_eq!(read["fields"]["token_fp"].as_str().unwrap().len(), 12);
    assert_eq!(read["level"], "INFO");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_does_not_wait_for_connections_that_never_sent_a_request() {
    let port = free_port();
    let mut handler = Handler::start(&["dev", "--port", &port.to_string()], &[], port);
    handler.wait_for_probe().await;
    // What a client pool does when it connects ahead of need: a connection open,
    // no request on it yet.
    let idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the handler");
    // The server has accepted it once it answers a request sent after it.
    let (status, _, _) = send(
        &reqwest::Client::new(),
        reqwest::Method::GET,
        &handler.url("/"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let exit = handler.terminate();
    assert!(exit.success(), "graceful shutdown on SIGTERM: {exit}");
    let logs = handler.logs();
    assert!(
        !logs.contains("grace period"),
        "the idle connection held shutdown for the whole grace period: {logs}"
    );
    drop(idle);
}

/// The host grades a custom handler's stderr lines as errors (warnings when they
/// say "warn") and its stdout lines as information: a normal run writes nothing
/// to stderr; a failing refresh does.
#[tokio::test(flavor = "multi_thread")]
async fn under_the_host_information_goes_to_stdout_and_only_problems_to_stderr() {
    for format in ["text", "json"] {
        two_streams(format).await;
    }
}

/// Each line's level: the word after the timestamp, or the JSON `level`.
fn levels(output: &str) -> Vec<String> {
    output
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(json) => json["level"].as_str().unwrap_or_default().to_owned(),
            Err(_) => line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned(),
        })
        .collect()
}

async fn two_streams(format: &str) {
    let redis = RedisServer::start();
    let idp = Idp::start().await;
    let keys = Keys::new();
    let port = free_port();
    // Client credentials: the password flow warns at start that it is retiring.
    let mut identity = idp.env();
    identity.retain(|(k, _)| k != "AGENT_USER_NAME" && k != "AGENT_PASSWORD");
    let mut env = handler_env(&redis, identity, &keys);
    env.push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()));
    env.push(("LOG_FORMAT".into(), format.into()));
    let mut handler = Handler::start(&[], &env, port);
    assert_eq!(handler.wait_for_probe().await, StatusCode::OK);
    // A normal run: the sweep at start, a timer tick, reads, a forced refresh.
    let (status, answer) = invoke_timer(&handler, &timer_payload(Value::Null)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let (status, body, _) = send(
            &http,
            reqwest::Method::GET,
            &handler.url(&format!("/api/tokens/{GRAPH_ENCODED}")),
            Some(&keys.reader),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body, _) = send(
        &http,
        reqwest::Method::POST,
        &handler.url(&format!("/api/tokens/refresh/{GRAPH_ENCODED}")),
        Some(&keys.reader),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    handler
        .wait_for_log(match format {
            "json" => r#""caller":"reader-app","action":"refresh""#,
            _ => r#"caller="reader-app" action="refresh""#,
        })
        .await;
    let stdout = handler.stdout();
    assert!(
        stdout.contains("sweep: due=") && stdout.contains("token read"),
        "{stdout}"
    );
    assert_eq!(handler.stderr(), "", "nothing on stderr in a normal run");

    // A refresh the identity provider refuses: its warning reaches stderr.
    idp.set_outage(Some(Failure::unavailable(5)));
    let (status, body, _) = send(
        &http,
        reqwest::Method::POST,
        &handler.url(&format!("/api/tokens/refresh/{GRAPH_ENCODED}")),
        Some(&keys.reader),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !handler.stderr().contains("token request failed") {
        assert!(
            std::time::Instant::now() < deadline,
            "the failure never reached stderr: {}",
            handler.stdout()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (out, err) = (levels(&handler.stdout()), levels(&handler.stderr()));
    assert!(
        out.iter().all(|l| l == "INFO" || l == "DEBUG"),
        "{format}: {out:?}"
    );
    assert!(
        err.iter().all(|l| l == "WARN" || l == "ERROR"),
        "{format}: {err:?}"
    );
    assert!(out.len() >= 5 && !err.is_empty(), "{format}");
}

/// timer-refresh takes its schedule from an app setting; without it the host
/// disables the function, and the handler says so at start.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_schedule_setting_is_named_at_start() {
    let folder =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("timer-refresh/function.json");
    let function: Value = serde_json::from_str(&std::fs::read_to_string(folder).unwrap()).unwrap();
    assert_eq!(
        function["bindings"][0]["schedule"],
        "%TOKEN_REFRESH_SCHEDULE%"
    );
    let redis = RedisServer::start();
    let idp = Idp::start().await;
    let port = free_port();
    let mut env = handler_env(&redis, idp.env(), &Keys::new());
    env.retain(|(k, _)| k != "TOKEN_REFRESH_SCHEDULE");
    env.push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()));
    let mut handler = Handler::start(&[], &env, port);
    handler.wait_for_probe().await;
    handler
        .wait_for_log("TOKEN_REFRESH_SCHEDULE is not set")
        .await;
    assert!(handler.stderr().contains("WARN"));
}
