//! The read path against two references, in one run on one machine: starts
//! redis-server, the identity-provider double and the `handler` binary, warms one
//! token, then alternates `redis-benchmark` GET of a 2000-byte value at 50
//! clients, nginx (one worker, keep-alive, no access log) serving the very bytes
//! of the token answer as a static file, and the service's
//! `GET /api/tokens/{scope}`, both at 50 connections with `wrk`; prints the rates,
//! the ratios, the service's p50/p99 and its peak RSS.
//! Run with `scripts/bench-read-path.sh` (installs wrk and nginx when missing).
//! `BENCH_HANDLER=path` measures another build of `handler` (an earlier commit's,
//! for a before-and-after in one sitting).

#[path = "../tests/it/support/idp.rs"]
#[allow(dead_code)]
mod idp;
#[path = "../tests/it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn log_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

const SECONDS: u64 = 6;
/// Redis and the service are measured alternately this many times; medians are
/// reported, so a noisy moment on a shared machine does not decide the ratio.
const ROUNDS: usize = 5;
const CONNECTIONS: u32 = 50;

fn run(command: &mut Command) -> String {
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

/// `redis-benchmark -t get` requests per second for a 2000-byte value.
fn redis_get_rate(redis: &redis_server::RedisServer) -> f64 {
    let port = redis.port.to_string();
    let base = [
        "-h",
        "127.0.0.1",
        "-p",
        port.as_str(),
        "-a",
        redis.password.as_str(),
    ];
    // Without -r every request uses the key "key:__rand_int__": set it once, 2000 bytes.
    run(Command::new("redis-benchmark")
        .args(base)
        .args(["-t", "set", "-d", "2000", "-n", "1000", "-q"]));
    let out = run(Command::new("redis-benchmark")
        .args(base)
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

struct Wrk {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
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

fn wrk(url: &str, key: &str) -> Wrk {
    let out = run(Command::new("wrk").args([
        "-t1",
        "-c",
        &CONNECTIONS.to_string(),
        "-d",
        &format!("{SECONDS}s"),
        "--latency",
        "-H",
        &format!("Authorization: Bearer {key}"),
        url,
    ]));
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

/// nginx with one worker, keep-alive and no access log, serving `body` as
/// `/token.json` from a folder of its own; stopped on drop.
struct Nginx {
    child: std::process::Child,
    port: u16,
}

impl Nginx {
    fn start(body: &[u8]) -> Self {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-nginx");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/token.json"), body).unwrap();
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 65;\n\
               default_type application/json;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               server {{ listen 127.0.0.1:{port}; location / {{ root {d}/www; }} }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (scripts/bench-read-path.sh installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, port }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

#[tokio::main]
async fn main() {
    let redis = redis_server::RedisServer::start();
    let idp = idp::Idp::start().await;
    // A token the size of a real Graph token, so the body is comparable to the
    // 2000-byte value Redis serves.
    idp.set_token_padding(1500);
    let (key, entry) = token_broker::callers::new_key("bench", vec!["*".into()], vec![], false);
    let port = free_port();
    let binary =
        std::env::var("BENCH_HANDLER").unwrap_or_else(|_| env!("CARGO_BIN_EXE_handler").to_owned());
    let log = std::fs::File::create(log_dir().join("read-path-handler.log")).unwrap();
    let started = Instant::now();
    let mut handler = Command::new(&binary)
        .args(["serve", "--port", &port.to_string()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(redis.env())
        .envs(idp.env())
        .env("TOKEN_API_KEYS", serde_json::to_string(&[entry]).unwrap())
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
    let url =
        format!("http://127.0.0.1:{port}/api/tokens/https%3A%2F%2Fgraph.microsoft.com%2F.default");
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
    // Measure the cache as deployed: only once its invalidation channel is live.
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
    let warm = http
        .get(&url)
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200, "warming the token");
    let answer = warm.bytes().await.unwrap();
    let token_len = answer.len();
    let nginx = Nginx::start(&answer);
    let nginx_url = format!("http://127.0.0.1:{}/token.json", nginx.port);

    let redis_calls = |redis: &redis_server::RedisServer| -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut redis.conn())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let redis = std::sync::Arc::new(redis);
    let (mut redis_rates, mut nginx_rates, mut service_rates, mut p50s, mut p99s, mut redis_during) =
        (vec![], vec![], vec![], vec![], vec![], 0);
    for round in 0..ROUNDS {
        let redis_rate = tokio::task::spawn_blocking({
            let redis = redis.clone();
            move || redis_get_rate(&redis)
        })
        .await
        .unwrap();
        let static_file = tokio::task::spawn_blocking({
            let (url, key) = (nginx_url.clone(), key.expose().to_owned());
            move || wrk(&url, &key)
        })
        .await
        .unwrap();
        let calls_before = redis_calls(&redis);
        let service = tokio::task::spawn_blocking({
            let (url, key) = (url.clone(), key.expose().to_owned());
            move || wrk(&url, &key)
        })
        .await
        .unwrap();
        redis_during += redis_calls(&redis) - calls_before;
        eprintln!(
            "round {round}: redis {redis_rate:.0}/s, nginx {:.0}/s, service {:.0}/s; service/nginx {:.2}, service/redis {:.2}",
            static_file.rate,
            service.rate,
            service.rate / static_file.rate,
            service.rate / redis_rate
        );
        redis_rates.push(redis_rate);
        nginx_rates.push(static_file.rate);
        service_rates.push(service.rate);
        p50s.push(service.p50_ms);
        p99s.push(service.p99_ms);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios: Vec<f64> = service_rates
        .iter()
        .zip(&redis_rates)
        .map(|(s, r)| s / r)
        .collect();
    let nginx_ratios: Vec<f64> = service_rates
        .iter()
        .zip(&nginx_rates)
        .map(|(s, n)| s / n)
        .collect();
    let worst_p99 = p99s.iter().cloned().fold(0.0, f64::max);
    let nginx_rate = median(nginx_rates);
    let (redis_rate, service_rate, p50, p99) = (
        median(redis_rates),
        median(service_rates),
        median(p50s),
        median(p99s),
    );
    let rss = peak_rss_mb(handler.id());
    let _ = handler.kill();
    let _ = handler.wait();
    drop(nginx);

    println!();
    println!(
        "handler answered GET / {:.1} ms after exec (probe loop polling every 1 ms)",
        startup.as_secs_f64() * 1000.0
    );
    println!(
        "handler: {binary}; response body: {token_len} bytes; {CONNECTIONS} connections; {ROUNDS} alternating rounds of redis-benchmark (500,000 GETs), wrk -t1 ({SECONDS} s) against nginx and against the service; RUST_LOG={}; TOKIO_WORKER_THREADS={}",
        std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
        std::env::var("TOKIO_WORKER_THREADS").unwrap_or_else(|_| "default (cores - 1)".into())
    );
    println!(
        "Redis commands while the service was measured: {redis_during} (reads served from the in-process cache)"
    );
    println!(
        "service / nginx per round: {}",
        nginx_ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "service / Redis per round: {}",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| median of {ROUNDS} rounds | requests/s | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    println!("| redis-benchmark GET, 2000-byte value, 50 clients | {redis_rate:.0} | | |");
    println!("| nginx, the same answer as a static file, 50 connections | {nginx_rate:.0} | | |");
    println!(
        "| GET /api/tokens/{{scope}}, 50 connections | {service_rate:.0} | {p50:.2} ms | {p99:.2} ms |"
    );
    println!();
    println!(
        "ratio service / nginx = {:.2} (target >= 1.0)",
        median(nginx_ratios)
    );
    println!(
        "ratio service / Redis GET = {:.2}; p99 {p99:.2} ms, worst round {worst_p99:.2} ms (target < 2 ms); peak RSS {rss:.1} MB (target < 50 MB)",
        median(ratios)
    );
}
