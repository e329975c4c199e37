//! Real redis-servers on free loopback ports, with a password, in their own
//! folder; stopped and removed when dropped. One server, or (when the variable
//! `TEST_REDIS_CLUSTER=1` is set, as `scripts/test.sh` does for its second pass) a
//! three-master Redis Cluster, or one server speaking only TLS.

use redis::ConnectionLike;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    nodes: Vec<Node>,
    /// The first node's port: the one the service is pointed at.
    pub port: u16,
    pub password: String,
    dir: PathBuf,
    kind: Kind,
}

struct Node {
    child: Child,
    port: u16,
}

#[derive(Clone)]
enum Kind {
    Single,
    Cluster,
    Tls(TlsFiles),
}

/// A CA and a server certificate it signed for 127.0.0.1, made with `openssl`.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Whether this run's tests go to a Redis Cluster.
pub fn cluster_run() -> bool {
    std::env::var("TEST_REDIS_CLUSTER").is_ok_and(|v| v == "1")
}

fn url(port: u16, password: &str) -> String {
    format!("redis://:{password}@127.0.0.1:{port}/0")
}

fn client(port: u16, password: &str, kind: &Kind) -> redis::RedisResult<redis::Client> {
    match kind {
        Kind::Tls(files) => redis::Client::build_with_tls(
            format!("rediss://:{password}@127.0.0.1:{port}/0"),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(&files.ca).expect("the test CA")),
            },
        ),
        _ => redis::Client::open(url(port, password)),
    }
}

fn ping(port: u16, password: &str, kind: &Kind) -> bool {
    client(port, password, kind)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok()
}

/// Starts redis-server and PINGs it until it answers (then `Some`), or until the
/// process dies or 10 s pass (then `None`).
fn launch(port: u16, password: &str, dir: &Path, kind: &Kind) -> Option<Child> {
    let mut command = Command::new("redis-server");
    command
        .args(["--bind", "127.0.0.1"])
        .args(["--requirepass", password])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir);
    match kind {
        Kind::Single => {
            command.args(["--port", &port.to_string()]);
        }
        Kind::Cluster => {
            command
                .args(["--port", &port.to_string()])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--masterauth", password]);
        }
        Kind::Tls(files) => {
            command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&files.cert)
                .arg("--tls-key-file")
                .arg(&files.key)
                .arg("--tls-ca-cert-file")
                .arg(&files.ca)
                .args(["--tls-auth-clients", "no"]);
        }
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-server ({e}); scripts/test.sh installs it"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if ping(port, password, kind) {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A node on a free port (a port is free when picked and may be taken before
/// redis binds it: a few tries).
fn launch_anywhere(password: &str, dir: &Path, kind: &Kind) -> Node {
    for _ in 0..5 {
        let port = free_port();
        if let Some(child) = launch(port, password, dir, kind) {
            return Node { child, port };
        }
    }
    panic!("redis-server did not start");
}

fn new_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tb-{what}-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("a folder for redis");
    dir
}

fn run(command: &mut Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}); scripts/test.sh installs it"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`{name}-ca.pem`) in `dir`, and with `server`, a certificate it signed
/// for 127.0.0.1 and localhost.
pub fn make_ca(dir: &Path, name: &str, server: bool) -> TlsFiles {
    let file = |suffix: &str| dir.join(format!("{name}-{suffix}"));
    let (ca_key, ca, key, csr, cert) = (
        file("ca.key"),
        file("ca.pem"),
        file("server.key"),
        file("server.csr"),
        file("server.pem"),
    );
    run(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={name} test CA")])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
        "openssl req (CA)",
    );
    if server {
        run(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-subj", "/CN=127.0.0.1"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr),
            "openssl req (server)",
        );
        let ext = file("ext.cnf");
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        run(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .args(["-CAcreateserial", "-extfile"])
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
            "openssl x509 (sign)",
        );
    }
    TlsFiles { ca, cert, key }
}

