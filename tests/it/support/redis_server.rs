//! A real redis-server on a free loopback port, with a password, in its own
//! folder; stopped and removed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    pub password: String,
    dir: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn url(port: u16, password: &str) -> String {
    format!("redis://:{password}@127.0.0.1:{port}/0")
}

fn ping(port: u16, password: &str) -> bool {
    redis::Client::open(url(port, password))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok()
}

/// Starts redis-server and PINGs it until it answers (then `Some`), or until the
/// process dies or 10 s pass (then `None`).
fn launch(port: u16, password: &str, dir: &Path) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--requirepass", password])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-server ({e}); scripts/test.sh installs it"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if ping(port, password) {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl RedisServer {
    pub fn start() -> Self {
        let password = format!("pw-{:016x}", rand::random::<u64>());
        let dir = std::env::temp_dir().join(format!("tb-redis-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("a folder for redis");
        // A port is free when picked and may be taken before redis binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = launch(port, &password, &dir) {
                return Self {
                    child,
                    port,
                    password,
                    dir,
                };
            }
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        url(self.port, &self.password)
    }

    /// A direct connection, to read what the service wrote the way other apps do.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("connect to the test redis")
    }

    /// The variables that point the service at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("REDIS_HOST".into(), "127.0.0.1".into()),
            ("REDIS_PORT".into(), self.port.to_string()),
            ("REDIS_PASSWORD".into(), self.password.clone()),
        ]
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A fresh, empty server on the same port and password.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        self.child = loop {
            if let Some(child) = launch(self.port, &self.password, &self.dir) {
                break child;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
        };
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
