//! A test double of the Microsoft Entra ID v2.0 token endpoint, served over HTTP
//! on loopback: form posts to `/{tenant}/oauth2/v2.0/token` with the password,
//! client_credentials, on-behalf-of, refresh_token and Entra Agent ID's
//! `user_fic` grants (SPEC §6 requests 1-5), clients checked as Entra checks
//! them ([`clients`]), Entra's success and error bodies, a configurable
//! `expires_in`/`refresh_in`, failure injection, a gate that holds requests, and
//! counters. It also serves App Service's managed identity endpoint
//! (`GET /msi/token`, what `IDENTITY_ENDPOINT` points at in a Function App).

mod callers;
mod clients;

use super::certs;

#[allow(unused_imports)] // the benchmarks use the double without callers
pub use self::callers::{
    CALLER_APP_ID, CALLER_OID, CALLER_SECRET, OTHER_TENANT, ROLE, ROLE_APP_ID, ROLE_SECRET,
    UNLISTED_APP_ID, UNLISTED_SECRET, audience, sign,
};
#[allow(unused_imports)] // the benchmarks use the double without Agent ID
pub use self::clients::{
    AGENT_IDENTITY_ID, AGENT_USER_ID, AGENT_USER_NAME, MANAGED_IDENTITY_ID,
    OTHER_AGENT_IDENTITY_ID, OTHER_AGENT_USER_ID, TOKEN_EXCHANGE_SCOPE, code,
};
use self::clients::{Client, Held, Minted, Refusal, agent_identity, agent_of_user, unix_now};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{
    Form, Json, Router,
    routing::{get, post},
};
use base64::Engine as _;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub const TENANT: &str = "test-tenant";
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_SECRET: &str = "client-secret-value-for-tests";
pub const USER: &str = "agent@contoso.test";
pub const PASSWORD: &str = "agent-password-for-tests";
/// What App Service puts in `IDENTITY_HEADER`: a secret the endpoint checks.
pub const IDENTITY_HEADER: &str = "identity-header-secret-for-tests";

/// An Entra-style failure to answer with.
#[derive(Clone, Debug)]
pub struct Failure {
    pub status: u16,
    pub error: &'static str,
    pub code: u32,
    pub retry_after: Option<u64>,
}

impl Failure {
    pub fn throttled(retry_after: u64) -> Self {
        Self {
            status: 429,
            error: "temporarily_unavailable",
            code: 50196,
            retry_after: Some(retry_after),
        }
    }
    pub fn invalid_grant(code: u32) -> Self {
        Self {
            status: 400,
            error: "invalid_grant",
            code,
            retry_after: None,
        }
    }
    pub fn unavailable(retry_after: u64) -> Self {
        Self {
            status: 503,
            error: "temporarily_unavailable",
            code: 90006,
            retry_after: Some(retry_after),
        }
    }
}

#[derive(Default)]
struct Inner {
    counts: HashMap<String, usize>,
    requests: Vec<HashMap<String, String>>,
    next_failures: VecDeque<Failure>,
    outage: Option<Failure>,
    /// Live refresh tokens and the client each was issued to.
    refresh_tokens: HashMap<String, &'static str>,
    /// Exchange tokens and managed identities' tokens, which come back as
    /// assertions and credentials.
    minted: HashMap<String, Held>,
    issued: Vec<String>,
}

struct IdpState {
    inner: Mutex<Inner>,
    /// This double's token endpoint: the audience of certificate assertions.
    endpoint: String,
    /// `http://{addr}`: what tokens' issuers start with.
    authority: String,
    /// The signing key was rotated: `k2` signs, `k1` and `k2` are published.
    rotated: std::sync::atomic::AtomicBool,
    keys_down: std::sync::atomic::AtomicBool,
    /// After a rotation, the old key is no longer published.
    withdrawn: std::sync::atomic::AtomicBool,
    keys_fetches: std::sync::atomic::AtomicUsize,
    /// A redeemed refresh token is used up (Entra rotates them).
    rotating: std::sync::atomic::AtomicBool,
    expires_in: AtomicU64,
    refresh_in: AtomicU64,
    padding: AtomicU64,
    serial: AtomicU64,
    gate: watch::Sender<bool>,
    arrivals: watch::Sender<usize>,
}

