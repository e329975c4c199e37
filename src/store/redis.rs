//! The Redis store, in the exact layout of SPEC §4.

use super::{Keys, PutOutcome, RefreshStatus, SECRET_TTL_SECS, StoreError, TokenRecord};
use crate::callers::AuditRecord;
use crate::clock::unix_now;
use crate::config::split_urls;
use crate::config::{Config, ConfigError};
use crate::domain::TokenKey;
use crate::secret::Secret;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncCommands, Cmd, ConnectionInfo, IntoConnectionInfo, RedisFuture, RedisResult, Script,
    TlsCertificates, TlsMode, Value,
};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Writes a token with its TTL and bumps `refresh_count` from the value it
/// replaces, in one atomic step on the token's own key. Atomic so that two writers
/// racing cannot both read count N and both write N+1, and a slow writer whose
/// request began before the stored token's cannot overwrite it. Returns
/// `{written, count, changed}`: an identical token is not rewritten.
///
/// The JSON arrives without its closing brace; the script appends the count. Lua's
/// cjson would re-encode the whole document (escaping every `/` in the scope), and
/// other applications read this value directly.
const PUT_SCRIPT: &str = r#"
local count = 0
local current = redis.call('GET', KEYS[1])
if current then
  local ok, old = pcall(cjson.decode, current)
  if ok and type(old) == 'table' then
    local old_count = tonumber(old.refresh_count) or 0
    if old.token == ARGV[2] then
      return {1, old_count, 0}
    end
    if (tonumber(old.requested_at_ms) or 0) > tonumber(ARGV[3]) then
      return {0, old_count, 0}
    end
    count = old_count + 1
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ',"refresh_count":' .. count .. '}', 'EX', ARGV[4])
return {1, count, 1}
"#;

/// Extends a lease only for its owner.
const RENEW_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Releases a lease only for its owner: a slow owner whose lease expired and was
/// taken by another instance must not release the new holder's lease.
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

pub struct RedisStore {
    /// For the invalidation subscription, which needs a connection of its own:
    /// one server, or each seed node of a cluster in turn (a cluster forwards a
    /// `PUBLISH` to every node, so any one of them hears every change).
    subscribers: Vec<redis::Client>,
    conn: Conn,
    keys: Keys,
    put_script: Script,
    renew_script: Script,
    release_script: Script,
    round_trips: AtomicU64,
    subscriber_turn: AtomicUsize,
    /// Whether `REDIS_CA_CERT` was given, for the start-up message.
    custom_ca: bool,
}

/// One server through a [`ConnectionManager`], or a Redis Cluster. Both reconnect
/// by themselves; the cluster connection also follows slots as they move.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
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
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Entries kept in the audit stream.
const AUDIT_STREAM_LEN: u64 = 100_000;
/// How long one Redis command may take before the request it serves gives up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// MGET batch size for listings: large enough to be few round trips, small enough
/// not to stall Redis on one command.
const LIST_BATCH: usize = 500;

/// Where each server (or cluster seed) is, with login and TLS settings applied.
fn node_infos(config: &Config) -> Result<Vec<ConnectionInfo>, ConfigError> {
    let r = &config.redis;
    let infos = match &config.redis_url {
        Some(urls) => split_urls(urls.expose())
            .into_iter()
            .map(|url| {
                url.into_connection_info()
                    .map_err(|_| ConfigError("REDIS_URL: is not a valid Redis URL".into()))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => {
            let mut settings = redis::RedisConnectionInfo::default().set_db(r.db);
            if let Some(user) = &r.username {
                settings = settings.set_username(user);
            }
            if let Some(password) = &r.password {
                settings = settings.set_password(password.expose());
            }
            vec![
                redis::ConnectionAddr::Tcp(r.host.clone(), r.port)
                    .into_connection_info()
                    .map_err(|e| ConfigError(format!("REDIS_HOST: {e}")))?
                    .set_redis_settings(settings),
            ]
        }
    };
    Ok(infos
        .into_iter()
        .map(|info| match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) if r.tls => {
                let addr = redis::ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                };
                info.set_addr(addr)
            }
            _ => info,
        })
        .collect())
}

