//! Redis's server-assisted client-side caching (`CLIENT TRACKING`, broadcast
//! mode): each master reports every write, delete, rename or expiry of a token
//! key, whoever made it (another application, an operator with `redis-cli`), on a
//! RESP3 connection of ours. On a cluster, one connection per master; the feed
//! ends (and is made again, with the cache emptied) when any of them drops or
//! the set of masters changes.

use super::RedisStore;
use super::connection::{CONNECT_TIMEOUT, Conn, RESPONSE_TIMEOUT};
use crate::store::keys::Keys;
use crate::store::{Change, ChangeFeed, StoreError};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    Value,
};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the tracking connections are pinged and, on a cluster, the masters
/// compared with those tracked: a dead connection or a failover is noticed
/// within this, besides the disconnection the connection reports itself.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why tracking could not start.
pub(super) enum NotTracked {
    /// A server refused it (an old Redis, a proxy, an ACL): revalidate instead.
    Refused(String),
    /// Redis could not be reached: try again later.
    Unreachable(StoreError),
}

impl From<redis::RedisError> for NotTracked {
    fn from(error: redis::RedisError) -> Self {
        if error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
        {
            Self::Unreachable(error.into())
        } else {
            Self::Refused(error.to_string())
        }
    }
}

impl RedisStore {
    /// A feed of every change to token keys, from tracking on every master.
    pub(super) async fn tracked_changes(&self) -> Result<ChangeFeed, NotTracked> {
        let masters = self.masters().await?;
        let (sender, pushes) = mpsc::unbounded_channel();
        let mut connections = Vec::with_capacity(masters.len().max(1));
        let servers = match self.cluster() {
            true => masters.iter().map(|m| node_at(&self.nodes[0], m)).collect(),
            false => vec![self.nodes[0].clone()],
        };
        for server in servers {
            let connect = self.track(server, sender.clone());
            let connection = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| {
                    NotTracked::Unreachable(StoreError::Redis(redis::RedisError::from(
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "tracking timed out"),
                    )))
                })??;
            connections.push(connection);
        }
        let watch = Watch {
            pushes,
            connections,
            cluster: self.cluster().then(|| (self.conn.clone(), masters.clone())),
            keys: self.keys.clone(),
            pending: VecDeque::new(),
            ticker: tokio::time::interval(CHECK_EVERY),
        };
        let changes = futures::stream::unfold(watch, |mut watch| async move {
            let change = watch.next().await?;
            Some((change, watch))
        });
        Ok(ChangeFeed {
            changes: changes.boxed(),
            complete: true,
        })
    }

    /// One RESP3 connection to `master` that reports changes of token keys to
    /// `sender`.
    async fn track(
        &self,
        master: ConnectionInfo,
        sender: mpsc::UnboundedSender<PushInfo>,
    ) -> Result<MultiplexedConnection, NotTracked> {
        let settings = master
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = self.client_for(master.set_redis_settings(settings))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(sender);
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut tracking = redis::cmd("CLIENT");
        tracking.arg("TRACKING").arg("ON").arg("BCAST");
        for prefix in self.keys.token_prefixes() {
            tracking.arg("PREFIX").arg(prefix);
        }
        tracking.query_async::<()>(&mut connection).await?;
        Ok(connection)
    }

    /// The masters of the cluster (none for one server), as `CLUSTER NODES` lists them.
    async fn masters(&self) -> Result<Vec<(String, u16)>, NotTracked> {
        if !self.cluster() {
            return Ok(Vec::new());
        }
        let nodes: String = self.query(cluster_nodes()).await?;
        Ok(masters_in(&nodes, false))
    }

    pub(super) fn cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }
}

