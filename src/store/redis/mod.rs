//! The Redis store, in the exact layout of SPEC §4.
//!
//! On a Redis Cluster the layout's key names land in different hash slots (they
//! are the SPEC's names, without hash tags, because other applications read
//! them), so no atomic step spans two keys: each script touches one key, and
//! index entries follow the token as separate commands (see `tokens.rs`).

mod circuit;
mod connection;
mod coordination;
mod events;
mod schedule;
mod scripts;
mod tokens;
mod tracking;

use self::circuit::{Circuit, Reach, is_unreachable};
use self::connection::Conn;
use self::scripts::Scripts;
use super::keys::Keys;
use super::{Sealer, Store, StoreError, TokenRecord};
use crate::clock::Clock;
use crate::config::{ConfigError, RedisConfig, StoreKind};
use crate::domain::TokenKey;
use async_trait::async_trait;
use redis::{Cmd, RedisResult, Value};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub struct RedisStore {
    conn: Conn,
    /// One client per node, for the change-event subscription: one server, or each
    /// seed node of a cluster in turn (a cluster forwards a `PUBLISH` to every
    /// node, so any one of them hears every change).
    subscribers: Vec<redis::Client>,
    subscriber_turn: AtomicUsize,
    keys: Keys,
    scripts: Scripts,
    /// Refresh tokens at rest: sealed with `TOKEN_ENCRYPTION_KEY` when set.
    sealer: Sealer,
    clock: Clock,
    round_trips: AtomicU64,
    /// The servers (or cluster seeds) as configured: login and TLS for every
    /// connection made later, to cluster masters too.
    nodes: Vec<redis::ConnectionInfo>,
    /// `REDIS_CA_CERT`, trusted by those connections.
    ca_cert: Option<Vec<u8>>,
    /// Whether a server refused tracking already (warned once).
    tracking_refused: std::sync::atomic::AtomicBool,
    /// Open while Redis cannot be reached: requests fail at once.
    circuit: Circuit,
    /// What the circuit's probe uses.
    reach: Reach,
}

impl RedisStore {
    /// Does no I/O: the connection is made on first use and remade in the
    /// background after it drops, so the process starts even while Redis is down.
    pub fn new(
        config: &RedisConfig,
        namespace: &str,
        sealer: Sealer,
        clock: Clock,
    ) -> Result<Self, ConfigError> {
        let (conn, subscribers) = connection::connect(config)?;
        let reach = Reach {
            conn: conn.clone(),
            template: config.nodes[0].clone(),
            ca_cert: config.ca_cert.clone(),
            cluster: config.cluster,
        };
        Ok(Self {
            circuit: Circuit::default(),
            reach,
            conn,
            subscribers,
            subscriber_turn: AtomicUsize::new(0),
            keys: Keys::new(namespace),
            scripts: Scripts::new(),
            sealer,
            clock,
            round_trips: AtomicU64::new(0),
            nodes: config.nodes.clone(),
            ca_cert: config.ca_cert.clone(),
            tracking_refused: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Runs `op` and, when the connection had dropped, once more: the manager
    /// reconnects in the background but fails the first command after a drop.
    async fn run<T, F, Fut>(&self, op: F) -> RedisResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if self.circuit.is_open() {
            return Err(Circuit::refusal());
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let result = match op(self.conn.clone()).await {
            // A timeout is not retried: it would only wait as long again.
            Err(e) if e.is_connection_dropped() && !e.is_timeout() => {
                self.round_trips.fetch_add(1, Ordering::Relaxed);
                op(self.conn.clone()).await
            }
            other => other,
        };
        if let Err(error) = &result
            && is_unreachable(error)
        {
            self.circuit.trip(error, &self.reach);
        }
        result
    }

    fn client_for(&self, info: redis::ConnectionInfo) -> RedisResult<redis::Client> {
        connection::client(info, self.ca_cert.as_deref())
    }

    /// One command, its reply.
    async fn query<T: redis::FromRedisValue>(&self, cmd: Cmd) -> RedisResult<T> {
        let cmd = &cmd;
        self.run(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Commands that need not be atomic together, their replies in order. One
    /// pipeline on a single server; on a cluster each command on its own (all at
    /// once), because a cluster pipeline must stay within one slot and these keys
    /// are spread over many.
    async fn each(&self, cmds: &[Cmd]) -> RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        self.run(|mut c| async move {
            match &c {
                Conn::Single(_) => {
                    let mut pipe = redis::pipe();
                    for cmd in cmds {
                        pipe.add_command(cmd.clone());
                    }
                    pipe.query_async(&mut c).await
                }
                Conn::Cluster(_) => {
                    let sends = cmds.iter().map(|cmd| {
                        let mut c = c.clone();
                        async move { cmd.query_async::<Value>(&mut c).await }
                    });
                    futures::future::try_join_all(sends).await
                }
            }
        })
        .await
    }

    /// The same for commands whose replies are not needed.
    async fn each_ignored(&self, cmds: &[Cmd]) -> RedisResult<()> {
        self.each(cmds).await.map(drop)
    }

    /// One MGET: the values of `names`, in order, `None` where a key is missing.
    async fn mget(&self, names: &[String]) -> RedisResult<Vec<Option<String>>> {
        let mut mget = redis::cmd("MGET");
        mget.arg(names);
        self.query(mget).await
    }
}

fn parse_record(key: &str, json: &[u8]) -> Result<TokenRecord, StoreError> {
    serde_json::from_slice(json).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        // Position only: serde's message can quote the offending value, which may be a token.
        reason: format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ),
    })
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Redis
    }

    fn token_name(&self, key: &TokenKey) -> String {
        self.keys.token(key)
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn reachable(&self) -> bool {
        !self.circuit.is_open()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>(redis::cmd("PING")).await?;
        Ok(())
    }

    async fn check_at_start(&self) -> Result<(), String> {
        let Err(error) = self.ping().await else {
            return Ok(());
        };
        if let Some(why) = connection::diagnose(&error, self.ca_cert.is_some()) {
            return Err(why);
        }
        // A cluster client reports a refused login as "no connections": one
        // plain connection to the seed tells why.
        if self.reach.cluster {
            let seed = connection::client(self.reach.template.clone(), self.ca_cert.as_deref());
            let answer = async {
                let mut conn = seed?.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            if let Ok(Err(seed_error)) =
                tokio::time::timeout(std::time::Duration::from_secs(2), answer).await
                && let Some(why) =
                    connection::diagnose(&StoreError::Redis(seed_error), self.ca_cert.is_some())
            {
                return Err(why);
            }
        }
        tracing::warn!(%error, "Redis is not reachable yet; requests will retry it");
        Ok(())
    }
}
