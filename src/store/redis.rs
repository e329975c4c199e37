//! The Redis store, in the exact layout of SPEC §4.

use super::{Keys, PutOutcome, RefreshStatus, SECRET_TTL_SECS, StoreError, TokenRecord};
use crate::callers::AuditRecord;
use crate::clock::unix_now;
use crate::config::{Config, ConfigError};
use crate::domain::TokenKey;
use crate::secret::Secret;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo, RedisResult, Script};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Writes a token, its TTL and its active-set entry in one atomic step, and bumps
/// `refresh_count` from the value it replaces. Atomic so that two writers racing
/// cannot both read count N and both write N+1, and a slow writer whose request
/// began before the stored token's cannot overwrite it.
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
      return {1, old_count}
    end
    if (tonumber(old.requested_at_ms) or 0) > tonumber(ARGV[3]) then
      return {0, old_count}
    end
    count = old_count + 1
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ',"refresh_count":' .. count .. '}', 'EX', ARGV[4])
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('ZADD', KEYS[3], ARGV[5], KEYS[1])
redis.call('DEL', KEYS[4])
redis.call('ZADD', KEYS[5], ARGV[7], KEYS[1])
redis.call('PUBLISH', ARGV[6], KEYS[1])
return {1, count}
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
    /// For the invalidation subscription, which needs a connection of its own.
    client: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
    put_script: Script,
    renew_script: Script,
    release_script: Script,
    round_trips: AtomicU64,
}

/// Entries kept in the audit stream.
const AUDIT_STREAM_LEN: u64 = 100_000;
/// How long one Redis command may take before the request it serves gives up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// MGET batch size for listings: large enough to be few round trips, small enough
/// not to stall Redis on one command.
const LIST_BATCH: usize = 500;

impl RedisStore {
    /// Does no I/O: the connection is made on first use and remade in the
    /// background after it drops, so the process starts even while Redis is down.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let info = match &config.redis_url {
            Some(url) => url
                .expose()
                .into_connection_info()
                .map_err(|_| ConfigError("REDIS_URL: is not a valid Redis URL".into()))?,
            None => {
                let r = &config.redis;
                let mut settings = redis::RedisConnectionInfo::default().set_db(r.db);
                if let Some(user) = &r.username {
                    settings = settings.set_username(user);
                }
                if let Some(password) = &r.password {
                    settings = settings.set_password(password.expose());
                }
                redis::ConnectionAddr::Tcp(r.host.clone(), r.port)
                    .into_connection_info()
                    .map_err(|e| ConfigError(format!("REDIS_HOST: {e}")))?
                    .set_redis_settings(settings)
            }
        };
        let client =
            redis::Client::open(info).map_err(|e| ConfigError(format!("REDIS_HOST: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| ConfigError(format!("REDIS_HOST: {e}")))?;
        Ok(Self {
            client,
            conn,
            keys: Keys::new(&config.namespace),
            put_script: Script::new(PUT_SCRIPT),
            renew_script: Script::new(RENEW_SCRIPT),
            release_script: Script::new(RELEASE_SCRIPT),
            round_trips: AtomicU64::new(0),
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
        F: Fn(ConnectionManager) -> Fut,
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
        let events = self.keys.events();
        let (active, schedule, status) = (
            self.keys.active(),
            self.keys.schedule(),
            self.keys.status(key),
        );
        let (written, count): (i64, u64) = self
            .run(|mut c| {
                let mut invocation = self.put_script.key(&name);
                invocation
                    .key(&active)
                    .key(&schedule)
                    .key(&status)
                    .key(self.keys.expiry())
                    .arg(open)
                    .arg(record.token.expose())
                    .arg(record.requested_at_ms)
                    .arg(ttl)
                    .arg(due_at)
                    .arg(&events)
                    .arg(record.expires_on);
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        Ok(if written == 1 {
            PutOutcome::Written {
                refresh_count: count,
            }
        } else {
            PutOutcome::Superseded
        })
    }

    pub async fn delete(&self, key: &TokenKey) -> Result<bool, StoreError> {
        let token = self.keys.token(key);
        let (removed,): (u64,) = self
            .run(|mut c| {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .del(&token)
                    .del(self.keys.secret(key))
                    .ignore()
                    .del(self.keys.status(key))
                    .ignore()
                    .srem(self.keys.active(), &token)
                    .ignore()
                    .zrem(self.keys.schedule(), &token)
                    .ignore()
                    .zrem(self.keys.reads(), &token)
                    .ignore()
                    .zrem(self.keys.expiry(), &token)
                    .ignore()
                    .publish(self.keys.events(), &token)
                    .ignore();
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
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
        self.run(|mut c| {
            let mut pipe = redis::pipe();
            pipe.zrem(self.keys.schedule(), full_keys).ignore();
            if inactive {
                pipe.srem(self.keys.active(), full_keys)
                    .ignore()
                    .zrem(self.keys.reads(), full_keys)
                    .ignore()
                    .zrem(self.keys.expiry(), full_keys)
                    .ignore();
            }
            async move { pipe.query_async::<()>(&mut c).await }
        })
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
        let mut gone = Vec::new();
        if !members.is_empty() {
            let exists: Vec<bool> = self
                .run(|mut c| {
                    let mut pipe = redis::pipe();
                    for member in &members {
                        pipe.exists(member);
                    }
                    async move { pipe.query_async(&mut c).await }
                })
                .await?;
            gone = members
                .into_iter()
                .zip(exists)
                .filter_map(|(member, exists)| (!exists).then_some(member))
                .collect();
        }
        let now = unix_now();
        self.run(|mut c| {
            let mut pipe = redis::pipe();
            pipe.set(&cursor_key, next)
                .ignore()
                .zrembyscore(self.keys.expiry(), "-inf", now)
                .ignore();
            if !gone.is_empty() {
                pipe.srem(&active, &gone)
                    .ignore()
                    .zrem(self.keys.schedule(), &gone)
                    .ignore()
                    .zrem(self.keys.reads(), &gone)
                    .ignore()
                    .zrem(self.keys.expiry(), &gone)
                    .ignore();
            }
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await?;
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
        self.run(|mut c| {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .set_ex(self.keys.status(key), &json, ttl)
                .ignore()
                .zadd(
                    self.keys.schedule(),
                    self.keys.token(key),
                    status.next_attempt,
                )
                .ignore();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await?;
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

    /// A connection subscribed to the change-event channel.
    pub async fn subscribe_events(&self) -> Result<redis::aio::PubSub, StoreError> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
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