fn certificates(config: &Config) -> Option<TlsCertificates> {
    config.redis.ca_cert.clone().map(|pem| TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    })
}

impl RedisStore {
    /// Does no I/O: the connection is made on first use and remade in the
    /// background after it drops, so the process starts even while Redis is down.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let infos = node_infos(config)?;
        let invalid = |e: redis::RedisError| ConfigError(format!("REDIS_HOST: {e}"));
        let client = |info: ConnectionInfo| match certificates(config) {
            Some(certs) => redis::Client::build_with_tls(info, certs),
            None => redis::Client::open(info),
        };
        let subscribers = infos
            .iter()
            .cloned()
            .map(client)
            .collect::<RedisResult<Vec<_>>>()
            .map_err(invalid)?;
        if subscribers.is_empty() {
            return Err(ConfigError("REDIS_URL: names no server".into()));
        }
        let conn = if config.redis.cluster {
            // The crate's default retry waits start at 1.3 s and grow to minutes:
            // a request would sit out a node restart instead of failing fast,
            // and reconnecting after the whole cluster restarts took longer
            // than the callers wait. Short waits, a few retries, as for one server.
            let mut builder = ClusterClientBuilder::new(infos)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(3)
                .min_retry_wait(50)
                .max_retry_wait(500);
            if config.redis.tls {
                builder = builder.tls(TlsMode::Secure);
            }
            if let Some(certs) = certificates(config) {
                builder = builder.certs(certs);
            }
            let cluster = builder.build().map_err(invalid)?;
            Conn::Cluster(cluster.get_pending_async_connection_with_config(ClusterConfig::new()))
        } else {
            let single = &subscribers[0];
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            Conn::Single(
                ConnectionManager::new_lazy_with_config(single.clone(), manager_config)
                    .map_err(invalid)?,
            )
        };
        Ok(Self {
            subscribers,
            conn,
            keys: Keys::new(&config.namespace),
            put_script: Script::new(PUT_SCRIPT),
            renew_script: Script::new(RENEW_SCRIPT),
            release_script: Script::new(RELEASE_SCRIPT),
            round_trips: AtomicU64::new(0),
            subscriber_turn: AtomicUsize::new(0),
            custom_ca: config.redis.ca_cert.is_some(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Runs `op` and, when the connection had dropped, once more: the manager
    /// reconnects in the background but fails the first command after a drop.
    async fn run<T, F, Fut>(&self, op: F) -> RedisResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        match op(self.conn.clone()).await {
            Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                self.round_trips.fetch_add(1, Ordering::Relaxed);
                op(self.conn.clone()).await
            }
            other => other,
        }
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

    /// Removes `members` (full token keys) from the schedule and, when `inactive`,
    /// from every other index.
    fn forget_members(&self, members: &[String], inactive: bool) -> Vec<Cmd> {
        let mut indexes = vec![(redis::cmd("ZREM"), self.keys.schedule())];
        if inactive {
            indexes.push((redis::cmd("SREM"), self.keys.active()));
            indexes.push((redis::cmd("ZREM"), self.keys.reads()));
            indexes.push((redis::cmd("ZREM"), self.keys.expiry()));
        }
        indexes
            .into_iter()
            .map(|(mut cmd, index)| {
                cmd.arg(index).arg(members);
                cmd
            })
            .collect()
    }

    /// The same for commands whose replies are not needed.
    async fn each_ignored(&self, cmds: &[Cmd]) -> RedisResult<()> {
        self.each(cmds).await.map(drop)
    }

    pub async fn get(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        let name = self.keys.token(key);
        let raw: Option<String> = self
            .run(|mut c| {
                let name = name.clone();
                async move { c.get(name).await }
            })
            .await?;
        raw.map(|json| parse_record(&name, &json)).transpose()
    }

    /// One MGET: the values of `names`, in order, `None` where a key is missing.
    async fn mget(&self, names: &[String]) -> RedisResult<Vec<Option<String>>> {
        self.run(|mut c| async move { redis::cmd("MGET").arg(names).query_async(&mut c).await })
            .await
    }

    pub async fn get_many(
        &self,
        keys: &[TokenKey],
    ) -> Result<Vec<Option<TokenRecord>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|k| self.keys.token(k)).collect();
        let values = self.mget(&names).await?;
        names
            .iter()
            .zip(values)
            .map(|(name, value)| value.map(|json| parse_record(name, &json)).transpose())
            .collect()
    }

