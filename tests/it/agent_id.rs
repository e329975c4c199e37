//! Entra Agent ID (SPEC §6): the double answers requests 1-5 and refuses wrong
//! shapes as Entra does; the service gets agent identities' app tokens, agent
//! users' delegated tokens and their refreshes, users' tokens as the agent
//! identity, with a certificate, a managed identity or a secret as the
//! blueprint's credential; T1 and T2 are fetched once per lifetime per instance
//! and never stored or logged.

use crate::support::certs::{self, TestCertificate};
use crate::support::idp::*;
use crate::support::*;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const USER_ASSERTION: &str = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

/// A JWT's header or payload (`part` 0 or 1), decoded.
fn jwt_part(jwt: &str, part: usize) -> Value {
    let segment = jwt.split('.').nth(part).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// A client assertion as a test wants it: signed with `key`'s private key,
/// naming `x5t`'s thumbprint, for `aud`, expiring `exp_in` seconds from now.
fn assertion(
    key: &TestCertificate,
    x5t: &TestCertificate,
    aud: &str,
    iss: &str,
    exp_in: i64,
) -> String {
    let now = unix_now();
    let mut header = Header::new(Algorithm::RS256);
    header.x5t_s256 = Some(x5t.thumbprint.clone());
    let claims = json!({"aud": aud, "iss": iss, "sub": iss, "jti": format!("{:x}", rand::random::<u64>()), "iat": now - 700, "nbf": now - 700, "exp": now + exp_in});
    let key = EncodingKey::from_rsa_pem(&key.key_pem).expect("an RSA key");
    jsonwebtoken::encode(&header, &claims, &key).expect("signed")
}

/// Asserts an Entra refusal: its status, `error` and first `AADSTS` code.
#[track_caller]
fn refused(answer: (u16, Value), status: u16, error: &str, code: u32) {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"][0], code, "{body}");
}

fn token_of(answer: (u16, Value)) -> String {
    let (status, body) = answer;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("a token").to_owned()
}

/// Request 1 with the secret.
fn t1_form(agent: &str) -> Vec<(&str, &str)> {
    vec![
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("grant_type", "client_credentials"),
        ("scope", TOKEN_EXCHANGE_SCOPE),
        ("fmi_path", agent),
    ]
}

/// A request as agent identity `agent` with `t1` as its assertion.
fn as_agent<'a>(
    agent: &'a str,
    t1: &'a str,
    grant: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        ("client_id", agent),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", t1),
    ];
    form.extend_from_slice(grant);
    form
}

