//! The miss path: 100,000 users' tokens stored, reads spread at random over all
//! of them (so most miss the in-process cache of 10,000 entries and go to Redis),
//! against the hit path (one token read again and again) and
//! `redis-benchmark -r 100000` GET of 2000-byte values, alternated in one run;
//! prints rates, the ratios, p50/p99 and the service's peak RSS.
//! Run with `scripts/bench-read-path.sh miss` (installs wrk when missing).

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
use common::{CONNECTIONS, Handler, SECONDS, median, peak_rss_mb, redis_get_rate, wrk};
use std::time::Instant;

const USERS: u32 = 100_000;
const ROUNDS: usize = 3;
/// Real Entra access tokens are 1-3 KB; the stored JSON carries one.
const TOKEN_BYTES: usize = 1_500;

/// Writes `USERS` user tokens in the service's layout, pipelined.
fn populate(conn: &mut redis_server::TestConn) {
    let now = token_broker::clock::Clock::System.now();
    let token = "x".repeat(TOKEN_BYTES);
    for start in (0..USERS).step_by(10_000) {
        let mut pipe = redis::pipe();
        for i in start..(start + 10_000).min(USERS) {
            let name = format!("annika:tokens:user:u{i}:User.Read");
            let json = format!(
                r#"{{"token":"eyJ.{token}.{i}","expires_on":{},"scope":"User.Read","stored_at":{now},"user_id":"u{i}","metadata":{{"acquired_by":"user_grant","client_id":"bench","flow":"external"}},"requested_at_ms":0,"refresh_count":0}}"#,
                now + 3600
            );
            pipe.set_ex(&name, json, 3600)
                .ignore()
                .sadd("annika:tokens:active", &name)
                .ignore();
        }
        pipe.query::<()>(conn).expect("populate redis");
    }
}

#[tokio::main]
async fn main() {
    let redis = redis_server::RedisServer::start();
    let idp = idp::Idp::start().await;
    let started = Instant::now();
    populate(&mut redis.conn());
    eprintln!(
        "stored {USERS} users' tokens in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (key, entry) =
        token_broker::callers::new_key("bench", vec!["*".into()], vec!["*".into()], false);
    let keys_json = serde_json::to_string(&[entry]).unwrap();
    let handler = Handler::start(&redis, &idp, keys_json, &[], "miss-path-handler.log").await;
    let script = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("miss-path.lua");
    std::fs::write(
        &script,
        format!(
            "math.randomseed(os.time())\n\
             request = function()\n  \
               return wrk.format(\"GET\", \"/api/tokens/User.Read?user_id=u\" .. math.random(0, {}))\n\
             end\n",
            USERS - 1
        ),
    )
    .unwrap();
    let hit_url = handler.url("/api/tokens/User.Read?user_id=u1");
    let miss_url = handler.url("/");

    let stats = |redis: &redis_server::RedisServer| -> (f64, f64) {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut redis.conn())
            .unwrap();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(f64::NAN)
        };
        (
            field("total_commands_processed:"),
            field("total_reads_processed:"),
        )
    };
    // CPU seconds the service spent (user and system), from /proc.
    let pid = handler.child.id();
    let cpu = move || -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<f64> = after_name
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / 100.0
    };
    let (mut hit_cpu, mut miss_cpu) = (0.0, 0.0);
    let redis = std::sync::Arc::new(redis);
    let (mut redis_rates, mut hits, mut misses) = (vec![], vec![], vec![]);
    let (mut commands, mut reads) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let redis_rate = tokio::task::spawn_blocking({
            let redis = redis.clone();
            move || redis_get_rate(&redis, Some(USERS))
        })
        .await
        .unwrap();
        let cpu_before = cpu();
        let hit = tokio::task::spawn_blocking({
            let (url, key) = (hit_url.clone(), key.expose().to_owned());
            move || wrk(&url, &key, None)
        })
        .await
        .unwrap();
        hit_cpu += cpu() - cpu_before;
        let cpu_before = cpu();
        let before = stats(&redis);
        let miss = tokio::task::spawn_blocking({
            let (url, key, script) = (miss_url.clone(), key.expose().to_owned(), script.clone());
            move || wrk(&url, &key, Some(&script))
        })
        .await
        .unwrap();
        miss_cpu += cpu() - cpu_before;
        let after = stats(&redis);
        commands += after.0 - before.0;
        reads += after.1 - before.1;
        eprintln!(
            "round {round}: redis -r {USERS} {redis_rate:.0}/s, hit {:.0}/s, miss {:.0}/s (p99 {:.2} ms); miss/hit {:.2}",
            hit.rate,
            miss.rate,
            miss.p99_ms,
            miss.rate / hit.rate
        );
        redis_rates.push(redis_rate);
        hits.push(hit);
        misses.push(miss);
    }
    let ratios: Vec<f64> = misses
        .iter()
        .zip(&hits)
        .map(|(m, h)| m.rate / h.rate)
        .collect();
    let rss = peak_rss_mb(handler.child.id());
    let rate = |runs: &[common::Wrk]| median(runs.iter().map(|w| w.rate).collect());
    let p50 = |runs: &[common::Wrk]| median(runs.iter().map(|w| w.p50_ms).collect());
    let p99 = |runs: &[common::Wrk]| median(runs.iter().map(|w| w.p99_ms).collect());
    let worst_p99 = misses.iter().map(|w| w.p99_ms).fold(0.0, f64::max);
    println!();
    println!(
        "handler: {}; {USERS} users' tokens of ~{TOKEN_BYTES} bytes; {CONNECTIONS} connections; {ROUNDS} alternating rounds of redis-benchmark -r {USERS} (500,000 GETs), wrk -t1 ({SECONDS} s) on one token, wrk -t1 ({SECONDS} s) on a random user each request",
        handler.binary
    );
    println!("| median of {ROUNDS} rounds | requests/s | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    println!(
        "| redis-benchmark -r {USERS} GET, 2000-byte values | {:.0} | | |",
        median(redis_rates.clone())
    );
    println!(
        "| hit path: one token | {:.0} | {:.2} ms | {:.2} ms |",
        rate(&hits),
        p50(&hits),
        p99(&hits)
    );
    println!(
        "| miss path: a random one of {USERS} users | {:.0} | {:.2} ms | {:.2} ms |",
        rate(&misses),
        p50(&misses),
        p99(&misses)
    );
    let requests = |runs: &[common::Wrk]| runs.iter().map(|w| w.rate * SECONDS as f64).sum::<f64>();
    println!(
        "service CPU per request (user + system, /proc): hit {:.1} us, miss {:.1} us",
        hit_cpu / requests(&hits) * 1e6,
        miss_cpu / requests(&misses) * 1e6
    );
    println!(
        "Redis during the miss rounds: {:.2} commands per request, {:.2} commands per read from a socket (pipelining across requests)",
        commands / misses.iter().map(|w| w.rate * SECONDS as f64).sum::<f64>(),
        commands / reads
    );
    println!();
    println!(
        "miss / hit = {:.2} (goal >= 0.5); miss / Redis = {:.2}; miss p99 {:.2} ms, worst round {worst_p99:.2} ms (goal < 5 ms); peak RSS {rss:.1} MB (goal < 64 MB)",
        median(ratios),
        rate(&misses) / median(redis_rates),
        p99(&misses)
    );
}