    pub async fn put(
        &self,
        key: &TokenKey,
        record: &TokenRecord,
        due_at: i64,
    ) -> Result<PutOutcome, StoreError> {
        let ttl = record.expires_on - unix_now();
        if ttl <= 0 {
            return Ok(PutOutcome::Superseded);
        }
        let name = self.keys.token(key);
        let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt {
            key: name.clone(),
            reason: e.to_string(),
        })?;
        // serde_json always ends an object with '}'.
        let open = &json[..json.len() - 1];
        // The token first, then (only when it was written) its index entries and
        // the change event. Not one atomic step: on a cluster the token, the
        // indexes and the status live in different slots, and no script or
        // transaction may span slots. A crash between the two steps leaves a
        // stored token the indexes miss until its next write (reads still find
        // it, and refresh it when it runs short); the reverse order could index a
        // token that a refused stale writer never stored.
        let (written, count, changed): (i64, u64, i64) = self
            .run(|mut c| {
                let mut invocation = self.put_script.key(&name);
                invocation
                    .arg(open)
                    .arg(record.token.expose())
                    .arg(record.requested_at_ms)
                    .arg(ttl);
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        if written != 1 {
            return Ok(PutOutcome::Superseded);
        }
        if changed == 1 {
            let mut indexes = vec![
                redis::cmd("SADD"),
                redis::cmd("ZADD"),
                redis::cmd("DEL"),
                redis::cmd("ZADD"),
            ];
            indexes[0].arg(self.keys.active()).arg(&name);
            indexes[1].arg(self.keys.schedule()).arg(due_at).arg(&name);
            indexes[2].arg(self.keys.status(key));
            indexes[3]
                .arg(self.keys.expiry())
                .arg(record.expires_on)
                .arg(&name);
            self.each_ignored(&indexes).await?;
            self.publish(&name).await?;
        }
        Ok(PutOutcome::Written {
            refresh_count: count,
        })
    }

    /// Tells every instance that the token `name` changed.
    async fn publish(&self, name: &str) -> RedisResult<()> {
        let events = self.keys.events();
        self.run(|mut c| {
            let events = events.clone();
            async move { c.publish::<_, _, ()>(events, name).await }
        })
        .await
    }

    pub async fn delete(&self, key: &TokenKey) -> Result<bool, StoreError> {
        let token = self.keys.token(key);
        // Index entries first, the token after them (separate steps, as in `put`):
        // a refresh racing this delete can then leave an index entry without a
        // token, which the sweep prunes, never a token without its index entries.
        self.each_ignored(&self.forget_members(std::slice::from_ref(&token), true))
            .await?;
        let removed: u64 = self
            .run(|mut c| {
                let token = token.clone();
                async move { c.del(token).await }
            })
            .await?;
        let mut rest = vec![redis::cmd("DEL"), redis::cmd("DEL")];
        rest[0].arg(self.keys.secret(key));
        rest[1].arg(self.keys.status(key));
        self.each_ignored(&rest).await?;
        self.publish(&token).await?;
        Ok(removed > 0)
    }

    pub async fn list(&self) -> Result<Vec<(TokenKey, TokenRecord)>, StoreError> {
        let active = self.keys.active();
        let mut members: Vec<String> = self
            .run(|mut c| {
                let active = active.clone();
                async move { c.smembers(active).await }
            })
            .await?;
        members.sort();
        let mut listing = Vec::new();
        for batch in members.chunks(LIST_BATCH) {
            let values = self.mget(batch).await?;
            for (name, value) in batch.iter().zip(values) {
                let Some(key) = self.keys.parse_token(name) else {
                    continue;
                };
                // A key that expired since SMEMBERS is simply not listed; the sweep
                // prunes it from the active set.
                match value.map(|json| parse_record(name, &json)) {
                    None => {}
                    Some(Ok(record)) => listing.push((key, record)),
                    Some(Err(e)) => tracing::warn!(error = %e, "skipping unreadable token"),
                }
            }
        }
        Ok(listing)
    }

    pub async fn due(&self, now: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let schedule = self.keys.schedule();
        Ok(self
            .run(|mut c| {
                let schedule = schedule.clone();
                async move {
                    c.zrangebyscore_limit(schedule, "-inf", now, 0, limit as isize)
                        .await
                }
            })
            .await?)
    }

    pub async fn reschedule(&self, key: &TokenKey, at: i64) -> Result<(), StoreError> {
        let (schedule, token) = (self.keys.schedule(), self.keys.token(key));
        self.run(|mut c| {
            let (schedule, token) = (schedule.clone(), token.clone());
            async move { c.zadd::<_, _, _, ()>(schedule, token, at).await }
        })
        .await?;
        Ok(())
    }

    pub async fn unschedule(&self, full_keys: &[String], inactive: bool) -> Result<(), StoreError> {
        if full_keys.is_empty() {
            return Ok(());
        }
        self.each_ignored(&self.forget_members(full_keys, inactive))
            .await?;
        Ok(())
    }

    pub async fn prune_step(&self, count: usize) -> Result<usize, StoreError> {
        let (cursor_key, active) = (self.keys.prune_cursor(), self.keys.active());
        let cursor: u64 = self
            .run(|mut c| {
                let cursor_key = cursor_key.clone();
                async move { c.get::<_, Option<u64>>(cursor_key).await }
            })
            .await?
            .unwrap_or(0);
        let (next, members): (u64, Vec<String>) = self
            .run(|mut c| {
                let active = active.clone();
                async move {
                    redis::cmd("SSCAN")
                        .arg(active)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(count)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        let checks: Vec<Cmd> = members
            .iter()
            .map(|member| {
                let mut exists = redis::cmd("EXISTS");
                exists.arg(member);
                exists
            })
            .collect();
        let exists = self.each(&checks).await?;
        let gone: Vec<String> = members
            .into_iter()
            .zip(exists)
            .filter(|(_, exists)| matches!(exists, Value::Int(0)))
            .map(|(member, _)| member)
            .collect();
        let mut cmds = vec![redis::cmd("SET"), redis::cmd("ZREMRANGEBYSCORE")];
        cmds[0].arg(&cursor_key).arg(next);
        cmds[1].arg(self.keys.expiry()).arg("-inf").arg(unix_now());
        if !gone.is_empty() {
            cmds.extend(self.forget_members(&gone, true));
        }
        self.each_ignored(&cmds).await?;
        Ok(gone.len())
    }

    pub async fn try_lease(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let lease = self.keys.lease(key);
        let taken: Option<String> = self
            .run(|mut c| {
                let lease = lease.clone();
                async move {
                    redis::cmd("SET")
                        .arg(lease)
                        .arg(owner)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl.as_millis() as u64)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(taken.is_some())
    }

    pub async fn renew_lease(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let lease = self.keys.lease(key);
        let renewed: i64 = self
            .run(|mut c| {
                let mut invocation = self.renew_script.key(&lease);
                invocation.arg(owner).arg(ttl.as_millis() as u64);
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        Ok(renewed == 1)
    }

    pub async fn release_lease(&self, key: &TokenKey, owner: &str) -> Result<(), StoreError> {
        let lease = self.keys.lease(key);
        self.run(|mut c| {
            let mut invocation = self.release_script.key(&lease);
            invocation.arg(owner);
            async move { invocation.invoke_async::<i64>(&mut c).await }
        })
        .await?;
        Ok(())
    }

    pub async fn lease_held(&self, key: &TokenKey) -> Result<bool, StoreError> {
        let lease = self.keys.lease(key);
        Ok(self
            .run(|mut c| {
                let lease = lease.clone();
                async move { c.exists(lease).await }
            })
            .await?)
    }

    pub async fn get_status(&self, key: &TokenKey) -> Result<Option<RefreshStatus>, StoreError> {
        Ok(self
            .statuses(std::slice::from_ref(key))
            .await?
            .pop()
            .flatten())
    }

    pub async fn statuses(
        &self,
        keys: &[TokenKey],
    ) -> Result<Vec<Option<RefreshStatus>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|k| self.keys.status(k)).collect();
        let values = self.mget(&names).await?;
        // A status that does not parse is treated as none: it only delays retries.
        Ok(values
            .into_iter()
            .map(|v| v.and_then(|json| serde_json::from_str(&json).ok()))
            .collect())
    }

    pub async fn put_status(
        &self,
        key: &TokenKey,
        status: &RefreshStatus,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(status).unwrap_or_default();
        // Kept a day past the retry so operators can still see what went wrong.
        let ttl = (status.next_attempt - unix_now()).max(0) as u64 + 86_400;
        let mut cmds = vec![redis::cmd("SET"), redis::cmd("ZADD")];
        cmds[0]
            .arg(self.keys.status(key))
            .arg(&json)
            .arg("EX")
            .arg(ttl);
        cmds[1]
            .arg(self.keys.schedule())
            .arg(status.next_attempt)
            .arg(self.keys.token(key));
        self.each_ignored(&cmds).await?;
        Ok(())
    }

    pub async fn mark_read(&self, key: &TokenKey, now: i64) -> Result<(), StoreError> {
        let (reads, token) = (self.keys.reads(), self.keys.token(key));
        self.run(|mut c| {
            let (reads, token) = (reads.clone(), token.clone());
            async move { c.zadd::<_, _, _, ()>(reads, token, now).await }
        })
        .await?;
        Ok(())
    }

    pub async fn last_reads(&self, keys: &[TokenKey], now: i64) -> Result<Vec<i64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|k| self.keys.token(k)).collect();
        let reads = self.keys.reads();
        let (scores,): (Vec<Option<f64>>,) = self
            .run(|mut c| {
                let mut pipe = redis::pipe();
                let mut add = redis::cmd("ZADD");
                add.arg(&reads).arg("NX");
                for name in &names {
                    add.arg(now).arg(name);
                }
                pipe.add_command(add).ignore();
                pipe.cmd("ZMSCORE").arg(&reads).arg(&names);
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(scores
            .into_iter()
            .map(|s| s.map_or(now, |s| s as i64))
            .collect())
    }

    pub async fn active_count(&self) -> Result<u64, StoreError> {
        let active = self.keys.active();
        Ok(self
            .run(|mut c| {
                let active = active.clone();
                async move { c.scard(active).await }
            })
            .await?)
    }

    pub async fn get_secret(&self, key: &TokenKey) -> Result<Option<Secret>, StoreError> {
        let name = self.keys.secret(key);
        let raw: Option<String> = self
            .run(|mut c| {
                let name = name.clone();
                async move { c.get(name).await }
            })
            .await?;
        Ok(raw.map(Secret::new))
    }

    pub async fn put_secret(&self, key: &TokenKey, secret: &Secret) -> Result<(), StoreError> {
        let name = self.keys.secret(key);
        self.run(|mut c| {
            let name = name.clone();
            async move {
                c.set_ex::<_, _, ()>(name, secret.expose(), SECRET_TTL_SECS)
                    .await
            }
        })
        .await?;
        Ok(())
    }

    pub async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let mut fields = vec![
            ("caller", record.caller.clone()),
            ("action", record.action.to_owned()),
            ("scope", record.scope.clone()),
            ("outcome", format!("{:?}", record.outcome)),
            ("time", unix_now().to_string()),
        ];
        fields.extend(record.user.clone().map(|u| ("user", u)));
        fields.extend(record.token_fp.clone().map(|f| ("token_fp", f)));
        fields.extend(record.request_id.clone().map(|r| ("request_id", r)));
        let stream = self.keys.audit();
        self.run(|mut c| {
            let mut cmd = redis::cmd("XADD");
            // Capped (approximately, which is cheap) so the stream cannot grow forever.
            cmd.arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(AUDIT_STREAM_LEN)
                .arg("*");
            for (name, value) in &fields {
                cmd.arg(*name).arg(value);
            }
            async move { cmd.query_async::<String>(&mut c).await }
        })
        .await?;
        Ok(())
    }

    pub async fn count_refresh(
        &self,
        caller: &str,
        key: &TokenKey,
        window_secs: u64,
    ) -> Result<(u64, u64), StoreError> {
        let quota = self.keys.refresh_quota(caller, key);
        let (count, ttl): (u64, i64) = self
            .run(|mut c| {
                let mut pipe = redis::pipe();
                pipe.incr(&quota, 1)
                    .cmd("EXPIRE")
                    .arg(&quota)
                    .arg(window_secs)
                    .arg("NX")
                    .ignore()
                    .ttl(&quota);
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok((count, ttl.max(1) as u64))
    }

    pub async fn delete_secret(&self, key: &TokenKey) -> Result<(), StoreError> {
        let name = self.keys.secret(key);
        self.run(|mut c| {
            let name = name.clone();
            async move { c.del::<_, ()>(name).await }
        })
        .await?;
        Ok(())
    }

    /// A connection subscribed to the change-event channel; each call tries the
    /// next node, so a dead cluster seed is not retried forever.
    pub async fn subscribe_events(&self) -> Result<redis::aio::PubSub, StoreError> {
        let turn = self.subscriber_turn.fetch_add(1, Ordering::Relaxed);
        let client = &self.subscribers[turn % self.subscribers.len()];
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(self.keys.events()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Redis(redis::RedisError::from(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "subscribing to the change events timed out",
                ),
            ))),
        }
    }

    /// `expires_on` of the token that expires first. Read-only (health calls it):
    /// entries of tokens that already expired are skipped here and removed by the
    /// sweep's prune step.
    pub async fn soonest_expiry(&self) -> Result<Option<i64>, StoreError> {
        let expiry = self.keys.expiry();
        let after = format!("({}", unix_now());
        let first: Vec<(String, f64)> = self
            .run(|mut c| {
                let (expiry, after) = (expiry.clone(), after.clone());
                async move {
                    c.zrangebyscore_limit_withscores(expiry, after, "+inf", 0, 1)
                        .await
                }
            })
            .await?;
        Ok(first.first().map(|(_, at)| *at as i64))
    }

    /// A first connection, at start: `Err` with one line when the configuration
    /// cannot work (the server's certificate is not trusted, the login is
    /// refused); an unreachable server is not an error here (it may come later).
    pub async fn check_at_start(&self) -> Result<(), String> {
        let Err(error) = self.ping().await else {
            return Ok(());
        };
        let StoreError::Redis(error) = &error else {
            return Ok(());
        };
        if error.kind() == redis::ErrorKind::AuthenticationFailed {
            return Err(
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
                let trusted = match self.custom_ca {
                    true => "the CA in REDIS_CA_CERT",
                    false => "the system's trusted roots (set REDIS_CA_CERT to its CA)",
                };
                return Err(format!(
                    "REDIS_CA_CERT: the Redis server's certificate is not trusted by {trusted}: {why:?}"
                ));
            }
            source = e.source();
        }
        tracing::warn!(%error, "Redis is not reachable yet; requests will retry it");
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await?;
        Ok(())
    }
}

fn parse_record(key: &str, json: &str) -> Result<TokenRecord, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
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
