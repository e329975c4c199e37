//! Sweep cost against stored-token count: one sweep over 10,000 stored tokens and
//! one over 1,000,000, each with the same 1,000 due. Starts its own redis-server
//! and identity-provider double on loopback; prints durations and Redis round
//! trips. Run: `cargo bench --bench sweep` (see BENCHMARKS.md).

#[path = "../tests/it/support/certs.rs"]
#[allow(dead_code)]
mod certs;
#[path = "../tests/it/support/idp/mod.rs"]
#[allow(dead_code)]
mod idp;
#[path = "../tests/it/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::time::{Duration, Instant};

/// Where the identity-provider double lists what it issued (the test suite checks
/// its logs against that list; here it is only written).
pub fn log_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir
}
use token_broker::clock::Clock;
use token_broker::config::Config;
use token_broker::{AppState, Setup};

const DUE: usize = 1_000;
const RUNS: usize = 3;
/// Real Entra access tokens are 1-3 KB; the stored JSON carries one.
const TOKEN_BYTES: usize = 1_200;

fn key(i: usize) -> String {
    format!("annika:tokens:agent:bench.scope.{i}")
}

/// Writes `stored` tokens in the service's layout, pipelined; the first `DUE` are due.
fn populate(conn: &mut redis_server::TestConn, stored: usize) {
    let now = Clock::System.now();
    let token = "x".repeat(TOKEN_BYTES);
    for start in (0..stored).step_by(10_000) {
        let mut pipe = redis::pipe();
        for i in start..(start + 10_000).min(stored) {
            let json = format!(
                r#"{{"token":"eyJ.{token}.{i}","expires_on":{},"scope":"bench.scope.{i}","stored_at":{now},"metadata":{{"acquired_by":"agent_auth_manager","client_id":"bench","flow":"password"}},"requested_at_ms":0,"refresh_count":0}}"#,
                now + 3600
            );
            let due = if i < DUE { now - 10 } else { now + 3000 };
            pipe.set_ex(key(i), json, 3600)
                .ignore()
                .sadd("annika:tokens:active", key(i))
                .ignore()
                .zadd("annika:tokens:schedule", key(i), due)
                .ignore()
                .zadd("annika:tokens:expiry", key(i), now + 3600)
                .ignore();
        }
        pipe.query::<()>(conn).expect("populate redis");
    }
}

/// Makes the same `DUE` keys due again after a sweep refreshed them.
fn make_due(conn: &mut redis_server::TestConn) {
    let mut pipe = redis::pipe();
    for i in 0..DUE {
        pipe.zadd("annika:tokens:schedule", key(i), Clock::System.now() - 10)
            .ignore();
    }
    pipe.query::<()>(conn).expect("reschedule");
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Measured {
    stored: usize,
    millis: f64,
    round_trips: u64,
    refreshed: usize,
}

async fn measure(stored: usize) -> Measured {
    let redis = redis_server::RedisServer::start();
    let idp = idp::Idp::start().await;
    let mut conn = redis.conn();
    let started = Instant::now();
    populate(&mut conn, stored);
    let used: String = redis::cmd("INFO").arg("memory").query(&mut conn).unwrap();
    let used = used
        .lines()
        .find(|l| l.starts_with("used_memory_human:"))
        .unwrap_or("")
        .trim()
        .to_owned();
    eprintln!(
        "stored {stored} tokens in {:.1} s ({used})",
        started.elapsed().as_secs_f64()
    );

    let mut vars = redis.env();
    vars.extend(idp.env());
    vars.push(("TOKEN_SCOPES".into(), "bench.scope.0".into()));
    vars.push(("TOKEN_API_AUTH".into(), "none".into()));
    let config = Config::from_vars(vars).expect("config");
    let state = AppState::build(&config, Setup::standalone()).expect("state");
    let (mut millis, mut trips, mut refreshed) = (Vec::new(), Vec::new(), 0);
    for run in 0..RUNS {
        if run > 0 {
            make_due(&mut conn);
        }
        let started = Instant::now();
        let summary = state.tokens.sweep().await.expect("sweep");
        millis.push(started.elapsed().as_secs_f64() * 1000.0);
        trips.push(summary.round_trips as f64);
        refreshed = summary.refreshed;
        assert_eq!(summary.due, DUE, "{summary:?}");
        assert_eq!(summary.refreshed, DUE, "{summary:?}");
        eprintln!("  run {run}: {}", summary.line());
    }
    Measured {
        stored,
        millis: median(millis),
        round_trips: median(trips) as u64,
        refreshed,
    }
}

#[tokio::main]
async fn main() {
    let small = measure(10_000).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let large = measure(1_000_000).await;
    println!();
    println!(
        "| stored tokens | due | refreshed | sweep (median of {RUNS}) | Redis round trips | per refreshed token |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for m in [&small, &large] {
        println!(
            "| {} | {DUE} | {} | {:.0} ms | {} | {:.2} |",
            m.stored,
            m.refreshed,
            m.millis,
            m.round_trips,
            m.round_trips as f64 / m.refreshed as f64
        );
    }
    println!();
    println!(
        "ratio 1,000,000 / 10,000 = {:.2}x (target: within 1.5x)",
        large.millis / small.millis
    );
}
