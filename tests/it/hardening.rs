//! Abuse resistance: hostile input against the running binary, refresh rate
//! limits, the OpenAPI description kept in sync with the routes.

use crate::support::*;
use redis::Commands;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request over a raw connection; the status and body of the answer.
async fn raw(port: u16, request: &[u8]) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the handler is up");
    answer_of(stream, request).await
}

/// One request over a raw connection, as the first request on it or as the
/// second, after a valid one on the same kept-alive connection.
async fn raw_as(port: u16, request: &[u8], second: bool) -> (u16, String) {
    match second {
        false => raw(port, request).await,
        true => raw_second(port, request).await,
    }
}

async fn raw_second(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the handler is up");
    stream
        .write_all(b"GET /api/tokens/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("the first answer's head"));
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let mut body = vec![0; content_length(&head).expect("the first answer has a length")];
    stream.read_exact(&mut body).await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    answer_of(stream, request).await
}

async fn answer_of(mut stream: tokio::net::TcpStream, request: &[u8]) -> (u16, String) {
    // A refused write (the server closed early on a huge request) still has an answer.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn request(method: &str, target: &str, key: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_get_json_4xx_and_change_nothing() {
    let redis = RedisServer::start();
    let idp = Idp::start().await;
    let keys = Keys::new();
    // Something stored beforehand, so "unchanged" means something.
    let expires_on = unix_now() + 3600;
    let stored = json!({"token": "eyJ.stored", "expires_on": expires_on, "scope": "User.Read", "stored_at": expires_on - 60, "refresh_count": 3});
    let _: () = redis
        .conn()
        .set_ex("annika:tokens:agent:User.Read", stored.to_string(), 3600)
        .unwrap();
    let _: () = redis
        .conn()
        .sadd("annika:tokens:active", "annika:tokens:agent:User.Read")
        .unwrap();
    let port = free_port();
    let mut env = handler_env(&redis, idp.env(), &keys);
    env.push(("TOKEN_SCOPES".into(), "User.Read".into()));
    env.push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()));
    let mut handler = Handler::start(&[], &env, port);
    handler.wait_for_probe().await;
    // The start-up sweep is the last thing the service writes by itself.
    handler.wait_for_log("sweep: due=").await;
    let before = redis.snapshot();
    let requests_before = idp.requests();

    let admin = keys.admin.as_str();
    let long = "a".repeat(100 * 1024);
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let targets = [
        "/api/tokens/%FF%FE".to_owned(),
        "/api/tokens/%C3%28".to_owned(),
        "/api/tokens/a%00b".to_owned(),
        "/api/tokens/%00".to_owned(),
        "/api/tokens/..".to_owned(),
        "/api/tokens/../../etc/passwd%00".to_owned(),
        "/api/tokens/%2e%2e%2f%2e%2e%2f".to_owned(),
        "/api/tokens/a\\\\b%0d%0aSet-Cookie:x".to_owned(),
        "/api/tokens/%5C%5Cserver%5Cshare".to_owned(),
        "/api/tokens/%".to_owned(),
        "/api/tokens/%zz".to_owned(),
        "/api/tokens/%4".to_owned(),
        "/api/tokens/%0A".to_owned(),
        "/api/tokens/%09tab".to_owned(),
        "/api/tokens/%7F".to_owned(),
        format!("/api/tokens/{}", "%41".repeat(2000)),
        "/api/tokens/User.Read?user_id=a:b".to_owned(),
        "/api/tokens/User.Read?user_id=a%3Ab".to_owned(),
        "/api/tokens/User.Read?user_id=..%2F..".to_owned(),
        "/api/tokens/User.Read?user_id=%FF".to_owned(),
        "/api/tokens/User.Read?user_id=".to_owned(),
        format!("/api/tokens/User.Read?user_id={}", "u".repeat(300)),
        "/api/tokens/User.Read?user_id=a&user_id=b".to_owned(),
        "/api/tokens/User.Read?min_validity=-1".to_owned(),
        "/api/tokens/User.Read?min_validity=1e9".to_owned(),
        "/api/tokens/User.Read?scope=Mail.Send".to_owned(),
        "/api/tokens?scope=%00".to_owned(),
        "/api/tokens?scope=".to_owned(),
        "/api//tokens".to_owned(),
        "//api/tokens/health/..".to_owned(),
        "/api/tokens/refresh".to_owned(),
        "/API/TOKENS".to_owned(),
        "/api/nothing".to_owned(),
    ];
    for target in &targets {
        for method in ["GET", "DELETE", "POST", "PATCH", "OPTIONS"] {
            let target = if method == "POST" {
                target.replacen("/api/tokens/", "/api/tokens/refresh/", 1)
            } else {
                target.clone()
            };
            cases.push((
                format!("{method} {}", &target[..target.len().min(60)]),
                request(method, &target, admin, "", ""),
            ));
        }
    }
    // PUT bodies of every wrong shape, and user ids that would collide.
    for body in [
        "",
        "{",
        "[]",
        "null",
        "42",
        "\"text\"",
        "{}",
        r#"{"assertion":""}"#,
        r#"{"assertion":123}"#,
        r#"{"assertion":"a","access_token":"b","expires_in":60}"#,
        r#"{"access_token":"x"}"#,
        r#"{"access_token":"x","expires_in":-1}"#,
        r#"{"access_token":"x","expires_in":"soon"}"#,
        r#"{"access_token":"x","expires_on":1}"#,
        r#"{"access_token":["x"],"expires_in":60}"#,
        "\u{0}\u{1}",
        r#"{"assertion":"a b c"}"#,
    ] {
        cases.push((
            format!("PUT body {body}"),
            request(
                "PUT",
                "/api/tokens/User.Read?user_id=mallory",
                admin,
                "",
                body,
            ),
        ));
    }
    for user in ["a:b", "a%3Ab", "%3A", "a/b", "a%00", "a%0Ab", "*", "a,b"] {
        let body = r#"{"access_token":"eyJ.x","expires_in":60}"#;
        cases.push((
            format!("PUT user {user}"),
            request(
                "PUT",
                &format!("/api/tokens/User.Read?user_id={user}"),
                admin,
                "",
                body,
            ),
        ));
    }
    cases.push((
        "PUT huge body".into(),
        request(
            "PUT",
            "/api/tokens/User.Read?user_id=m",
            admin,
            "",
            &"x".repeat(200_000),
        ),
    ));
    // Headers: huge, many, and keys that are not keys.
    let big = format!("X-Big: {}\r\n", "b".repeat(60_000));
    cases.push((
        "huge header".into(),
        request("GET", "/api/tokens/User.Read", admin, &big, ""),
    ));
    let many: String = (0..90)
        .map(|i| format!("X-H{i}: {}\r\n", "v".repeat(200)))
        .collect();
    cases.push((
        "many headers".into(),
        request("GET", "/api/tokens/User.Read", admin, &many, ""),
    ));
    for key in ["", "x", &"k".repeat(5000), "Basic abc", "tbk_\u{80}"] {
        cases.push((
            format!("bad key {}", &key[..key.len().min(20)]),
            request("GET", "/api/tokens/User.Read", key, "", ""),
        ));
    }
    cases.push((
        "timer not json".into(),
        request("POST", "/timer-refresh", admin, "", "{nope"),
    ));
    cases.push((
        "timer too large".into(),
        request("POST", "/timer-refresh", admin, "", &"x".repeat(100_000)),
    ));
    assert!(
        cases.len() + 5 >= 200,
        "{} hostile requests",
        cases.len() + 5
    );

    for ((name, bytes), second) in cases.iter().flat_map(|case| [(case, false), (case, true)]) {
        let (status, body) = raw_as(port, bytes, second).await;
        let name = format!("{name}{}", if second { " (second request)" } else { "" });
        assert!((400..500).contains(&status), "{name}: {status} {body}");
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{name}: {status} body is not JSON: {body:.200}"));
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{name}: {json}"
        );
        assert!(!body.contains("eyJ.stored"), "{name}: no token in an error");
    }

    // Requests that are not valid HTTP, or heads past the server's limits: hyper
    // refuses them itself, with a 4xx (JSON or bodiless) or by closing the
    // connection (SPEC §8), first on a connection or not.
    let malformed: Vec<Vec<u8>> = vec![
        b"GET /api/tokens/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /api/tokens/a b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GARBAGE\r\n\r\n".to_vec(),
        // A control character in a header value.
        request("GET", "/api/tokens/User.Read", "tbk_\u{7f}", "", ""),
        request("GET", &format!("/api/tokens/{long}"), admin, "", ""),
        request("GET", &format!("/api/tokens?scope={long}"), admin, "", ""),
        request("DELETE", &format!("/api/tokens/{long}"), admin, "", ""),
        format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "a".repeat(100_000)
        )
        .into_bytes(),
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(500_000)
        )
        .into_bytes(),
    ];
    for (bytes, second) in malformed.iter().flat_map(|m| [(m, false), (m, true)]) {
        let (status, body) = raw_as(port, bytes, second).await;
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
        assert!(
            status == 0 || (400..500).contains(&status),
            "{shown}: {status} {body:.200}"
        );
        assert!(
            !body.contains("eyJ.stored"),
            "{shown}: no token in an error"
        );
    }

    assert!(handler.child.try_wait().unwrap().is_none(), "still running");
    let (status, _, _) = send(
        &reqwest::Client::new(),
        Method::GET,
        &handler.url("/api/tokens/User.Read"),
        Some(admin),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "still serving");
    // That read recorded itself for the idle rule; nothing else may have changed.
    let mut after = redis.snapshot();
    after.remove("annika:tokens:reads");
    let mut before = before;
    before.remove("annika:tokens:reads");
    assert_eq!(after, before, "Redis holds exactly what it held before");
    assert_eq!(
        idp.requests(),
        requests_before,
        "the identity provider saw no request"
    );
    assert!(!handler.logs().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_mode_without_keys_answers_401_saying_how_to_configure_them() {
    let redis = RedisServer::start();
    let idp = Idp::start().await;
    let port = free_port();
    let mut env = redis.env();
    env.extend(idp.env());
    env.push(("TOKEN_API_AUTH".into(), "keys".into()));
    let mut handler = Handler::start(&["serve", "--port", &port.to_string()], &env, port);
    handler.wait_for_probe().await;
    let http = reqwest::Client::new();
    for (method, path) in [
        (Method::GET, format!("/api/tokens/{GRAPH_ENCODED}")),
        (Method::GET, "/api/tokens".into()),
        (Method::POST, format!("/api/tokens/refresh/{GRAPH_ENCODED}")),
    ] {
        let (status, body, _) = send(&http, method, &handler.url(&path), Some("anything")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("handler keys new"),
            "{body}"
        );
    }
    let (status, body, _) =
        send(&http, Method::GET, &handler.url("/api/tokens/health"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_refreshes_are_rate_limited_per_key_and_token() {
    let app = TestApp::spawn_with(&[("TOKEN_REFRESH_RATE_PER_MIN", "2")]).await;
    let path = format!("/api/tokens/refresh/{GRAPH_ENCODED}");
    for _ in 0..2 {
        let (status, _) = app.post(&path, Some(&app.keys.reader)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let requests = app.idp.requests();
    let (status, body, headers) = app.send(Method::POST, &path, Some(&app.keys.reader)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "Too many refreshes");
    assert_eq!(body["status"], "failed");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    assert_eq!(
        app.idp.requests(),
        requests,
        "no token request when limited"
    );
    // Another token, another key, and reads are not limited.
    let (status, _) = app
        .post("/api/tokens/refresh/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.post(&path, Some(&app.keys.admin)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

fn resolve<'a>(spec: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let path = reference.trim_start_matches("#/");
            let target = path.split('/').fold(spec, |node, part| &node[part]);
            resolve(spec, target)
        }
        None => node,
    }
}

/// Whether `body` has the required properties of `schema` (or of one of its `oneOf`).
fn conforms(spec: &Value, schema: &Value, body: &Value) -> bool {
    let schema = resolve(spec, schema);
    if let Some(choices) = schema["oneOf"].as_array() {
        return choices.iter().any(|choice| conforms(spec, choice, body));
    }
    schema["required"].as_array().is_none_or(|required| {
        required
            .iter()
            .all(|field| body.get(field.as_str().unwrap()).is_some())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_description_matches_what_the_service_serves() {
    let app = TestApp::spawn().await;
    let (status, spec) = app.get("/api/tokens/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(spec["openapi"], "3.0.3");
    let paths = spec["paths"].as_object().unwrap();
    let mut exercised = 0;
    for (template, item) in paths {
        for method in ["get", "put", "post", "delete"] {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let mut path = template.replace("{scope}", GRAPH_ENCODED);
            if method == "put" {
                path.push_str("?user_id=spec-user");
            }
            let mut request = app
                .http
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    app.url(&path),
                )
                .bearer_auth(&app.keys.admin);
            if method == "put" {
                request = request.json(&json!({"access_token": "eyJ.spec", "expires_in": 600}));
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16().to_string();
            let text = response.text().await.unwrap();
            let documented = operation["responses"].get(&status).unwrap_or_else(|| {
                panic!("{method} {template} answered {status}, which is not documented")
            });
            let documented = resolve(&spec, documented);
            if let Some(schema) = documented.pointer("/content/application~1json/schema") {
                let body: Value = serde_json::from_str(&text).unwrap();
                assert!(
                    conforms(&spec, schema, &body),
                    "{method} {template} {status}: {body} does not match its schema"
                );
            }
            exercised += 1;
        }
    }
    assert_eq!(exercised, 8, "every documented operation was exercised");
    // And every route the service has is documented (the host's routes included).
    for (method, path) in [
        ("get", "/api/tokens"),
        ("get", "/api/tokens/health"),
        ("get", "/api/tokens/openapi.json"),
        ("get", "/api/tokens/metrics"),
        ("get", "/api/tokens/{scope}"),
        ("put", "/api/tokens/{scope}"),
        ("delete", "/api/tokens/{scope}"),
        ("post", "/api/tokens/refresh/{scope}"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not in openapi.json"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_events_go_to_a_capped_stream_with_request_ids_and_no_tokens() {
    let app = TestApp::spawn_with(&[("TOKEN_AUDIT_STREAM", "true")]).await;
    let path = format!("/api/tokens/{GRAPH_ENCODED}");
    let response = app
        .http
        .get(app.url(&path))
        .bearer_auth(&app.keys.reader)
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-request-id"],
        "req-abc-123",
        "propagated"
    );
    let token = response.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .http
        .get(app.url("/api/tokens/Mail.Send"))
        .bearer_auth(&app.keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    app.post(
        &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
        Some(&app.keys.reader),
    )
    .await;
    app.delete(&path, Some(&app.keys.admin)).await;

    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("annika:tokens:audit")
        .arg("-")
        .arg("+")
        .query(&mut app.redis.conn())
        .unwrap();
    let events: Vec<BTreeMap<String, String>> = entries
        .into_iter()
        .map(|(_, fields)| fields.into_iter().collect())
        .collect();
    let actions: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["caller"].as_str(),
                e["action"].as_str(),
                e["outcome"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("reader-app", "read", "Ok"),
            ("reader-app", "read", "Denied"),
            ("reader-app", "refresh", "Ok"),
            ("admin-app", "delete", "Ok")
        ]
    );
    assert_eq!(events[0]["request_id"], "req-abc-123");
    assert_eq!(events[1]["request_id"], generated);
    assert_eq!(events[0]["scope"], GRAPH);
    // The fingerprint is the first 12 hex digits of the token's SHA-256.
    let digest = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    assert_eq!(events[0]["token_fp"], hex);
    let everything = format!("{events:?}");
    assert!(!everything.contains(&token), "no token in the audit trail");
}

/// The `content-length` of an answer's head, lowercased.
fn content_length(head: &str) -> Option<usize> {
    head.split("content-length: ")
        .nth(1)?
        .split("\r\n")
        .next()?
        .parse()
        .ok()
}

/// The answers in `bytes`, in order: status and JSON body of each.
fn answers(mut bytes: &[u8]) -> Vec<(u16, Value)> {
    let mut out = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let length = content_length(&head).unwrap_or(0);
        let body = &bytes[end + 4..end + 4 + length];
        out.push((status, serde_json::from_slice(body).unwrap_or(Value::Null)));
        bytes = &bytes[end + 4 + length..];
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order_up_to_a_bad_head() {
    let app = TestApp::spawn().await;
    let admin = &app.keys.admin;
    // A body full of what looks like request heads: it is a body, not a request.
    let body = "{\r\n\r\nGET /\u{7f} HTTP/1.1\r\n\r\n";
    let mut pipeline = format!(
        "GET /api/tokens/health HTTP/1.1\r\nHost: x\r\n\r\n\
         PUT /api/tokens/User.Read?user_id=bob HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}\
         GET /api/tokens/health HTTP/1.1\r\nHost: x\r\n\r\n",
        body.len()
    )
    .into_bytes();
    pipeline.extend_from_slice(b"GET /api/tokens/\xff HTTP/1.1\r\nHost: x\r\n\r\n");
    pipeline.extend_from_slice(b"GET /api/tokens/health HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(&pipeline).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut bytes),
    )
    .await
    .expect("the connection is closed after the bad head")
    .unwrap();
    let answers = answers(&bytes);
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, [200, 400, 200, 400], "{answers:?}");
    assert_ne!(
        answers[1].1["error"], "Malformed request",
        "the PUT's body was read as its body: {answers:?}"
    );
    // hyper's own refusal of a head it cannot parse (SPEC §8), and nothing after it.
    assert!(
        app.redis_keys().iter().all(|k| !k.contains("bob")),
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let app = TestApp::spawn().await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /api/tokens/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut bytes),
    )
    .await
    .expect("answered and closed")
    .unwrap();
    let answers = answers(&bytes);
    assert_eq!(answers.len(), 1, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(answers[0].0, 200);
    assert_eq!(answers[0].1["status"], "healthy");
}
