//! A test double of the Microsoft Entra ID v2.0 token endpoint, served over HTTP
//! on loopback: form posts to `/{tenant}/oauth2/v2.0/token` with the password,
//! client_credentials and refresh_token grants, Entra's success and error bodies,
//! a configurable `expires_in`/`refresh_in`, failure injection, a gate that holds
//! requests, and counters. It also serves App Service's managed identity endpoint
//! (`GET /msi/token`, what `IDENTITY_ENDPOINT` points at in a Function App).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{
    Form, Json, Router,
    routing::{get, post},
};
use base64::Engine as _;
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
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
    refresh_tokens: HashSet<String>,
    issued: Vec<String>,
}

struct IdpState {
    inner: Mutex<Inner>,
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
        let state = Arc::new(IdpState {
            inner: Mutex::default(),
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
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind idp");
        let addr = listener.local_addr().expect("idp addr");
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

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().unwrap()
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
        inner.refresh_tokens.insert(token.clone());
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

/// Appends an issued token to this run's list, which `scripts/test.sh` greps every
/// log for afterwards.
fn record_issued(token: &str) {
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

    if let Some(failure) = failure {
        return entra_error(&failure);
    }
    if tenant != TENANT {
        return refuse(400, "invalid_tenant", 90002);
    }
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return refuse(400, "unauthorized_client", 700016);
    }
    if form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET) {
        return refuse(401, "invalid_client", 7000215);
    }
    let Some(scope) = form.get("scope").filter(|s| !s.trim().is_empty()) else {
        return refuse(400, "invalid_request", 900144);
    };
    if scope.split(' ').any(|s| s.starts_with("bad")) {
        return refuse(400, "invalid_scope", 70011);
    }
    let offline = scope.split(' ').any(|s| s == "offline_access");
    match grant.as_str() {
        "password" => {
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
            let known = form.get("refresh_token").is_some_and(|rt| {
                let mut inner = state.inner.lock().unwrap();
                match rotating {
                    true => inner.refresh_tokens.remove(rt),
                    false => inner.refresh_tokens.contains(rt),
                }
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
    let access_token = state.mint(json!({"aud": scope, "n": serial, "grant": grant, "nonce": rand::random::<u64>(), "pad": padding}));
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
    inner.issued.push(access_token);
    // Delegated grants return a refresh token when offline_access was asked for.
    if offline && grant != "client_credentials" {
        let refresh_token = format!("rt-{serial}-{}", b64(&rand::random::<[u8; 24]>()));
        inner.refresh_tokens.insert(refresh_token.clone());
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
    if query.get("client_id").is_some_and(|id| id != CLIENT_ID) {
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
        "client_id": CLIENT_ID,
    });
    let mut inner = state.inner.lock().unwrap();
    record_issued(&access_token);
    inner.issued.push(access_token);
    Json(body).into_response()
}
