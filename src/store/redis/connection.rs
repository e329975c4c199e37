//! Connections to Redis: one server through a [`ConnectionManager`] or a Redis
//! Cluster, TLS with the configured CA, and the start-up diagnosis of a
//! configuration that cannot work.

use crate::config::{ConfigError, RedisConfig};
use crate::store::StoreError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, RedisFuture, RedisResult, TlsCertificates, TlsMode, Value};
use std::time::Duration;

/// How long one Redis command may take before the request it serves gives up,
/// and how long a connection may take to open: short, because the first request
/// that waits this long opens the circuit (`circuit.rs`) and the rest fail at once.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One server, or a Redis Cluster. Both reconnect by themselves; the cluster
/// connection also follows slots as they move.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(Cluster),
}

/// The cluster connection, renewable: after every node went away at once the
/// crate's connection can be left with no node to ask for the slots again
/// (`ClusterConnectionNotFound` however long the cluster has been back), and
/// the circuit's probe then makes a new one from the configured seeds.
#[derive(Clone)]
pub(super) struct Cluster {
    client: std::sync::Arc<redis::cluster::ClusterClient>,
    current: std::sync::Arc<std::sync::RwLock<ClusterConnection>>,
}

impl Cluster {
    fn new(client: redis::cluster::ClusterClient) -> Self {
        let conn = client.get_pending_async_connection_with_config(ClusterConfig::new());
        Self {
            client: std::sync::Arc::new(client),
            current: std::sync::Arc::new(std::sync::RwLock::new(conn)),
        }
    }

    fn get(&self) -> ClusterConnection {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A new connection from the seeds, for every clone of this one.
    pub(super) fn renew(&self) {
        let fresh = self
            .client
            .get_pending_async_connection_with_config(ClusterConfig::new());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => {
                let mut c = c.get();
                Box::pin(async move { c.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => {
                let mut c = c.get();
                Box::pin(async move { c.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get().get_db(),
        }
    }
}

/// The command connection, and one client per node for subscriptions (which
/// need a connection of their own). Does no I/O: the connection is made on first
/// use and remade in the background after it drops.
pub(super) fn connect(config: &RedisConfig) -> Result<(Conn, Vec<redis::Client>), ConfigError> {
    let invalid = |e: redis::RedisError| ConfigError(format!("REDIS_HOST: {e}"));
    let clients = config
        .nodes
        .iter()
        .cloned()
        .map(|info| client(info, config.ca_cert.as_deref()))
        .collect::<RedisResult<Vec<_>>>()
        .map_err(invalid)?;
    let Some(first) = clients.first() else {
        return Err(ConfigError("REDIS_URL: names no server".into()));
    };
    let conn = if config.cluster {
        // The crate's default retry waits start at 1.3 s and grow to minutes:
        // a request would sit out a node restart instead of failing fast, and
        // reconnecting after the whole cluster restarts took longer than the
        // callers wait. Short waits, a few retries, as for one server.
        let mut builder = ClusterClientBuilder::new(config.nodes.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(500);
        if config.tls {
            builder = builder.tls(TlsMode::Secure);
        }
        if let Some(certs) = certificates(config) {
            builder = builder.certs(certs);
        }
        let cluster = builder.build().map_err(invalid)?;
        Conn::Cluster(Cluster::new(cluster))
    } else {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        Conn::Single(
            ConnectionManager::new_lazy_with_config(first.clone(), manager_config)
                .map_err(invalid)?,
        )
    };
    Ok((conn, clients))
}

fn certificates(config: &RedisConfig) -> Option<TlsCertificates> {
    config.ca_cert.as_deref().map(trusting)
}

fn trusting(ca_cert: &[u8]) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(ca_cert.to_vec()),
    }
}

/// A client for one server, trusting `ca_cert` when given.
pub(super) fn client(info: ConnectionInfo, ca_cert: Option<&[u8]>) -> RedisResult<redis::Client> {
    match ca_cert {
        Some(pem) => redis::Client::build_with_tls(info, trusting(pem)),
        None => redis::Client::open(info),
    }
}

/// What a failed first PING says about the configuration: one line when it can
/// never work (the login is refused, the server's certificate is not trusted),
/// `None` when Redis is only unreachable for now.
pub(super) fn diagnose(error: &StoreError, custom_ca: bool) -> Option<String> {
    let StoreError::Redis(error) = error else {
        return None;
    };
    if error.kind() == redis::ErrorKind::AuthenticationFailed {
        return Some(
            "REDIS_PASSWORD: Redis refused the login (check REDIS_USERNAME and REDIS_PASSWORD)"
                .into(),
        );
    }
    // The handshake's verdict sits inside the I/O error the connector returns.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        // redis keeps the I/O error behind an `Arc<dyn Error>`.
        let io = e.downcast_ref::<std::io::Error>().or_else(|| {
            e.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        });
        let tls = io
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::InvalidCertificate(why)) = tls {
            let trusted = match custom_ca {
                true => "the CA in REDIS_CA_CERT",
                false => "the system's trusted roots (set REDIS_CA_CERT to its CA)",
            };
            return Some(format!(
                "REDIS_CA_CERT: the Redis server's certificate is not trusted by {trusted}: {why:?}"
            ));
        }
        source = e.source();
    }
    None
}
