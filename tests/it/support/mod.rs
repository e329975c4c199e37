//! Test harness: real redis-server, the identity-provider double, and the service
//! either in-process (`TestApp`, port 0) or as the `handler` binary the way the
//! Functions host starts it (`Handler`).

pub mod certs;
pub mod idp;
pub mod redis_server;

pub use self::idp::{Failure, Idp};
pub use self::redis_server::{RedisServer, free_port, make_ca};

use reqwest::StatusCode;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use token_broker::callers::new_key;
use token_broker::clock::{Clock, ManualClock};
use token_broker::config::Config;
use token_broker::{AppState, Issuer, Setup};

pub const GRAPH: &str = "https://graph.microsoft.com/.default";

/// Where every log of a test run goes (the service's, in-process and spawned, and
/// the identity provider's list of what it issued), so `scripts/test.sh` can check
/// that no token or secret reached any of them.
pub fn log_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-logs");
    std::fs::create_dir_all(&dir).expect("a folder for test logs");
    dir
}

/// The in-process service logs (audit events included) to a file of this run.
fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let path = log_dir().join(format!("it-{}.log", std::process::id()));
        if let Ok(file) = std::fs::File::create(path) {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::sync::Mutex::new(file))
                .with_max_level(tracing::Level::DEBUG)
                .try_init();
        }
    });
}
/// The system's time, Unix seconds.
pub fn unix_now() -> i64 {
    Clock::System.now()
}

pub const GRAPH_ENCODED: &str = "https%3A%2F%2Fgraph.microsoft.com%2F.default";

/// API keys of a test app: the key strings and the `TOKEN_API_KEYS` JSON.
pub struct Keys {
    /// Admin: everything.
    pub admin: String,
    /// Graph and `User.*` agent tokens only (`users: []`).
    pub reader: String,
    /// Any scope, but only user `alice`'s tokens and agent tokens.
    pub alice: String,
    pub json: String,
}

impl Keys {
    pub fn new() -> Self {
        let (admin, admin_entry) = new_key("admin-app", vec![], vec![], true);
        let (reader, reader_entry) = new_key(
            "reader-app",
            vec![GRAPH.into(), "User.*".into()],
            vec![],
            false,
        );
        let (alice, alice_entry) =
            new_key("alice-app", vec!["*".into()], vec!["alice".into()], false);
        let json = serde_json::to_string(&[admin_entry, reader_entry, alice_entry]).unwrap();
        Self {
            admin: admin.expose().to_owned(),
            reader: reader.expose().to_owned(),
            alice: alice.expose().to_owned(),
            json,
        }
    }
}

/// The service in this process, on port 0, with its own Redis and identity
/// provider, started by `token_broker::run` as the binary starts it: server,
/// refresh timer and change listener. Returned once the sweep at start is done;
/// the double's request log begins after it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub state: AppState,
    pub redis: RedisServer,
    pub idp: Idp,
    pub keys: Keys,
    pub http: reqwest::Client,
    /// Set for apps on a manual clock ([`TestApp::spawn_manual`]).
    pub clock: Option<ManualClock>,
    vars: Vec<(String, String)>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The service with configuration `vars` on `clock`, serving on a new loopback
/// port until the returned sender is dropped; returned once its sweep at start
/// is done.
async fn start_instance(
    vars: Vec<(String, String)>,
    clock: Clock,
) -> (SocketAddr, AppState, tokio::sync::oneshot::Sender<()>) {
    let config = Config::from_vars(vars).expect("test config");
    let setup = Setup {
        issuer: Issuer::Entra,
        internal_timer: true,
        clock,
    };
    let state = AppState::build(&config, setup).expect("app state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(token_broker::run(state.clone(), listener, async {
        let _ = stopped.await;
    }));
    let mut sweeps = state.sweeps.subscribe();
    tokio::time::timeout(Duration::from_secs(30), sweeps.wait_for(Option::is_some))
        .await
        .expect("the sweep at start finishes")
        .expect("the app is running");
    (addr, state, stop)
}

