//! What the read benchmarks share: the tools they drive (`redis-benchmark`,
//! `wrk`), the `handler` process they measure, and how figures are summed up.

use crate::{idp, redis_server};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn log_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

pub const SECONDS: u64 = 6;
pub const CONNECTIONS: u32 = 50;

pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `redis-benchmark -t get` requests per second for 2000-byte values at 50
/// clients: of one key, or (`random_keys`) of that many keys at random, all set
/// beforehand.
pub fn redis_get_rate(redis: &redis_server::RedisServer, random_keys: Option<u32>) -> f64 {
    let port = redis.port.to_string();
    let base = [
        "-h",
        "127.0.0.1",
        "-p",
        port.as_str(),
        "-a",
        redis.password.as_str(),
    ];
    let random = random_keys.map(|n| n.to_string());
    let spread: Vec<&str> = random.iter().flat_map(|n| ["-r", n.as_str()]).collect();
    // Without -r every request uses the key "key:__rand_int__": set it once. With
    // -r, three times as many random SETs as keys leave almost every key set.
    let sets = random_keys.map_or(1000, |n| 3 * n).to_string();
    run(Command::new("redis-benchmark")
        .args(base)
        .args(&spread)
        .args(["-t", "set", "-d", "2000", "-n", &sets, "-q"]));
    let out = run(Command::new("redis-benchmark")
        .args(base)
        .args(&spread)
        .args(["-t", "get", "-d", "2000", "-c", "50", "-n", "500000", "-q"]));
    // Progress lines end in \r; the summary is the segment with "requests per second".
    let line = out
        .split(['\r', '\n'])
        .find(|l| l.contains("requests per second"))
        .unwrap_or_default();
    let rate = line
        .split("GET:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    rate.unwrap_or_else(|| panic!("unexpected redis-benchmark output: {out}"))
}

pub struct Wrk {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn millis(text: &str) -> f64 {
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        _ => f64::NAN,
    }
}

/// `wrk -t1` at [`CONNECTIONS`] for [`SECONDS`] against `url` with the key, and
/// `script` (a Lua file) choosing each request when given.
pub fn wrk(url: &str, key: &str, script: Option<&Path>) -> Wrk {
    let mut command = Command::new("wrk");
    command.args([
        "-t1",
        "-c",
        &CONNECTIONS.to_string(),
        "-d",
        &format!("{SECONDS}s"),
        "--latency",
        "-H",
        &format!("Authorization: Bearer {key}"),
    ]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let out = run(command.arg(url));
    let find = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let non_2xx = find("Non-2xx or 3xx responses:");
    assert!(non_2xx.is_none(), "the service answered errors: {out}");
    Wrk {
        rate: find("Requests/sec:")
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("{out}")),
        p50_ms: millis(&find("50%").unwrap_or_default()),
        p99_ms: millis(&find("99%").unwrap_or_default()),
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `handler` binary (`BENCH_HANDLER`, else this build's) serving on a free
/// port against `redis` and `idp`, with one API key; killed on drop.
pub struct Handler {
    pub child: Child,
    pub port: u16,
    pub binary: String,
    /// From exec to the first answer to `GET /`.
    pub startup: Duration,
}

impl Handler {
    pub async fn start(
        redis: &redis_server::RedisServer,
        idp: &idp::Idp,
        keys_json: String,
        extra: &[(&str, String)],
        log_name: &str,
    ) -> Self {
        let port = free_port();
        let binary = std::env::var("BENCH_HANDLER")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_handler").to_owned());
        let log = std::fs::File::create(log_dir().join(log_name)).unwrap();
        let started = Instant::now();
        let child = Command::new(&binary)
            .args(["serve", "--port", &port.to_string()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(redis.env())
            .envs(idp.env())
            .env("TOKEN_API_KEYS", keys_json)
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(
                std::env::var("TOKIO_WORKER_THREADS")
                    .ok()
                    .map(|n| ("TOKIO_WORKER_THREADS", n)),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start handler");
        let http = reqwest::Client::new();
        let probe = format!("http://127.0.0.1:{port}/");
        let startup = loop {
            if http.get(&probe).send().await.is_ok() {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "handler did not start"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        // Measure the cache as deployed: only once its change feed is live.
        let health = format!("http://127.0.0.1:{port}/api/tokens/health");
        loop {
            let body: serde_json::Value = http
                .get(&health)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if body["cache"]["live"] == true {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "cache never went live: {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self {
            child,
            port,
            binary,
            startup,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