impl RedisServer {
    /// The JSON stored under `key` (panics when there is none).
    pub fn get_json(&self, key: &str) -> serde_json::Value {
        use redis::Commands;
        let json: Option<String> = self.conn().get(key).unwrap();
        serde_json::from_str(&json.unwrap_or_else(|| panic!("nothing stored under {key}")))
            .expect("stored JSON")
    }

    /// Every key and its value (strings, hashes, sets, sorted sets, streams), to
    /// compare before and after, or to search for what must not be stored.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, String> {
        use redis::Commands;
        let mut conn = self.conn();
        self.keys()
            .into_iter()
            .map(|key| {
                let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
                let value = match kind.as_str() {
                    "string" => conn.get::<_, String>(&key).unwrap(),
                    "set" => {
                        let mut members: Vec<String> = conn.smembers(&key).unwrap();
                        members.sort();
                        members.join("\n")
                    }
                    "zset" => format!(
                        "{:?}",
                        conn.zrange_withscores::<_, Vec<(String, f64)>>(&key, 0, -1)
                            .unwrap()
                    ),
                    "hash" => format!(
                        "{:?}",
                        conn.hgetall::<_, std::collections::BTreeMap<String, String>>(&key)
                            .unwrap()
                    ),
                    "stream" => format!(
                        "{:?}",
                        redis::cmd("XRANGE")
                            .arg(&key)
                            .arg("-")
                            .arg("+")
                            .query::<Vec<(String, Vec<String>)>>(&mut conn)
                            .unwrap()
                    ),
                    other => other.to_owned(),
                };
                (key, value)
            })
            .collect()
    }

    /// Every key name, sorted (from every node of a cluster).
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut self.conn()).unwrap();
        keys.sort();
        keys
    }

    /// One server, or a cluster when this is a cluster run.
    pub fn start() -> Self {
        if cluster_run() {
            Self::start_cluster()
        } else {
            Self::start_kind(Kind::Single)
        }
    }

    /// One server that speaks only TLS, with a certificate signed by its own CA.
    pub fn start_tls() -> Self {
        let dir = new_dir("redis-tls");
        let files = make_ca(&dir, "good", true);
        Self::start_in(dir, Kind::Tls(files))
    }

    fn start_kind(kind: Kind) -> Self {
        Self::start_in(new_dir("redis"), kind)
    }

    fn start_in(dir: PathBuf, kind: Kind) -> Self {
        let password = format!("pw-{:016x}", rand::random::<u64>());
        let node = launch_anywhere(&password, &dir, &kind);
        Self {
            port: node.port,
            nodes: vec![node],
            password,
            dir,
            kind,
        }
    }

    /// Three masters, no replicas, every slot assigned.
    pub fn start_cluster() -> Self {
        let password = format!("pw-{:016x}", rand::random::<u64>());
        let dir = new_dir("redis-cluster");
        let nodes: Vec<Node> = (0..3)
            .map(|i| {
                let node_dir = dir.join(format!("node{i}"));
                std::fs::create_dir_all(&node_dir).expect("a folder for a node");
                launch_anywhere(&password, &node_dir, &Kind::Cluster)
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["-a", &password, "--no-auth-warning", "--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        run(&mut create, "redis-cli --cluster create");
        let server = Self {
            port: nodes[0].port,
            nodes,
            password,
            dir,
            kind: Kind::Cluster,
        };
        server.wait_cluster_ok();
        server
    }

    /// Waits (at most 20 s) until every node says the cluster is ok.
    fn wait_cluster_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            loop {
                let info: String = client(node.port, &self.password, &self.kind)
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// A plain connection to each node on its own (not following the cluster).
    pub fn node_conns(&self) -> Vec<redis::Connection> {
        self.nodes
            .iter()
            .map(|n| {
                client(n.port, &self.password, &self.kind)
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
                    .expect("connect to a test redis node")
            })
            .collect()
    }

    /// A direct connection (to the whole cluster, in a cluster run), to read what
    /// the service wrote the way other apps do.
    pub fn conn(&self) -> TestConn {
        match self.kind {
            Kind::Cluster => {
                let urls: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| url(n.port, &self.password))
                    .collect();
                TestConn::Cluster(Box::new(
                    redis::cluster::ClusterClient::new(urls)
                        .and_then(|c| c.get_connection())
                        .expect("connect to the test cluster"),
                ))
            }
            _ => TestConn::Single(
                client(self.port, &self.password, &self.kind)
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
                    .expect("connect to the test redis"),
            ),
        }
    }

    /// The variables that point the service at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("REDIS_HOST".into(), "127.0.0.1".into()),
            ("REDIS_PORT".into(), self.port.to_string()),
            ("REDIS_PASSWORD".into(), self.password.clone()),
        ];
        match &self.kind {
            Kind::Single => {}
            Kind::Cluster => env.push(("REDIS_CLUSTER".into(), "true".into())),
            Kind::Tls(files) => {
                env.push(("REDIS_SSL".into(), "true".into()));
                env.push(("REDIS_CA_CERT".into(), files.ca.display().to_string()));
            }
        }
        env
    }

    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }

    /// Stops node `i` only (the server itself, or one master of a cluster).
    pub fn stop_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let _ = node.child.kill();
        let _ = node.child.wait();
    }

    /// Starts node `i` again, empty, on its port (a cluster master reads its
    /// slots back from its nodes.conf and rejoins).
    pub fn restart_node(&mut self, i: usize) {
        let dir = match self.kind {
            Kind::Cluster => self.dir.join(format!("node{i}")),
            _ => self.dir.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let node = &mut self.nodes[i];
        node.child = loop {
            if let Some(child) = launch(node.port, &self.password, &dir, &self.kind) {
                break child;
            }
            assert!(Instant::now() < deadline, "redis-server did not restart");
        };
        if let Kind::Cluster = self.kind {
            self.wait_cluster_ok();
        }
    }

    /// Freezes node `i` (SIGSTOP): connections stay open and nothing answers,
    /// as in a network partition. [`RedisServer::resume_node`] ends it, data intact.
    pub fn pause_node(&self, i: usize) {
        signal(&self.nodes[i], "-STOP");
    }

    pub fn resume_node(&self, i: usize) {
        signal(&self.nodes[i], "-CONT");
    }

    /// Fresh, empty servers on the same ports and password (a cluster keeps its
    /// slot assignment: each node reads it back from its nodes.conf).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let dir = match self.kind {
                Kind::Cluster => self.dir.join(format!("node{i}")),
                _ => self.dir.clone(),
            };
            node.child = loop {
                if let Some(child) = launch(node.port, &self.password, &dir, &self.kind) {
                    break child;
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not restart on port {}",
                    node.port
                );
            };
        }
        if let Kind::Cluster = self.kind {
            self.wait_cluster_ok();
        }
    }
}

fn signal(node: &Node, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &node.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal}");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = Command::new("kill")
                .args(["-CONT", &node.child.id().to_string()])
                .status();
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection to one server or to the cluster; `redis::Commands` works on both.
pub enum TestConn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl ConnectionLike for TestConn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        match self {
            TestConn::Single(c) => c.req_packed_command(cmd),
            TestConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        match self {
            TestConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            TestConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    /// Delegated so that the cluster connection routes by the command's keys.
    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            TestConn::Single(c) => c.req_command(cmd),
            TestConn::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            TestConn::Single(c) => c.get_db(),
            TestConn::Cluster(c) => c.get_db(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        match self {
            TestConn::Single(c) => c.supports_pipelining(),
            TestConn::Cluster(c) => c.supports_pipelining(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            TestConn::Single(c) => c.check_connection(),
            TestConn::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            TestConn::Single(c) => c.is_open(),
            TestConn::Cluster(c) => c.is_open(),
        }
    }
}
