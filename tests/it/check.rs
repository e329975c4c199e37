//! `handler check` and `handler --version`: one line per check, the right exit
//! status, no secret printed.

use crate::support::*;

fn check(env: &[(String, String)]) -> (bool, String, String) {
    let (status, stdout, stderr) = Handler::start(&["check"], env, 0).finish();
    (status.success(), stdout, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_what_works_and_what_does_not() {
    let redis = RedisServer::start();
    let idp = Idp::start().await;
    let keys = Keys::new();
    let good = handler_env(&redis, idp.env(), &keys);

    let (ok, out, _) = check(&good);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("config: ok (AGENT_TOKEN_FLOW=Password"),
        "{out}"
    );
    assert!(lines[1].starts_with("redis: ok ("), "{out}");
    assert!(
        lines[2].starts_with(
            "identity: ok (password got a token for https://graph.microsoft.com/.default"
        ),
        "{out}"
    );
    assert!(redis.keys().is_empty(), "check stores nothing");

    // A wrong Redis password.
    let mut env = good.clone();
    for (k, v) in env.iter_mut() {
        if k == "REDIS_PASSWORD" {
            *v = "not-the-password".into();
        }
    }
    let (ok, out, err) = check(&env);
    assert!(!ok);
    let line = out.lines().find(|l| l.starts_with("redis: ")).unwrap();
    assert!(!err.contains("not-the-password"));
    assert!(
        line.starts_with("redis: FAILED") && line.to_lowercase().contains("password"),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("identity: ok")), "{out}");

    // An identity provider nobody answers at.
    let mut env = good.clone();
    env.retain(|(k, _)| k != "AZURE_AUTHORITY_HOST");
    env.push((
        "AZURE_AUTHORITY_HOST".into(),
        format!("http://127.0.0.1:{}", free_port()),
    ));
    let (ok, out, _) = check(&env);
    assert!(!ok);
    let line = out.lines().find(|l| l.starts_with("identity: ")).unwrap();
    assert!(
        line.starts_with("identity: FAILED") && line.contains("unreachable"),
        "{out}"
    );

    // A bad variable: one line naming it.
    let mut env = good.clone();
    env.push(("TOKEN_REFRESH_CONCURRENCY".into(), "lots".into()));
    let (ok, out, _) = check(&env);
    assert!(!ok);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with("config: FAILED") && out.contains("TOKEN_REFRESH_CONCURRENCY"),
        "{out}"
    );

    // No secret in any of it.
    for secret in [idp::CLIENT_SECRET, idp::PASSWORD, redis.password.as_str()] {
        for run in [&good, &env] {
            let (_, out, err) = check(run);
            assert!(!out.contains(secret) && !err.contains(secret));
        }
    }
}

#[test]
fn version_names_the_version_commit_and_target() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.starts_with(&format!("handler {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(
        line.trim_end().ends_with("x86_64-unknown-linux-gnu)"),
        "{line}"
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for var in [
        "AGENT_IDENTITY_ID",
        "TOKEN_API_CALLERS",
        "REDIS_CLUSTER",
        "TOKEN_REFRESH_SCHEDULE",
    ] {
        assert!(help.contains(var), "--help lists {var}");
    }
}
