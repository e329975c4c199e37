//! The circuit in front of Redis: after a connection failure or a timeout,
//! every request fails at once instead of waiting on Redis again (callers get
//! cached tokens or a `503` without delay), while one probe in the background,
//! backing off, checks until Redis answers again (every master of a cluster).

use super::connection::{Conn, client};
use super::tracking::{cluster_nodes, masters_in, node_at};
use redis::{ConnectionInfo, RedisError, RedisResult, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one probe of one server may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// The first pause between probes; it doubles up to [`PROBE_EVERY_AT_MOST`].
const PROBE_FIRST_PAUSE: Duration = Duration::from_millis(100);
const PROBE_EVERY_AT_MOST: Duration = Duration::from_secs(1);

/// Whether an error means Redis (or part of a cluster) cannot be reached now, as
/// opposed to a refusal of one command.
pub(super) fn is_unreachable(error: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Io
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::BusyLoading
            )
    ) || error.is_connection_dropped()
        || error.is_timeout()
}

/// What the probe needs to reach Redis on its own.
#[derive(Clone)]
pub(super) struct Reach {
    pub conn: Conn,
    /// The configured server or first seed: login and TLS for the masters.
    pub template: ConnectionInfo,
    pub ca_cert: Option<Vec<u8>>,
    pub cluster: bool,
}

#[derive(Clone, Default)]
pub(super) struct Circuit(Arc<State>);

#[derive(Default)]
struct State {
    open: AtomicBool,
    probing: AtomicBool,
}

impl Circuit {
    pub fn is_open(&self) -> bool {
        self.0.open.load(Ordering::Acquire)
    }

    /// The error every request gets while the circuit is open.
    pub fn refusal() -> RedisError {
        RedisError::from(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "Redis is unreachable; requests fail at once until a background probe reaches it again",
        ))
    }

    /// Opens the circuit after `error`, and starts the probe unless one runs.
    pub fn trip(&self, error: &RedisError, reach: &Reach) {
        if !self.0.open.swap(true, Ordering::AcqRel) {
            tracing::warn!(%error, "Redis unreachable: failing requests at once until it answers again");
        }
        if self.0.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (circuit, reach) = (self.clone(), reach.clone());
        tokio::spawn(async move {
            let mut pause = PROBE_FIRST_PAUSE;
            loop {
                tokio::time::sleep(pause).await;
                if probe(&reach).await.is_ok() {
                    break;
                }
                pause = (pause * 2).min(PROBE_EVERY_AT_MOST);
            }
            circuit.0.open.store(false, Ordering::Release);
            circuit.0.probing.store(false, Ordering::Release);
            tracing::info!("Redis answers again: requests go to it");
        });
    }
}

/// One check that the whole store answers: the server, or every master that
/// serves slots (failed ones included) with a cluster state of `ok`.
async fn probe(reach: &Reach) -> RedisResult<()> {
    let mut conn = reach.conn.clone();
    if !reach.cluster {
        let ping = redis::cmd("PING");
        return within(ping.query_async::<Value>(&mut conn)).await.map(drop);
    }
    let ask = cluster_nodes();
    let nodes: String = match within(ask.query_async(&mut conn)).await {
        Ok(nodes) => nodes,
        Err(error) if error.kind() == redis::ErrorKind::ClusterConnectionNotFound => {
            // No node left to ask for the slots: a new connection from the seeds.
            if let Conn::Cluster(cluster) = &reach.conn {
                cluster.renew();
            }
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    for master in masters_in(&nodes, true) {
        let node = client(node_at(&reach.template, &master), reach.ca_cert.as_deref())?;
        let state = async {
            let mut node = node.get_multiplexed_async_connection().await?;
            let mut cluster_info = redis::cmd("CLUSTER");
            cluster_info.arg("INFO");
            cluster_info.query_async::<String>(&mut node).await
        };
        if !within(state).await?.contains("cluster_state:ok") {
            return Err(Circuit::refusal());
        }
    }
    Ok(())
}

async fn within<T>(request: impl std::future::Future<Output = RedisResult<T>>) -> RedisResult<T> {
    tokio::time::timeout(PROBE_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| Err(Circuit::refusal()))
}
