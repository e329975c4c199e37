//! The Redis store, in the exact layout of SPEC §4.

use super::{Keys, Listing, PutOutcome, SECRET_TTL_SECS, StoreError, TokenRecord};
use crate::clock::unix_now;
use crate::config::{Config, ConfigError};
use crate::domain::TokenKey;
use crate::secret::Secret;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo, RedisResult, Script};
use std::future::Future;
use std::time::Duration;

/// Writes a token, its TTL and its active-set entry in one atomic step, and bumps
/// `refresh_count` from the value it replaces. Atomic so that two writers racing
/// cannot both read count N and both write N+1, and a slow writer holding an older
/// token cannot overwrite a newer one.
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
    if (tonumber(old.expires_on) or 0) > tonumber(ARGV[3]) then
      return {0, old_count}
    end
    count = old_count + 1
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ',"refresh_count":' .. count .. '}', 'EX', ARGV[4])
redis.call('SADD', KEYS[2], KEYS[1])
return {1, count}
"#;

pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
    put_script: Script,
}

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
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| ConfigError(format!("REDIS_HOST: {e}")))?;
        Ok(Self {
            conn,
            keys: Keys::new(&config.namespace),
            put_script: Script::new(PUT_SCRIPT),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs `op` and, when the connection had dropped, once more: the manager
    /// reconnects in the background but fails the first command after a drop.
    async fn run<T, F, Fut>(&self, op: F) -> RedisResult<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match op(self.conn.clone()).await {
            Err(e) if e.is_connection_dropped() || e.is_io_error() => op(self.conn.clone()).await,
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

    pub async fn put(
        &self,
        key: &TokenKey,
        record: &TokenRecord,
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
        let active = self.keys.active();
        let (written, count): (i64, u64) = self
            .run(|mut c| {
                let mut invocation = self.put_script.key(&name);
                invocation
                    .key(&active)
                    .arg(open)
                    .arg(record.token.expose())
                    .arg(record.expires_on)
                    .arg(ttl);
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
        let (token, secret, active) = (
            self.keys.token(key),
            self.keys.secret(key),
            self.keys.active(),
        );
        let (removed, _, _): (u64, u64, u64) = self
            .run(|mut c| {
                let mut pipe = redis::pipe();
                pipe.atomic().del(&token).del(&secret).srem(&active, &token);
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(removed > 0)
    }

    pub async fn list(&self) -> Result<Listing, StoreError> {
        let active = self.keys.active();
        let mut members: Vec<String> = self
            .run(|mut c| {
                let active = active.clone();
                async move { c.smembers(active).await }
            })
            .await?;
        members.sort();
        let mut listing = Listing::default();
        for batch in members.chunks(LIST_BATCH) {
            let values: Vec<Option<String>> = self
                .run(|mut c| async move { redis::cmd("MGET").arg(batch).query_async(&mut c).await })
                .await?;
            for (name, value) in batch.iter().zip(values) {
                let Some(key) = self.keys.parse_token(name) else {
                    continue;
                };
                match value.map(|json| parse_record(name, &json)) {
                    None => listing.dangling.push(name.clone()),
                    Some(Ok(record)) => listing.tokens.push((key, record)),
                    Some(Err(e)) => tracing::warn!(error = %e, "skipping unreadable token"),
                }
            }
        }
        Ok(listing)
    }

    pub async fn prune(&self, dangling: &[String]) -> Result<usize, StoreError> {
        if dangling.is_empty() {
            return Ok(0);
        }
        let active = self.keys.active();
        let removed: usize = self
            .run(|mut c| {
                let active = active.clone();
                async move { c.srem(active, dangling).await }
            })
            .await?;
        Ok(removed)
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