/// How to reach the node at `(host, port)`: `template`'s login and TLS.
pub(super) fn node_at(template: &ConnectionInfo, (host, port): &(String, u16)) -> ConnectionInfo {
    let (host, port) = (host.clone(), *port);
    let addr = match template.addr() {
        ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: None,
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    template.clone().set_addr(addr)
}

pub(super) fn cluster_nodes() -> redis::Cmd {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("NODES");
    cmd
}

/// The masters serving slots, as `CLUSTER NODES` lists them (those that failed
/// too, with `failed`): host (the announced hostname when there is one) and port.
pub(super) fn masters_in(nodes: &str, failed: bool) -> Vec<(String, u16)> {
    let mut masters: Vec<(String, u16)> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let serving = fields.len() > 8;
            let healthy = failed
                || !flags
                    .split(',')
                    .any(|f| f.starts_with("fail") || f == "noaddr");
            if !(flags.split(',').any(|f| f == "master") && serving && healthy) {
                return None;
            }
            // ip:port@cport[,hostname]
            let (address, hostname) = match fields.get(1)?.split_once(',') {
                Some((address, hostname)) => (address, Some(hostname)),
                None => (*fields.get(1)?, None),
            };
            let (ip_port, _) = address.split_once('@')?;
            let (ip, port) = ip_port.rsplit_once(':')?;
            let host = hostname.filter(|h| !h.is_empty()).unwrap_or(ip);
            Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
        })
        .collect();
    masters.sort();
    masters
}

/// What one invalidation push says: these keys changed, or (no keys: the
/// database was flushed) anything may have.
fn changes_in(data: &[Value], keys: &Keys) -> Vec<Change> {
    match data.first() {
        Some(Value::Array(names)) => names
            .iter()
            .filter_map(|name| match name {
                Value::BulkString(name) => keys.parse_token(&String::from_utf8_lossy(name)),
                Value::SimpleString(name) => keys.parse_token(name),
                _ => None,
            })
            .map(Change::Key)
            .collect(),
        _ => vec![Change::All],
    }
}

/// The live state behind a tracking feed.
struct Watch {
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    connections: Vec<MultiplexedConnection>,
    /// On a cluster: a connection to ask for the masters, and the ones tracked.
    cluster: Option<(Conn, Vec<(String, u16)>)>,
    keys: Keys,
    pending: VecDeque<Change>,
    ticker: tokio::time::Interval,
}

impl Watch {
    /// The next change; `None` once the feed can no longer be trusted.
    async fn next(&mut self) -> Option<Change> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Some(change);
            }
            tokio::select! {
                push = self.pushes.recv() => {
                    let push = push?;
                    match push.kind {
                        PushKind::Invalidate => self.pending.extend(changes_in(&push.data, &self.keys)),
                        PushKind::Disconnection => return None,
                        _ => {}
                    }
                }
                _ = self.ticker.tick() => {
                    if !self.still_sound().await {
                        return None;
                    }
                }
            }
        }
    }

    /// Every tracking connection answers, and a cluster's masters are the ones
    /// tracked.
    async fn still_sound(&mut self) -> bool {
        for connection in &mut self.connections {
            let ping = redis::cmd("PING");
            let answer =
                tokio::time::timeout(RESPONSE_TIMEOUT, ping.query_async::<Value>(connection));
            if !matches!(answer.await, Ok(Ok(_))) {
                return false;
            }
        }
        let Some((conn, tracked)) = &mut self.cluster else {
            return true;
        };
        let ask = cluster_nodes();
        match tokio::time::timeout(RESPONSE_TIMEOUT, ask.query_async::<String>(conn)).await {
            Ok(Ok(nodes)) => &masters_in(&nodes, false) == tracked,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_the_nodes_that_serve_slots() {
        let nodes = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,redis-4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002,redis-2 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 master,fail - 1426238316232 0 5 disconnected 4000
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:30006@31006 master - 0 1426238317741 6 connected
";
        assert_eq!(masters_in(nodes, true).len(), 4, "the failed master too");
        assert_eq!(
            masters_in(nodes, false),
            vec![
                ("127.0.0.1".to_owned(), 30001),
                ("127.0.0.1".to_owned(), 30003),
                ("redis-2".to_owned(), 30002),
            ]
        );
    }

    #[test]
    fn an_invalidation_names_keys_or_everything() {
        let keys = Keys::new("ns:");
        let data = vec![Value::Array(vec![
            Value::BulkString(b"ns:tokens:agent:User.Read".to_vec()),
            Value::BulkString(b"ns:tokens:schedule".to_vec()),
        ])];
        assert_eq!(changes_in(&data, &keys).len(), 1);
        assert_eq!(changes_in(&[Value::Nil], &keys), vec![Change::All]);
    }
}