/// A second instance of a [`TestApp`]'s service: same configuration, same Redis
/// and identity provider, its own cache.
pub struct Twin {
    pub addr: SocketAddr,
    pub state: AppState,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The variables a `handler` process needs: this Redis, an identity (the double's
/// `env()` or `managed_identity_env()`), and the test keys.
pub fn handler_env(
    redis: &RedisServer,
    identity: Vec<(String, String)>,
    keys: &Keys,
) -> Vec<(String, String)> {
    let mut env = redis.env();
    env.extend(identity);
    env.push(("TOKEN_API_KEYS".into(), keys.json.clone()));
    // What the deployment sets for timer-refresh/function.json's schedule.
    env.push(("TOKEN_REFRESH_SCHEDULE".into(), "0 */5 * * * *".into()));
    env
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// `extra` variables override the defaults (password flow, no warm scope).
    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        Self::spawn_on(RedisServer::start(), extra).await
    }

    /// The same on a manual clock, which moves only by [`TestApp::advance`] and
    /// [`TestApp::tick`]: the refresh timer, schedules, backoff and expiry all
    /// follow it.
    pub async fn spawn_manual(extra: &[(&str, &str)]) -> Self {
        let manual = ManualClock::starting_now();
        Self::start(RedisServer::start(), Idp::env, extra, Some(manual)).await
    }

    /// The same on a Redis of the test's choosing.
    pub async fn spawn_on(redis: RedisServer, extra: &[(&str, &str)]) -> Self {
        Self::start(redis, Idp::env, extra, None).await
    }

    /// With the identity variables `identity` gives for the double (in place of
    /// the password flow's), on the system clock or, with `manual`, a manual one.
    pub async fn spawn_as(
        identity: impl FnOnce(&Idp) -> Vec<(String, String)>,
        extra: &[(&str, &str)],
        manual: bool,
    ) -> Self {
        let clock = manual.then(ManualClock::starting_now);
        Self::start(RedisServer::start(), identity, extra, clock).await
    }

    async fn start(
        redis: RedisServer,
        identity: impl FnOnce(&Idp) -> Vec<(String, String)>,
        extra: &[(&str, &str)],
        clock: Option<ManualClock>,
    ) -> Self {
        init_logging();
        let idp = Idp::start().await;
        let keys = Keys::new();
        let mut vars = redis.env();
        vars.extend(identity(&idp));
        vars.push(("TOKEN_API_KEYS".into(), keys.json.clone()));
        // No warm scope unless the test names some: the sweep at start then asks
        // the identity provider nothing and writes nothing.
        vars.push(("TOKEN_SCOPES".into(), ";".into()));
        for (name, value) in extra {
            vars.retain(|(k, _)| k != name);
            vars.push((name.to_string(), value.to_string()));
        }
        let service_clock = clock.as_ref().map_or(Clock::System, ManualClock::clock);
        let (addr, state, stop) = start_instance(vars.clone(), service_clock).await;
        idp.forget_requests();
        Self {
            addr,
            state,
            redis,
            idp,
            keys,
            http: reqwest::Client::new(),
            clock,
            vars,
            _stop: stop,
        }
    }

    pub async fn twin(&self) -> Twin {
        self.twin_with(&[]).await
    }

    /// A second instance whose configuration differs by `changes` (a variable
    /// with an empty value is removed).
    pub async fn twin_with(&self, changes: &[(&str, &str)]) -> Twin {
        let clock = self
            .clock
            .as_ref()
            .map_or(Clock::System, ManualClock::clock);
        let mut vars = self.vars.clone();
        for (name, value) in changes {
            vars.retain(|(k, _)| k != name);
            vars.push((name.to_string(), value.to_string()));
        }
        let (addr, state, stop) = start_instance(vars, clock).await;
        Twin {
            addr,
            state,
            _stop: stop,
        }
    }

    /// Waits (at most 10 s) until the cache listens for change events: before
    /// that it holds nothing for long (going live clears it).
    pub async fn wait_cache_live(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.state.cache.as_ref().is_some_and(|c| c.is_live()) {
            assert!(Instant::now() < deadline, "the cache never went live");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn manual(&self) -> &ManualClock {
        self.clock
            .as_ref()
            .expect("an app on a manual clock (spawn_manual)")
    }

    /// The service's time, Unix seconds.
    pub fn now(&self) -> i64 {
        self.state.clock.now()
    }

    /// Moves the service's clock on by `by` (no timer sweep runs unless a period
    /// passes: see [`TestApp::tick`]).
    pub fn advance(&self, by: Duration) {
        self.manual().advance(by);
    }

    /// Moves the clock on by one period of the refresh timer and waits for the
    /// sweep that wakes at the new time. A sweep woken by an earlier `advance`
    /// may still be running: its end is not this one's (and since it started
    /// at most a period ago, it is followed by one at the new time).
    pub async fn tick(&self) {
        let mut sweeps = self.state.sweeps.subscribe();
        let period = self.state.timer.expect("the internal timer runs");
        self.manual().advance(period);
        let now = self.state.clock.now_ms();
        tokio::time::timeout(
            Duration::from_secs(30),
            sweeps.wait_for(|started| started.is_some_and(|at| at >= now)),
        )
        .await
        .expect("the timer's sweep finishes")
        .expect("the app is running");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        send(&self.http, method, &self.url(path), key).await
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> (StatusCode, Value) {
        let (status, body, _) = self.send(reqwest::Method::GET, path, key).await;
        (status, body)
    }

    pub async fn post(&self, path: &str, key: Option<&str>) -> (StatusCode, Value) {
        let (status, body, _) = self.send(reqwest::Method::POST, path, key).await;
        (status, body)
    }

    pub async fn delete(&self, path: &str, key: Option<&str>) -> (StatusCode, Value) {
        let (status, body, _) = self.send(reqwest::Method::DELETE, path, key).await;
        (status, body)
    }

    /// A `PUT` with a JSON body; the answer's status and JSON body.
    pub async fn put(&self, path: &str, key: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .put(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request reaches the service");
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
        )
    }

    /// Every key in the test Redis, sorted.
    pub fn redis_keys(&self) -> Vec<String> {
        self.redis.keys()
    }
}

/// One request; the body parsed as JSON (`Value::Null` when empty). Panics when a
/// non-empty body is not JSON: every answer of the service must be.
pub async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut request = http.request(method, url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("request reaches the service");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status} body is not JSON: {text}"))
    };
    (status, body, headers)
}

/// One token read through the instance at `addr`: status and token.
pub async fn read_token(
    http: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    key: &str,
) -> (StatusCode, Value) {
    let (status, body, _) = send(
        http,
        reqwest::Method::GET,
        &format!("http://{addr}{path}"),
        Some(key),
    )
    .await;
    (status, body["token"].clone())
}

/// Waits until every instance at `addrs` answers `path` as `expected` says;
/// fails when one still does not to a request sent a second or more after
/// `since`. (Timed from the send: a slow answer on a loaded machine is not a
/// stale one.)
pub async fn all_serve_within_a_second(
    http: &reqwest::Client,
    addrs: &[SocketAddr],
    path: &str,
    key: &str,
    since: Instant,
    expected: impl Fn(StatusCode, &Value) -> bool,
    what: &str,
) {
    for addr in addrs {
        loop {
            let asked = Instant::now();
            let (status, token) = read_token(http, *addr, path, key).await;
            if expected(status, &token) {
                break;
            }
            assert!(
                asked - since < Duration::from_secs(1),
                "{what}: {addr} still answered {status} {token} a second later"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The `handler` binary, started like the Functions host starts it; killed on drop.
/// Its stdout and stderr go to two files under [`log_dir`]: [`Handler::logs`]
/// reads both, [`Handler::stdout`] and [`Handler::stderr`] one each.
pub struct Handler {
    pub child: Child,
    pub port: u16,
    pub log: std::path::PathBuf,
    pub out: std::path::PathBuf,
}

impl Handler {
    /// Starts `handler` with `args` and exactly the variables in `env` (plus PATH).
    pub fn start(args: &[&str], env: &[(String, String)], port: u16) -> Self {
        let name = format!(
            "handler-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let log = log_dir().join(format!("{name}.log"));
        let out = log_dir().join(format!("{name}.out"));
        let stderr = std::fs::File::create(&log).expect("a log file");
        let stdout = std::fs::File::create(&out).expect("an output file");
        let child = Command::new(env!("CARGO_BIN_EXE_handler"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start the handler binary");
        Self {
            child,
            port,
            log,
            out,
        }
    }

    /// Waits for a run-once command to exit: its status, stdout and stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        let status = self.child.wait().expect("the handler exits");
        (status, self.stdout(), self.stderr())
    }

    /// Everything the handler wrote so far, stderr then stdout.
    pub fn logs(&self) -> String {
        self.stderr() + &self.stdout()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 30 s) until the logs contain `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the handler never logged {needle:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// What the host does: `GET /` every 25 ms until any HTTP answer, giving up
    /// after 30 s. Returns the status of the first answer.
    pub async fn wait_for_probe(&mut self) -> StatusCode {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(response) = http.get(self.url("/")).send().await {
                return response.status();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("handler exited during start-up: {status}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("Initializing HttpWorker timed out: handler never answered GET /");
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "handler did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