pub struct Idp {
    pub addr: SocketAddr,
    state: Arc<IdpState>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Idp {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind idp");
        let addr = listener.local_addr().expect("idp addr");
        let state = Arc::new(IdpState {
            inner: Mutex::default(),
            endpoint: format!("http://{addr}/{TENANT}/oauth2/v2.0/token"),
            authority: format!("http://{addr}"),
            rotated: Default::default(),
            keys_down: Default::default(),
            withdrawn: Default::default(),
            keys_fetches: Default::default(),
            rotating: std::sync::atomic::AtomicBool::new(false),
            expires_in: AtomicU64::new(3599),
            refresh_in: AtomicU64::new(0),
            padding: AtomicU64::new(0),
            serial: AtomicU64::new(0),
            gate: watch::Sender::new(false),
            arrivals: watch::Sender::new(0),
        });
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/msi/token", get(managed_identity))
            .route("/{tenant}/discovery/v2.0/keys", get(callers::keys))
            .with_state(state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            state,
            _stop: stop,
        }
    }

    pub fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Variables for the password flow against this double.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_AUTHORITY_HOST".into(), self.authority()),
            ("AZURE_TENANT_ID".into(), TENANT.into()),
            ("AZURE_CLIENT_ID".into(), CLIENT_ID.into()),
            ("AZURE_CLIENT_SECRET".into(), CLIENT_SECRET.into()),
            ("AGENT_USER_NAME".into(), USER.into()),
            ("AGENT_PASSWORD".into(), PASSWORD.into()),
        ]
    }

    /// Variables for a managed identity on App Service (Functions) against this
    /// double; `AZURE_CLIENT_ID` names a user-assigned identity.
    pub fn managed_identity_env(&self) -> Vec<(String, String)> {
        record_issued(IDENTITY_HEADER);
        vec![
            ("AGENT_TOKEN_FLOW".into(), "managed_identity".into()),
            ("AZURE_CLIENT_ID".into(), CLIENT_ID.into()),
            (
                "IDENTITY_ENDPOINT".into(),
                format!("http://{}/msi/token", self.addr),
            ),
            ("IDENTITY_HEADER".into(), IDENTITY_HEADER.into()),
        ]
    }

    /// Variables for Entra Agent ID against this double: the blueprint
    /// (`CLIENT_ID`) proving itself with `proof`, the agent identity, and with
    /// `agent_user` its agent user (by object id).
    pub fn agent_env(&self, agent_user: bool, proof: Proof) -> Vec<(String, String)> {
        let flow = if agent_user {
            "agent_user"
        } else {
            "agent_identity"
        };
        let mut env = vec![
            ("AGENT_TOKEN_FLOW".into(), flow.into()),
            ("AZURE_AUTHORITY_HOST".into(), self.authority()),
            ("AZURE_TENANT_ID".into(), TENANT.into()),
            ("AZURE_CLIENT_ID".into(), CLIENT_ID.into()),
            ("AGENT_IDENTITY_ID".into(), AGENT_IDENTITY_ID.into()),
        ];
        if agent_user {
            env.push(("AGENT_USER_ID".into(), AGENT_USER_ID.into()));
        }
        env.extend(self.proof_env(proof));
        env
    }

    /// Variables by which the app registration (or blueprint) proves itself.
    pub fn proof_env(&self, proof: Proof) -> Vec<(String, String)> {
        match proof {
            Proof::Secret => vec![("AZURE_CLIENT_SECRET".into(), CLIENT_SECRET.into())],
            Proof::Certificate(certificate) => vec![(
                "AZURE_CLIENT_CERTIFICATE_PATH".into(),
                certificate.path.to_string_lossy().into_owned(),
            )],
            Proof::ManagedIdentity(identity) => {
                record_issued(IDENTITY_HEADER);
                vec![
                    (
                        "AGENT_BLUEPRINT_CREDENTIAL".into(),
                        "managed_identity".into(),
                    ),
                    ("AZURE_MANAGED_IDENTITY_CLIENT_ID".into(), identity.into()),
                    (
                        "IDENTITY_ENDPOINT".into(),
                        format!("http://{}/msi/token", self.addr),
                    ),
                    ("IDENTITY_HEADER".into(), IDENTITY_HEADER.into()),
                ]
            }
        }
    }

    /// This double's token endpoint.
    pub fn token_endpoint(&self) -> String {
        self.state.endpoint.clone()
    }

    /// Posts `form` to the token endpoint as a client would: the status and body.
    pub async fn post(&self, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(self.token_endpoint())
            .form(form)
            .send()
            .await
            .expect("the double answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    /// A token from the managed identity endpoint, as App Service would give it
    /// to the code running under `identity`.
    pub async fn managed_identity_token(&self, identity: &str, resource: &str) -> String {
        let response = reqwest::Client::new()
            .get(format!(
                "http://{}/msi/token?api-version=2019-08-01&resource={}&client_id={identity}",
                self.addr,
                resource.replace(':', "%3A").replace('/', "%2F")
            ))
            .header("X-IDENTITY-HEADER", IDENTITY_HEADER)
            .send()
            .await
            .expect("the double answers");
        let body: serde_json::Value = response.json().await.expect("a JSON body");
        body["access_token"].as_str().expect("a token").to_owned()
    }

    /// A token for the broker, as caller app `app` gets it with its secret
    /// (through the token endpoint, like any client).
    pub async fn caller_token(&self, app: &str) -> String {
        let secret = callers::caller_secret(app).expect("a caller app");
        let scope = format!("{}/.default", audience());
        let (status, body) = self
            .post(&[
                ("client_id", app),
                ("client_secret", secret),
                ("grant_type", "client_credentials"),
                ("scope", &scope),
            ])
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().expect("a token").to_owned()
    }

    /// From now on tokens are signed with a new key (`k2`), published beside
    /// the old one.
    pub fn rotate_signing_key(&self) {
        self.state.rotated.store(true, Ordering::SeqCst);
    }

    /// After a rotation: the old key is withdrawn from the published set.
    pub fn withdraw_old_key(&self) {
        self.state.withdrawn.store(true, Ordering::SeqCst);
    }

    /// The keys endpoint answers `503` while `down`.
    pub fn set_keys_down(&self, down: bool) {
        self.state.keys_down.store(down, Ordering::SeqCst);
    }

    /// How often the keys were asked for.
    pub fn keys_fetches(&self) -> usize {
        self.state.keys_fetches.load(Ordering::SeqCst)
    }

    /// Requests that match `pick`.
    pub fn count_where(&self, pick: impl Fn(&HashMap<String, String>) -> bool) -> usize {
        self.inner().requests.iter().filter(|f| pick(f)).count()
    }

    /// Request 1s: the blueprint asking for a T1.
    pub fn t1_requests(&self) -> usize {
        self.count_where(|f| {
            f.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                && f.get("scope").map(String::as_str) == Some(TOKEN_EXCHANGE_SCOPE)
        })
    }

    /// Request 3s: an agent identity asking for a T2.
    pub fn t2_requests(&self) -> usize {
        self.count_where(|f| {
            f.get("client_id")
                .is_some_and(|id| agent_identity(id).is_some())
                && f.get("scope").map(String::as_str) == Some(TOKEN_EXCHANGE_SCOPE)
        })
    }

    /// Every exchange token and managed identity's token minted so far expires
    /// now, as if their hour had passed.
    pub fn expire_exchange_tokens(&self) {
        let now = unix_now();
        for held in self.inner().minted.values_mut() {
            held.expires_at = now;
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().unwrap()
    }

    /// A watch on the number of requests that reached the endpoint.
    pub fn arrivals(&self) -> watch::Receiver<usize> {
        self.state.arrivals.subscribe()
    }

    /// Requests that reached the endpoint, whatever their answer.
    pub fn requests(&self) -> usize {
        *self.state.arrivals.borrow()
    }

    pub fn count(&self, grant_type: &str) -> usize {
        self.inner().counts.get(grant_type).copied().unwrap_or(0)
    }

    /// The form fields of every request, in order of arrival.
    pub fn forms(&self) -> Vec<HashMap<String, String>> {
        self.inner().requests.clone()
    }

    pub fn set_expires_in(&self, secs: u64) {
        self.state.expires_in.store(secs, Ordering::SeqCst);
    }

    /// Answers carry `refresh_in` (seconds; 0: none).
    pub fn set_refresh_in(&self, secs: u64) {
        self.state.refresh_in.store(secs, Ordering::SeqCst);
    }

    /// Makes access tokens longer by about `bytes` (real Entra tokens are 1-3 KB).
    pub fn set_token_padding(&self, bytes: u64) {
        self.state.padding.store(bytes, Ordering::SeqCst);
    }

    /// The next request fails this way (queued, one per request).
    pub fn fail_next(&self, failure: Failure) {
        self.inner().next_failures.push_back(failure);
    }

    /// Every request fails this way until `None`.
    pub fn set_outage(&self, failure: Option<Failure>) {
        self.inner().outage = failure;
    }

    pub fn revoke_refresh_tokens(&self) {
        self.inner().refresh_tokens.clear();
    }

    /// From now on a refresh token works once: redeeming it uses it up.
    pub fn set_rotating(&self, rotating: bool) {
        self.state.rotating.store(rotating, Ordering::SeqCst);
    }

    /// A refresh token this double accepts, as if issued to another writer.
    pub fn issue_refresh_token(&self) -> String {
        let token = format!("rt-elsewhere-{}", b64(&rand::random::<[u8; 24]>()));
        record_issued(&token);
        let mut inner = self.inner();
        inner.refresh_tokens.insert(token.clone(), CLIENT_ID);
        inner.issued.push(token.clone());
        token
    }

    /// Hold every request until [`Idp::release`].
    pub fn hold(&self) {
        self.state.gate.send_replace(true);
    }

    pub fn release(&self) {
        self.state.gate.send_replace(false);
    }

    /// Starts the request log afresh: counts, forms and arrival times (what was
    /// issued is kept for the secrets check).
    pub fn forget_requests(&self) {
        let mut inner = self.inner();
        inner.counts.clear();
        inner.requests.clear();
        drop(inner);
        self.state.arrivals.send_replace(0);
    }

    /// Every access and refresh token this double has issued.
    pub fn issued(&self) -> Vec<String> {
        self.inner().issued.clone()
    }
}

impl IdpState {
    /// Counts and records a request (by its `grant_type`), waits while requests are
    /// held, and gives the failure it is to be answered with, if any.
    async fn arrive(&self, form: HashMap<String, String>) -> Option<Failure> {
        let failure = {
            let mut inner = self.inner.lock().unwrap();
            let grant = form.get("grant_type").cloned().unwrap_or_default();
            *inner.counts.entry(grant).or_default() += 1;
            inner.requests.push(form);
            inner
                .next_failures
                .pop_front()
                .or_else(|| inner.outage.clone())
        };
        self.arrivals.send_modify(|n| *n += 1);
        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|held| !held).await;
        failure
    }

    /// A JWT-shaped access token (not signed: the service never verifies it).
    fn mint(&self, payload: serde_json::Value) -> String {
        format!(
            "{}.{}.{}",
            b64(br#"{"typ":"JWT","alg":"RS256"}"#),
            b64(payload.to_string().as_bytes()),
            b64(&rand::random::<[u8; 16]>())
        )
    }
}

/// How the app registration (or blueprint) proves itself.
#[derive(Clone, Copy)]
pub enum Proof {
    Secret,
    Certificate(&'static certs::TestCertificate),
    /// A user-assigned managed identity's token as a federated credential.
    ManagedIdentity(&'static str),
}

/// Appends an issued token (or a credential) to this run's list, which
/// `scripts/test.sh` greps every log for afterwards.
pub fn record_issued(token: &str) {
    use std::io::Write;
    let path = super::log_dir().join(format!("issued-{}.txt", std::process::id()));
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{token}");
    }
}

fn entra_error(failure: &Failure) -> Response {
    let body = json!({
        "error": failure.error,
        "error_description": format!("AADSTS{}: injected by the test identity provider. Trace ID: 0000 Correlation ID: 0000 Timestamp: 2026-11-26 10:00:00Z", failure.code),
        "error_codes": [failure.code],
        "timestamp": "2026-11-26 10:00:00Z",
        "trace_id": "00000000-0000-0000-0000-000000000000",
        "correlation_id": "00000000-0000-0000-0000-000000000000",
    });
    let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = failure.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn refuse(status: u16, error: &'static str, code: u32) -> Response {
    entra_error(&Failure {
        status,
        error,
        code,
        retry_after: None,
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn token(
    State(state): State<Arc<IdpState>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    let failure = state.arrive(form.clone()).await;
    // Assertions and credentials sent here are secrets too.
    for field in ["client_assertion", "user_federated_identity_credential"] {
        if let Some(value) = form.get(field) {
            record_issued(value);
        }
    }

    if let Some(failure) = failure {
        return entra_error(&failure);
    }
    if tenant != TENANT {
        return refuse(400, "invalid_tenant", 90002);
    }
    let client = match state.authenticate(&form) {
        Ok(client) => client,
        Err(Refusal(status, error, code)) => return refuse(status, error, code),
    };
    let Some(scope) = form.get("scope").filter(|s| !s.trim().is_empty()) else {
        return refuse(400, "invalid_request", 900144);
    };
    if scope.split(' ').any(|s| s.starts_with("bad")) {
        return refuse(400, "invalid_scope", 70011);
    }
    let offline = scope.split(' ').any(|s| s == "offline_access");
    // What the new token is, when it is one that comes back as a credential.
    let mut minted = None;
    match grant.as_str() {
        "password" => {
            if client != Client::App {
                return refuse(400, "unauthorized_client", code::UNAUTHORIZED_GRANT);
            }
            if form.get("username").map(String::as_str) != Some(USER)
                || form.get("password").map(String::as_str) != Some(PASSWORD)
            {
                return refuse(400, "invalid_grant", 50126);
            }
        }
        "client_credentials" => {
            if !scope.ends_with("/.default") {
                return refuse(400, "invalid_scope", 1002012);
            }
            if let Client::Caller(app) = client {
                // A caller app gets tokens for the broker only.
                if *scope != format!("{}/.default", audience()) {
                    return refuse(400, "invalid_scope", 70011);
                }
                let expires_in = state.expires_in.load(Ordering::SeqCst);
                let access_token = state.caller_token(app, expires_in);
                record_issued(&access_token);
                return Json(json!({"token_type": "Bearer", "expires_in": expires_in, "access_token": access_token})).into_response();
            }
            if scope == TOKEN_EXCHANGE_SCOPE {
                minted = Some(match client {
                    // Request 1: the blueprint asks for a T1 for one of its agent
                    // identities.
                    Client::App => {
                        let Some(path) = form.get("fmi_path") else {
                            return refuse(400, "unauthorized_client", code::BLUEPRINT_APP_ONLY);
                        };
                        let Some(agent) = agent_identity(path) else {
                            return refuse(400, "invalid_request", code::UNKNOWN_AGENT_IDENTITY);
                        };
                        Minted::T1 {
                            agent: agent.to_owned(),
                        }
                    }
                    // Request 3: the agent identity's T2.
                    Client::Agent(agent) => Minted::T2 {
                        agent: agent.to_owned(),
                    },
                    Client::Caller(_) => return refuse(400, "invalid_scope", 70011),
                });
            }
        }
        // Request 4: the agent user's token, T2 as its credential.
        "user_fic" => {
            let Client::Agent(agent) = client else {
                return refuse(400, "unauthorized_client", code::UNAUTHORIZED_GRANT);
            };
            let credential = form
                .get("user_federated_identity_credential")
                .and_then(|t2| state.held(t2));
            match credential {
                Some(Held {
                    minted: Minted::T2 { agent: of },
                    expires_at,
                }) if of == agent => {
                    if expires_at <= unix_now() {
                        return refuse(400, "invalid_grant", code::EXPIRED_ASSERTION);
                    }
                }
                Some(_) => return refuse(400, "invalid_grant", code::NO_MATCHING_FIC),
                None => return refuse(400, "invalid_request", code::MISSING_FIELD),
            }
            if agent_of_user(&form) != Some(agent) {
                return refuse(400, "invalid_grant", code::USER_NOT_LINKED);
            }
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            if form.get("requested_token_use").map(String::as_str) != Some("on_behalf_of") {
                return refuse(400, "invalid_request", 50051);
            }
            let assertion = form
                .get("assertion")
                .map(String::as_str)
                .unwrap_or_default();
            if assertion.split('.').count() != 3 {
                return refuse(400, "invalid_grant", 50013);
            }
        }
        "refresh_token" => {
            let rotating = state.rotating.load(Ordering::SeqCst);
            // A refresh token works only for the client it was issued to.
            let known = form.get("refresh_token").is_some_and(|rt| {
                let mut inner = state.inner.lock().unwrap();
                let issued_to = inner.refresh_tokens.get(rt).copied();
                if rotating && issued_to == Some(client.id()) {
                    inner.refresh_tokens.remove(rt);
                }
                issued_to == Some(client.id())
            });
            if !known {
                return refuse(400, "invalid_grant", 70000);
            }
        }
        _ => return refuse(400, "unsupported_grant_type", 70003),
    }

    let serial = state.serial.fetch_add(1, Ordering::SeqCst);
    let expires_in = state.expires_in.load(Ordering::SeqCst);
    let padding = "p".repeat(state.padding.load(Ordering::SeqCst) as usize * 3 / 4);
    let access_token = state.mint(json!({"aud": scope, "azp": client.id(), "n": serial, "grant": grant, "nonce": rand::random::<u64>(), "pad": padding}));
    let mut body = json!({
        "token_type": "Bearer",
        "scope": scope,
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": access_token,
    });
    let refresh_in = state.refresh_in.load(Ordering::SeqCst);
    if refresh_in > 0 {
        body["refresh_in"] = json!(refresh_in);
    }
    let mut inner = state.inner.lock().unwrap();
    record_issued(&access_token);
    inner.issued.push(access_token.clone());
    if let Some(minted) = minted {
        let expires_at = unix_now() + expires_in as i64;
        inner
            .minted
            .insert(access_token, Held { minted, expires_at });
    }
    // Delegated grants return a refresh token when offline_access was asked for.
    if offline && grant != "client_credentials" {
        let refresh_token = format!("rt-{serial}-{}", b64(&rand::random::<[u8; 24]>()));
        inner
            .refresh_tokens
            .insert(refresh_token.clone(), client.id());
        record_issued(&refresh_token);
        inner.issued.push(refresh_token.clone());
        body["refresh_token"] = json!(refresh_token);
    }
    Json(body).into_response()
}

/// App Service's managed identity endpoint, API version 2019-08-01: a GET with the
/// resource (the scope without `/.default`), the `X-IDENTITY-HEADER` secret, and
/// `client_id` for a user-assigned identity; `expires_on` in Unix seconds as a
/// string. Recorded as grant `managed_identity`, with the query as its form.
async fn managed_identity(
    State(state): State<Arc<IdpState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut form = query.clone();
    form.insert("grant_type".into(), "managed_identity".into());
    if let Some(failure) = state.arrive(form).await {
        return entra_error(&failure);
    }
    let refused = |status: StatusCode, message: &str| {
        (
            status,
            Json(json!({"statusCode": status.as_u16(), "message": message})),
        )
            .into_response()
    };
    if headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        != Some(IDENTITY_HEADER)
    {
        return refused(
            StatusCode::UNAUTHORIZED,
            "X-IDENTITY-HEADER is missing or wrong",
        );
    }
    if query.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return refused(StatusCode::BAD_REQUEST, "unsupported api-version");
    }
    let identity = query
        .get("client_id")
        .map_or(MANAGED_IDENTITY_ID, String::as_str);
    if identity != CLIENT_ID && identity != MANAGED_IDENTITY_ID {
        return refused(
            StatusCode::BAD_REQUEST,
            "No managed identity with this client id is assigned to this resource",
        );
    }
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return refused(StatusCode::BAD_REQUEST, "resource is required");
    };
    let serial = state.serial.fetch_add(1, Ordering::SeqCst);
    let expires_in = state.expires_in.load(Ordering::SeqCst) as i64;
    let access_token = state.mint(json!({"aud": resource, "n": serial, "grant": "managed_identity", "nonce": rand::random::<u64>()}));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = json!({
        "access_token": access_token,
        "expires_on": (now + expires_in).to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": identity,
    });
    let mut inner = state.inner.lock().unwrap();
    record_issued(&access_token);
    inner.issued.push(access_token.clone());
    let minted = Minted::Managed {
        identity: identity.to_owned(),
        resource: resource.clone(),
    };
    let expires_at = now + expires_in;
    inner
        .minted
        .insert(access_token, Held { minted, expires_at });
    Json(body).into_response()
}