#[tokio::test(flavor = "multi_thread")]
async fn the_double_answers_requests_1_to_5_and_refuses_wrong_shapes_as_entra_does() {
    let idp = Idp::start().await;
    // 1: T1, and a blueprint asking without fmi_path or for a stranger.
    let t1 = token_of(idp.post(&t1_form(AGENT_IDENTITY_ID)).await);
    let mut no_path = t1_form(AGENT_IDENTITY_ID);
    no_path.pop();
    refused(
        idp.post(&no_path).await,
        400,
        "unauthorized_client",
        code::BLUEPRINT_APP_ONLY,
    );
    refused(
        idp.post(&t1_form("not-an-agent-identity")).await,
        400,
        "invalid_request",
        code::UNKNOWN_AGENT_IDENTITY,
    );
    // 2 and 3: the agent identity's app token and T2.
    let app_token = [("grant_type", "client_credentials"), ("scope", GRAPH)];
    token_of(
        idp.post(&as_agent(AGENT_IDENTITY_ID, &t1, &app_token))
            .await,
    );
    let exchange = [
        ("grant_type", "client_credentials"),
        ("scope", TOKEN_EXCHANGE_SCOPE),
    ];
    let t2 = token_of(idp.post(&as_agent(AGENT_IDENTITY_ID, &t1, &exchange)).await);
    // 4: the agent user's token, by object id or by UPN.
    let user_fic = |user: (&'static str, &'static str), t2: String| {
        vec![
            ("grant_type", "user_fic"),
            ("scope", "User.Read offline_access"),
            user,
            (
                "user_federated_identity_credential",
                Box::leak(t2.into_boxed_str()) as &str,
            ),
        ]
    };
    let (status, body) = idp
        .post(&as_agent(
            AGENT_IDENTITY_ID,
            &t1,
            &user_fic(("user_id", AGENT_USER_ID), t2.clone()),
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let refresh_token = body["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    token_of(
        idp.post(&as_agent(
            AGENT_IDENTITY_ID,
            &t1,
            &user_fic(("username", AGENT_USER_NAME), t2.clone()),
        ))
        .await,
    );
    // 5: the refresh and on-behalf-of as the agent identity; the blueprint
    // cannot redeem the agent identity's refresh token.
    let refresh = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.as_str()),
        ("scope", "User.Read offline_access"),
    ];
    let mut as_blueprint = vec![("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)];
    as_blueprint.extend_from_slice(&refresh);
    refused(idp.post(&as_blueprint).await, 400, "invalid_grant", 70000);
    token_of(idp.post(&as_agent(AGENT_IDENTITY_ID, &t1, &refresh)).await);
    let obo = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("requested_token_use", "on_behalf_of"),
        ("assertion", USER_ASSERTION),
        ("scope", "User.Read offline_access"),
    ];
    token_of(idp.post(&as_agent(AGENT_IDENTITY_ID, &t1, &obo)).await);

    // A T1 minted for another agent identity; a T2 of another identity; the
    // other identity's agent user; a secret for an agent identity.
    let other_t1 = token_of(idp.post(&t1_form(OTHER_AGENT_IDENTITY_ID)).await);
    refused(
        idp.post(&as_agent(AGENT_IDENTITY_ID, &other_t1, &app_token))
            .await,
        400,
        "invalid_client",
        code::NO_MATCHING_FIC,
    );
    let other_t2 = token_of(
        idp.post(&as_agent(OTHER_AGENT_IDENTITY_ID, &other_t1, &exchange))
            .await,
    );
    refused(
        idp.post(&as_agent(
            AGENT_IDENTITY_ID,
            &t1,
            &user_fic(("user_id", AGENT_USER_ID), other_t2),
        ))
        .await,
        400,
        "invalid_grant",
        code::NO_MATCHING_FIC,
    );
    refused(
        idp.post(&as_agent(
            AGENT_IDENTITY_ID,
            &t1,
            &user_fic(("user_id", OTHER_AGENT_USER_ID), t2.clone()),
        ))
        .await,
        400,
        "invalid_grant",
        code::USER_NOT_LINKED,
    );
    let mut with_secret = vec![
        ("client_id", AGENT_IDENTITY_ID),
        ("client_secret", CLIENT_SECRET),
    ];
    with_secret.extend_from_slice(&app_token);
    refused(
        idp.post(&with_secret).await,
        401,
        "invalid_client",
        code::BAD_SECRET,
    );

    // Managed identities' tokens as the blueprint's federated credential: the
    // trusted one for the exchange audience works; a foreign audience or an
    // identity the blueprint does not trust is refused.
    let as_blueprint_with = |assertion: &str| {
        let assertion = Box::leak(assertion.to_owned().into_boxed_str()) as &str;
        let mut form = t1_form(AGENT_IDENTITY_ID);
        form[1] = ("client_assertion", assertion);
        form.push(("client_assertion_type", JWT_BEARER));
        form
    };
    let trusted = idp
        .managed_identity_token(MANAGED_IDENTITY_ID, "api://AzureADTokenExchange")
        .await;
    token_of(idp.post(&as_blueprint_with(&trusted)).await);
    let for_graph = idp
        .managed_identity_token(MANAGED_IDENTITY_ID, "https://graph.microsoft.com")
        .await;
    refused(
        idp.post(&as_blueprint_with(&for_graph)).await,
        400,
        "invalid_client",
        code::WRONG_FIC_AUDIENCE,
    );
    let untrusted = idp
        .managed_identity_token(CLIENT_ID, "api://AzureADTokenExchange")
        .await;
    refused(
        idp.post(&as_blueprint_with(&untrusted)).await,
        400,
        "invalid_client",
        code::FIC_SUBJECT,
    );

    // Certificate assertions: the registered certificate signs a good one; a
    // wrong signature, an unknown certificate, a wrong audience, an expired one,
    // and one issued for another client are refused.
    let (registered, unknown, endpoint) =
        (certs::registered(), certs::unknown(), idp.token_endpoint());
    let good = assertion(registered, registered, &endpoint, CLIENT_ID, 600);
    token_of(idp.post(&as_blueprint_with(&good)).await);
    for (bad, status, code) in [
        (
            assertion(unknown, registered, &endpoint, CLIENT_ID, 600),
            401,
            code::BAD_SIGNATURE,
        ),
        (
            assertion(unknown, unknown, &endpoint, CLIENT_ID, 600),
            401,
            code::BAD_SIGNATURE,
        ),
        (
            assertion(
                registered,
                registered,
                "https://login.example.com/t/oauth2/v2.0/token",
                CLIENT_ID,
                600,
            ),
            401,
            code::WRONG_AUDIENCE,
        ),
        (
            assertion(registered, registered, &endpoint, CLIENT_ID, -300),
            401,
            code::EXPIRED_ASSERTION,
        ),
        (
            assertion(registered, registered, &endpoint, AGENT_IDENTITY_ID, 600),
            401,
            code::WRONG_ISSUER,
        ),
        ("not.a-jwt".to_owned(), 400, code::MALFORMED),
    ] {
        refused(
            idp.post(&as_blueprint_with(&bad)).await,
            status,
            "invalid_client",
            code,
        );
    }

    // An expired T1 (its hour has passed).
    idp.expire_exchange_tokens();
    refused(
        idp.post(&as_agent(AGENT_IDENTITY_ID, &t1, &app_token))
            .await,
        400,
        "invalid_client",
        code::EXPIRED_ASSERTION,
    );
    refused(
        idp.post(&as_blueprint_with(&trusted)).await,
        400,
        "invalid_client",
        code::EXPIRED_ASSERTION,
    );
}

/// Alice's on-behalf-of exchange (`PUT`), then a forced refresh of her token.
async fn obo_then_refresh(app: &TestApp) {
    let path = format!("/api/tokens/{GRAPH_ENCODED}?user_id=alice");
    let (status, body) = app
        .put(
            &path,
            &app.keys.admin,
            &json!({"assertion": USER_ASSERTION}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post(
            &format!("/api/tokens/refresh/{GRAPH_ENCODED}?user_id=alice"),
            Some(&app.keys.admin),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The forms the double received, by what they asked for.
fn forms_where(
    app: &TestApp,
    pick: impl Fn(&HashMap<String, String>) -> bool,
) -> Vec<HashMap<String, String>> {
    app.idp.forms().into_iter().filter(|f| pick(f)).collect()
}

/// Asserts that none of `secrets` is anywhere in Redis.
#[track_caller]
fn not_in_redis(redis: &RedisServer, secrets: &[&str]) {
    for (key, value) in redis.snapshot() {
        for secret in secrets {
            assert!(
                !value.contains(secret) && !key.contains(secret),
                "{key} holds a credential"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_identity_gets_app_tokens_with_one_t1_and_acts_for_users() {
    let app = TestApp::spawn_as(|idp| idp.agent_env(false, Proof::Secret), &[], false).await;
    let (status, served) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{served}");
    let forms = app.idp.forms();
    let issued = app.idp.issued();
    // Request 1, then request 2 with the T1 it returned.
    assert_eq!(forms[0]["client_id"], CLIENT_ID);
    assert_eq!(forms[0]["fmi_path"], AGENT_IDENTITY_ID);
    assert_eq!(forms[0]["scope"], TOKEN_EXCHANGE_SCOPE);
    assert_eq!(forms[0]["grant_type"], "client_credentials");
    let t1 = &issued[0];
    assert_eq!(forms[1]["client_id"], AGENT_IDENTITY_ID);
    assert_eq!(forms[1]["client_assertion_type"], JWT_BEARER);
    assert_eq!(&forms[1]["client_assertion"], t1);
    assert_eq!(forms[1]["scope"], GRAPH);
    assert!(!forms[1].contains_key("client_secret"));
    assert_eq!(served["token"], issued[1]);
    let stored = app.redis.get_json(&format!("annika:tokens:agent:{GRAPH}"));
    assert_eq!(stored["metadata"]["flow"], "agent_identity");
    assert_eq!(stored["metadata"]["agent_identity"], AGENT_IDENTITY_ID);

    // A second scope reuses the T1.
    let (status, body) = app
        .get(
            "/api/tokens/api%3A%2F%2Fbilling%2F.default",
            Some(&app.keys.admin),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.idp.t1_requests(), 1);

    // A user's on-behalf-of exchange and its refresh, as the agent identity.
    obo_then_refresh(&app).await;
    for grant in [
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "refresh_token",
    ] {
        let asked = forms_where(&app, |f| f["grant_type"] == grant);
        assert_eq!(asked.len(), 1, "{grant}");
        assert_eq!(asked[0]["client_id"], AGENT_IDENTITY_ID, "{grant}");
        assert_eq!(&asked[0]["client_assertion"], t1, "{grant}");
    }
    assert_eq!(app.idp.t1_requests(), 1);
    let user = app
        .redis
        .get_json(&format!("annika:tokens:user:alice:{GRAPH}"));
    assert_eq!(user["metadata"]["agent_identity"], AGENT_IDENTITY_ID);
    not_in_redis(&app.redis, &[t1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_user_gets_delegated_tokens_through_the_binary_with_a_certificate() {
    let redis = RedisServer::start();
    let idp = Idp::start().await;
    let keys = Keys::new();
    let port = free_port();
    let certificate = certs::registered();
    let mut env = handler_env(
        &redis,
        idp.agent_env(true, Proof::Certificate(certificate)),
        &keys,
    );
    env.push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()));
    env.push(("TOKEN_SCOPES".into(), ";".into()));
    // Debug lines too: no credential may be in any of them.
    env.push(("RUST_LOG".into(), "debug".into()));
    let mut handler = Handler::start(&[], &env, port);
    handler.wait_for_probe().await;
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let url = handler.url(path);
        let (http, key) = (http.clone(), keys.reader.clone());
        async move { send(&http, reqwest::Method::GET, &url, Some(&key)).await }
    };

    let (status, served, _) = get("/api/tokens/User.Read").await;
    assert_eq!(status, StatusCode::OK, "{served}");
    let forms = idp.forms();
    let issued = idp.issued();
    assert_eq!(forms.len(), 3, "T1, T2 and the user's token: {forms:?}");
    // Request 1 with a certificate assertion.
    let proof = &forms[0]["client_assertion"];
    assert_eq!(forms[0]["client_assertion_type"], JWT_BEARER);
    assert!(!forms[0].contains_key("client_secret"));
    let header = jwt_part(proof, 0);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["x5t#S256"], certificate.thumbprint);
    let claims = jwt_part(proof, 1);
    assert_eq!(claims["aud"], idp.token_endpoint());
    assert_eq!(
        (&claims["iss"], &claims["sub"]),
        (&json!(CLIENT_ID), &json!(CLIENT_ID))
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["nbf"].as_i64().unwrap(),
        600
    );
    let (t1, t2) = (&issued[0], &issued[1]);
    // Request 3, then request 4 with T2.
    assert_eq!(forms[1]["client_id"], AGENT_IDENTITY_ID);
    assert_eq!(&forms[1]["client_assertion"], t1);
    assert_eq!(forms[1]["scope"], TOKEN_EXCHANGE_SCOPE);
    assert_eq!(forms[2]["grant_type"], "user_fic");
    assert_eq!(forms[2]["client_id"], AGENT_IDENTITY_ID);
    assert_eq!(&forms[2]["client_assertion"], t1);
    assert_eq!(forms[2]["user_id"], AGENT_USER_ID);
    assert_eq!(&forms[2]["user_federated_identity_credential"], t2);
    assert_eq!(forms[2]["scope"], "User.Read offline_access");
    assert_eq!(served["token"], issued[2]);
    let refresh_token = &issued[3];

    // A refresh redeems the agent user's refresh token as the agent identity.
    let (status, refreshed, _) = send(
        &http,
        reqwest::Method::POST,
        &handler.url("/api/tokens/refresh/User.Read"),
        Some(&keys.reader),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_ne!(refreshed["token"], served["token"]);
    let forms = idp.forms();
    assert_eq!(forms[3]["grant_type"], "refresh_token");
    assert_eq!(forms[3]["client_id"], AGENT_IDENTITY_ID);
    assert_eq!(&forms[3]["client_assertion"], t1);
    assert_eq!(&forms[3]["refresh_token"], refresh_token);
    // Another scope: one more user_fic, no more T1 or T2.
    let (status, body, _) = get("/api/tokens/User.ReadBasic.All").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((idp.t1_requests(), idp.t2_requests()), (1, 1));
    let (_, listing, _) = send(
        &http,
        reqwest::Method::GET,
        &handler.url("/api/tokens"),
        Some(&keys.admin),
    )
    .await;
    let flows: Vec<&Value> = listing["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["flow"])
        .collect();
    assert!(flows.iter().all(|f| *f == "agent_user"), "{listing}");

    let proof_jtis: Vec<String> = idp
        .forms()
        .iter()
        .filter(|f| f["client_id"] == CLIENT_ID)
        .map(|f| jwt_part(&f["client_assertion"], 1)["jti"].to_string())
        .collect();
    assert_eq!(proof_jtis.len(), 1);
    let key_pem = String::from_utf8_lossy(&certificate.key_pem).into_owned();
    let key_line = key_pem.lines().nth(1).expect("a PEM key");
    not_in_redis(&redis, &[t1, t2, proof, key_line]);
    // Stopped first: every buffered line is written.
    assert!(handler.terminate().success());
    let logs = handler.logs();
    assert!(logs.contains("DEBUG"), "debug lines were logged");
    for secret in [t1, t2, proof.as_str()] {
        assert!(!logs.contains(secret), "a credential in the logs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_managed_identity_is_the_blueprints_federated_credential() {
    let redis = RedisServer::start();
    let idp = Idp::start().await;
    let keys = Keys::new();
    let start = |identity: &'static str| {
        let port = free_port();
        let mut env = handler_env(
            &redis,
            idp.agent_env(false, Proof::ManagedIdentity(identity)),
            &keys,
        );
        env.push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()));
        env.push(("TOKEN_SCOPES".into(), ";".into()));
        Handler::start(&[], &env, port)
    };
    let mut handler = start(MANAGED_IDENTITY_ID);
    handler.wait_for_probe().await;
    let http = reqwest::Client::new();
    for scope in [GRAPH_ENCODED, "api%3A%2F%2Fbilling%2F.default"] {
        let (status, body, _) = send(
            &http,
            reqwest::Method::GET,
            &handler.url(&format!("/api/tokens/{scope}")),
            Some(&keys.admin),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let forms = idp.forms();
    let issued = idp.issued();
    assert_eq!(forms.len(), 4, "MI token, T1, two app tokens: {forms:?}");
    assert_eq!(forms[0]["grant_type"], "managed_identity");
    assert_eq!(forms[0]["resource"], "api://AzureADTokenExchange");
    assert_eq!(forms[0]["client_id"], MANAGED_IDENTITY_ID);
    assert_eq!(forms[1]["fmi_path"], AGENT_IDENTITY_ID);
    assert_eq!(forms[1]["client_assertion"], issued[0]);
    assert_eq!(forms[1]["client_assertion_type"], JWT_BEARER);
    not_in_redis(&redis, &[&issued[0], &issued[1]]);
    drop(handler);

    // A managed identity the blueprint has no federated credential for: a clear
    // refusal with its code and meaning.
    let mut handler = start(CLIENT_ID);
    handler.wait_for_probe().await;
    let (status, body, _) = send(
        &http,
        reqwest::Method::POST,
        &handler.url(&format!("/api/tokens/refresh/{GRAPH_ENCODED}")),
        Some(&keys.admin),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["aadsts"], "AADSTS700213");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("no federated identity credential"),
        "{reason}"
    );
    handler
        .wait_for_log("AADSTS700213: no federated identity credential")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_serves_the_classic_flows_and_an_unknown_one_is_named() {
    let classic = |certificate: &'static TestCertificate| {
        move |idp: &Idp| {
            let mut env = idp.env();
            env.retain(|(k, _)| {
                !["AZURE_CLIENT_SECRET", "AGENT_USER_NAME", "AGENT_PASSWORD"].contains(&k.as_str())
            });
            env.extend(idp.proof_env(Proof::Certificate(certificate)));
            env
        }
    };
    let app = TestApp::spawn_as(classic(certs::registered()), &[], false).await;
    let (status, body) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    obo_then_refresh(&app).await;
    let forms = app.idp.forms();
    assert_eq!(forms.len(), 3);
    let mut jtis = Vec::new();
    for form in &forms {
        assert_eq!(form["client_id"], CLIENT_ID);
        assert!(!form.contains_key("client_secret"));
        assert_eq!(
            jwt_part(&form["client_assertion"], 0)["x5t#S256"],
            certs::registered().thumbprint
        );
        jtis.push(jwt_part(&form["client_assertion"], 1)["jti"].clone());
    }
    let jtis: std::collections::HashSet<String> = jtis.iter().map(Value::to_string).collect();
    assert_eq!(jtis.len(), 3, "a fresh jti per assertion");
    assert_eq!(
        forms
            .iter()
            .map(|f| f["grant_type"].as_str())
            .collect::<Vec<_>>(),
        [
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "refresh_token"
        ]
    );

    // A certificate Entra does not know: the answer and the log name it.
    let app = TestApp::spawn_as(classic(certs::unknown()), &[], false).await;
    let (status, body) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["aadsts"], "AADSTS700027");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("certificate is not registered"),
        "{body}"
    );
    assert!(
        app.redis_keys()
            .iter()
            .all(|k| !k.starts_with("annika:tokens:agent:"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn entra_errors_of_the_agent_user_show_in_the_refresh_status() {
    let app = TestApp::spawn_as(|idp| idp.agent_env(true, Proof::Secret), &[], true).await;
    let (status, body) = app
        .get("/api/tokens/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The refresh token and the new exchange are both refused, the way Entra
    // answers for an agent user no longer linked to the agent identity.
    app.idp.fail_next(Failure::invalid_grant(50034));
    app.idp.fail_next(Failure::invalid_grant(50034));
    let (status, body) = app
        .post("/api/tokens/refresh/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["aadsts"], "AADSTS50034");
    let (_, listing) = app.get("/api/tokens", Some(&app.keys.admin)).await;
    let status = &listing["tokens"][0]["refresh_status"];
    assert_eq!(status["aadsts"], "AADSTS50034", "{listing}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("AADSTS50034: the user (agent user) does not exist or is not linked"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1);
}

/// 20 scopes at once, then a sweep, then a T1 near its expiry: one T1 (and one
/// T2) request per instance each time, however many scopes.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_scopes_and_a_sweep_cost_one_t1_and_one_t2_per_instance() {
    // The PEM file as `cat cert.pem key.pem` makes it: certificate first.
    let cert_first = certs::registered()
        .path_cert_first
        .to_string_lossy()
        .into_owned();
    let app = TestApp::spawn_as(
        |idp| idp.agent_env(true, Proof::Certificate(certs::registered())),
        &[("AZURE_CLIENT_CERTIFICATE_PATH", &cert_first)],
        true,
    )
    .await;
    let scopes: Vec<String> = (0..20)
        .map(|i| format!("api%3A%2F%2Fapp-{i}%2FData.Read"))
        .collect();
    let ask_all = |base: String, method: reqwest::Method| {
        let (http, key) = (app.http.clone(), app.keys.admin.clone());
        let scopes = scopes.clone();
        async move {
            let asks: Vec<_> = scopes
                .iter()
                .map(|scope| {
                    let url = format!("{base}{scope}");
                    let (http, key, method) = (http.clone(), key.clone(), method.clone());
                    tokio::spawn(async move { send(&http, method, &url, Some(&key)).await })
                })
                .collect();
            for ask in asks {
                let (status, body, _) = ask.await.unwrap();
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        }
    };
    ask_all(app.url("/api/tokens/"), reqwest::Method::GET).await;
    assert_eq!((app.idp.t1_requests(), app.idp.t2_requests()), (1, 1));
    assert_eq!(app.idp.count("user_fic"), 20);

    // A sweep once they are due: 20 refreshes with the held T1.
    app.advance(Duration::from_secs(2700) - app.state.timer.unwrap());
    app.tick().await;
    assert_eq!(app.idp.count("refresh_token"), 20);
    assert_eq!((app.idp.t1_requests(), app.idp.t2_requests()), (1, 1));

    // The T1 (3,599 s) now has 249 s left, under 5 minutes: 20 refreshes at once renew
    // it once.
    app.advance(Duration::from_secs(650));
    ask_all(app.url("/api/tokens/refresh/"), reqwest::Method::POST).await;
    assert_eq!(app.idp.count("refresh_token"), 40);
    assert_eq!(app.idp.t1_requests(), 2);

    // A second instance: its own T1, once.
    let twin = app.twin().await;
    let base = format!("http://{}/api/tokens/refresh/", twin.addr);
    ask_all(base, reqwest::Method::POST).await;
    assert_eq!(app.idp.count("refresh_token"), 60);
    assert_eq!((app.idp.t1_requests(), app.idp.t2_requests()), (3, 1));
}

/// A token endpoint that is down when the T1 is needed: one request, shared by
/// every scope asked for meanwhile, and none again before its `Retry-After`.
#[tokio::test(flavor = "multi_thread")]
async fn a_t1_outage_costs_one_request_not_one_per_scope() {
    let app = TestApp::spawn_as(|idp| idp.agent_env(false, Proof::Secret), &[], true).await;
    app.idp.set_outage(Some(Failure::unavailable(30)));
    app.idp.hold();
    let asks: Vec<_> = (0..20)
        .map(|i| {
            let (http, key) = (app.http.clone(), app.keys.admin.clone());
            let url = app.url(&format!("/api/tokens/api%3A%2F%2Fapp-{i}%2F.default"));
            tokio::spawn(async move { send(&http, reqwest::Method::GET, &url, Some(&key)).await })
        })
        .collect();
    // The first T1 request is held at the double while the others queue behind it.
    let mut arrivals = app.idp.arrivals();
    let _ = arrivals.wait_for(|n| *n >= 1).await;
    app.idp.release();
    for ask in asks {
        let (status, body, _) = ask.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["credential"], true, "{body}");
    }
    assert_eq!(app.idp.requests(), 1, "one T1 request for twenty scopes");
    // Within its Retry-After nobody asks again; after it, one T1 serves all.
    let (status, _) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.admin),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.idp.requests(), 1);
    app.idp.set_outage(None);
    app.advance(Duration::from_secs(31));
    for i in 0..3 {
        let path = format!("/api/tokens/api%3A%2F%2Fapp-{i}%2F.default");
        let (status, body) = app.get(&path, Some(&app.keys.admin)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(app.idp.t1_requests(), 2);
}

/// Per-user grants stored before Entra Agent ID was switched on were issued to
/// the app registration: the agent identity cannot redeem them, and they are
/// kept, not deleted as revoked.
#[tokio::test(flavor = "multi_thread")]
async fn switching_on_agent_id_keeps_the_grants_of_the_app_registration() {
    let app = TestApp::spawn().await;
    let path = format!("/api/tokens/{GRAPH_ENCODED}?user_id=alice");
    let (status, body) = app
        .put(
            &path,
            &app.keys.admin,
            &json!({"assertion": USER_ASSERTION}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let twin = app
        .twin_with(&[
            ("AGENT_TOKEN_FLOW", "agent_identity"),
            ("AGENT_IDENTITY_ID", AGENT_IDENTITY_ID),
            ("AGENT_USER_NAME", ""),
            ("AGENT_PASSWORD", ""),
        ])
        .await;
    let url = format!(
        "http://{}/api/tokens/refresh/{GRAPH_ENCODED}?user_id=alice",
        twin.addr
    );
    let (status, body, _) = send(
        &app.http,
        reqwest::Method::POST,
        &url,
        Some(&app.keys.admin),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["idp_error"], "invalid_grant");
    let refused = forms_where(&app, |f| f["grant_type"] == "refresh_token");
    assert_eq!(refused[0]["client_id"], AGENT_IDENTITY_ID);
    let keys = app.redis_keys();
    assert!(
        keys.contains(&format!("annika:tokens:user:alice:{GRAPH}")),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("annika:tokens:secret:user:alice:{GRAPH}")),
        "{keys:?}"
    );
}

/// Entra's `refresh_in` sets when a token is due, whatever the flow.
#[tokio::test(flavor = "multi_thread")]
async fn refresh_in_is_honoured_by_every_flow() {
    use redis::Commands;
    type IdentityEnv = fn(&Idp) -> Vec<(String, String)>;
    let flows: [(&str, IdentityEnv, &str); 4] = [
        ("password", Idp::env, "User.Read"),
        (
            "client_credentials",
            |idp| {
                let mut env = idp.env();
                env.retain(|(k, _)| k != "AGENT_USER_NAME" && k != "AGENT_PASSWORD");
                env
            },
            GRAPH,
        ),
        (
            "agent_identity",
            |idp| idp.agent_env(false, Proof::Secret),
            GRAPH,
        ),
        (
            "agent_user",
            |idp| idp.agent_env(true, Proof::Secret),
            "User.Read",
        ),
    ];
    for (flow, env, scope) in flows {
        let app = TestApp::spawn_as(env, &[], true).await;
        app.idp.set_refresh_in(600);
        let path = format!(
            "/api/tokens/{}",
            scope.replace(':', "%3A").replace('/', "%2F")
        );
        let (status, body) = app.get(&path, Some(&app.keys.admin)).await;
        assert_eq!(status, StatusCode::OK, "{flow}: {body}");
        let name = format!("annika:tokens:agent:{scope}");
        assert_eq!(app.redis.get_json(&name)["metadata"]["flow"], flow);
        let due: f64 = app
            .redis
            .conn()
            .zscore("annika:tokens:schedule", &name)
            .unwrap();
        let after = due as i64 - app.now();
        // 600 s, less up to a minute of jitter; not 3,599 - 900.
        assert!((540..=600).contains(&after), "{flow}: due in {after} s");
    }
}
