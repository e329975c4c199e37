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

#[path = "../tests/it/support/certs.rs"]
#[allow(dead_code)]
mod certs;
#[path = "../tests/it/support/idp/mod.rs"]
#[allow(dead_code)]
mod idp;
#[path = "../tests/it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

#[allow(dead_code)]
mod common;

pub use common::log_dir;
use common::{CONNECTIONS, Handler, SECONDS, free_port, median, peak_rss_mb, redis_get_rate, wrk};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Redis and the service are measured alternately this many times; medians are
/// reported, so a noisy moment on a shared machine does not decide the ratio.
const ROUNDS: usize = 5;

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

#[tokio::main]
async fn main() {
    let redis = redis_server::RedisServer::start();
    let idp = idp::Idp::start().await;
    // A token the size of a real Graph token, so the body is comparable to the
    // 2000-byte value Redis serves.
    idp.set_token_padding(1500);
    let (key, entry) = token_broker::callers::new_key("bench", vec!["*".into()], vec![], false);
    let keys_json = serde_json::to_string(&[entry]).unwrap();
    // Callers with Entra ID tokens too: the same read, authenticated by a token
    // the double signed (verified once, then its verdict is remembered).
    let callers =
        serde_json::json!([{"name": "bench-entra", "app_id": idp::CALLER_APP_ID, "scopes": ["*"]}]);
    let extra = [
        ("TOKEN_API_AUTH", "keys,entra".to_owned()),
        ("TOKEN_API_CALLERS", callers.to_string()),
    ];
    let handler = Handler::start(&redis, &idp, keys_json, &extra, "read-path-handler.log").await;
    let entra_token = idp.caller_token(idp::CALLER_APP_ID).await;
    let (startup, binary) = (handler.startup, handler.binary.clone());
    let http = reqwest::Client::new();
    let url = handler.url("/api/tokens/https%3A%2F%2Fgraph.microsoft.com%2F.default");
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
    let (mut entra_rates, mut entra_p99s) = (vec![], vec![]);
    for round in 0..ROUNDS {
        let redis_rate = tokio::task::spawn_blocking({
            let redis = redis.clone();
            move || redis_get_rate(&redis, None)
        })
        .await
        .unwrap();
        let static_file = tokio::task::spawn_blocking({
            let (url, key) = (nginx_url.clone(), key.expose().to_owned());
            move || wrk(&url, &key, None)
        })
        .await
        .unwrap();
        let calls_before = redis_calls(&redis);
        let service = tokio::task::spawn_blocking({
            let (url, key) = (url.clone(), key.expose().to_owned());
            move || wrk(&url, &key, None)
        })
        .await
        .unwrap();
        redis_during += redis_calls(&redis) - calls_before;
        let entra = tokio::task::spawn_blocking({
            let (url, token) = (url.clone(), entra_token.clone());
            move || wrk(&url, &token, None)
        })
        .await
        .unwrap();
        eprintln!(
            "round {round}: Entra caller {:.0}/s; Entra / API key {:.2}",
            entra.rate,
            entra.rate / service.rate
        );
        entra_rates.push(entra.rate);
        entra_p99s.push(entra.p99_ms);
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
    let entra_ratios: Vec<f64> = entra_rates
        .iter()
        .zip(&service_rates)
        .map(|(e, s)| e / s)
        .collect();
    let worst_p99 = p99s.iter().cloned().fold(0.0, f64::max);
    let nginx_rate = median(nginx_rates);
    let (redis_rate, service_rate, p50, p99) = (
        median(redis_rates),
        median(service_rates),
        median(p50s),
        median(p99s),
    );
    let rss = peak_rss_mb(handler.child.id());
    drop(handler);
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
        "Entra caller / API key per round: {}",
        entra_ratios
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
    println!(
        "| the same with an Entra ID token as the caller's credential | {:.0} | | {:.2} ms |",
        median(entra_rates),
        median(entra_p99s)
    );
    println!();
    println!(
        "ratio Entra caller / API key = {:.2} (target >= 0.9)",
        median(entra_ratios)
    );
    println!(
        "ratio service / nginx = {:.2} (target >= 1.0)",
        median(nginx_ratios)
    );
    println!(
        "ratio service / Redis GET = {:.2}; p99 {p99:.2} ms, worst round {worst_p99:.2} ms (target < 2 ms); peak RSS {rss:.1} MB (target < 50 MB)",
        median(ratios)
    );
}
