//! Tokens under their SPEC §4 names, and refresh tokens under `secret:` names.

use super::scripts::RELEASE;
use super::{RedisStore, parse_record};
use crate::domain::TokenKey;
use crate::secret::Secret;
use crate::store::{
    Forget, Grant, PutOutcome, RefreshStatus, SECRET_TTL_SECS, StoreError, StoredToken,
    TokenRecord, Tokens, Write,
};
use async_trait::async_trait;
use redis::{Cmd, Value};

/// MGET batch size for listings: large enough to be few round trips, small enough
/// not to stall Redis on one command.
const LIST_BATCH: usize = 500;

#[async_trait]
impl Tokens for RedisStore {
    async fn get(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        let name = self.keys.token(key);
        let mut get = redis::cmd("GET");
        get.arg(&name);
        // Bytes, not a String: the JSON parse checks the text once.
        let raw: Option<Vec<u8>> = self.query(get).await?;
        raw.map(|json| parse_record(&name, &json)).transpose()
    }

    async fn get_many(&self, keys: &[TokenKey]) -> Result<Vec<Option<TokenRecord>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|k| self.keys.token(k)).collect();
        let values = self.mget(&names).await?;
        names
            .iter()
            .zip(values)
            .map(|(name, value)| {
                value
                    .map(|json| parse_record(name, json.as_bytes()))
                    .transpose()
            })
            .collect()
    }

    async fn state(
        &self,
        key: &TokenKey,
    ) -> Result<(Option<TokenRecord>, Option<RefreshStatus>), StoreError> {
        let name = self.keys.token(key);
        let mut reads = [redis::cmd("GET"), redis::cmd("GET")];
        reads[0].arg(&name);
        reads[1].arg(self.keys.status(key));
        let replies = self.each(&reads).await?;
        let record = self.record_in(&name, replies.first())?;
        // A status that does not parse is treated as none: it only delays retries.
        let status = match replies.get(1) {
            Some(Value::BulkString(json)) => serde_json::from_slice(json).ok(),
            _ => None,
        };
        Ok((record, status))
    }

    async fn put(&self, key: &TokenKey, write: &Write<'_>) -> Result<PutOutcome, StoreError> {
        let record = write.record;
        let ttl = record.expires_on - self.clock.now();
        let name = self.keys.token(key);
        let (written, count, changed) = match ttl > 0 {
            false => (0, 0, 0),
            true => {
                self.write_token(&name, record, ttl, write.grant.map(|g| (key, g)))
                    .await?
            }
        };
        // Then (only when the token was written) its index entries and the change
        // event, and the lease's release, in one more round trip. Not one atomic
        // step with the token: on a cluster the token, the indexes and the status
        // live in different slots, and no script or transaction may span slots. A
        // crash between the two steps leaves a stored token the indexes miss until
        // the active-set scan adopts it; the reverse order could index a token
        // that a refused stale writer never stored.
        let mut after = Vec::new();
        if changed == 1 {
            let mut indexes = [
                redis::cmd("SADD"),
                redis::cmd("ZADD"),
                redis::cmd("DEL"),
                redis::cmd("ZADD"),
                redis::cmd("PUBLISH"),
            ];
            indexes[0].arg(self.keys.active()).arg(&name);
            indexes[1]
                .arg(self.keys.schedule())
                .arg(write.due_at)
                .arg(&name);
            indexes[2].arg(self.keys.status(key));
            indexes[3]
                .arg(self.keys.expiry())
                .arg(record.expires_on)
                .arg(&name);
            indexes[4].arg(self.keys.events()).arg(&name);
            after.extend(indexes);
        }
        if let Some(owner) = write.release {
            after.push(self.release_cmd(key, owner));
        }
        self.each_ignored(&after).await?;
        Ok(match written {
            1 => PutOutcome::Written {
                refresh_count: count,
            },
            _ => PutOutcome::Superseded,
        })
    }

    async fn delete(&self, key: &TokenKey) -> Result<bool, StoreError> {
        // Index entries first, the token after them (separate steps, as in `put`):
        // a refresh racing this delete can then leave an index entry without a
        // token, which the sweep prunes, never a token without its index entries.
        let name = self.keys.token(key);
        self.each_ignored(&self.forget_members(std::slice::from_ref(&name), Forget::Everywhere))
            .await?;
        let mut del = redis::cmd("DEL");
        del.arg(&name);
        let removed: u64 = self.query(del).await?;
        let mut rest = [redis::cmd("DEL"), redis::cmd("DEL")];
        rest[0].arg(self.keys.secret(key));
        rest[1].arg(self.keys.status(key));
        self.each_ignored(&rest).await?;
        self.publish(&name).await?;
        Ok(removed > 0)
    }

    async fn list(&self) -> Result<Vec<StoredToken>, StoreError> {
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(self.keys.active());
        let mut members: Vec<String> = self.query(smembers).await?;
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
                match value.map(|json| parse_record(name, json.as_bytes())) {
                    None => {}
                    Some(Ok(record)) => listing.push(StoredToken {
                        key,
                        name: name.clone(),
                        record,
                    }),
                    Some(Err(e)) => tracing::warn!(error = %e, "skipping unreadable token"),
                }
            }
        }
        Ok(listing)
    }

    async fn grant(&self, key: &TokenKey) -> Result<Grant, StoreError> {
        let name = self.keys.secret(key);
        let mut get = redis::cmd("GET");
        get.arg(&name);
        let Some(stored) = self.query::<Option<String>>(get).await? else {
            return Ok(Grant::Missing);
        };
        match self.sealer.open(&name, &stored) {
            Ok(secret) => Ok(Grant::Present(secret)),
            Err(why) => {
                tracing::warn!(%why, scope = %key.scope(), user = ?key.user(), "stored refresh token cannot be decrypted; treating it as missing");
                Ok(Grant::Undecryptable)
            }
        }
    }

    async fn put_grant(&self, key: &TokenKey, refresh_token: &Secret) -> Result<(), StoreError> {
        let name = self.keys.secret(key);
        let mut set = redis::cmd("SET");
        set.arg(&name)
            .arg(self.sealer.seal(&name, refresh_token))
            .arg("EX")
            .arg(SECRET_TTL_SECS);
        self.query::<()>(set).await?;
        Ok(())
    }

    async fn delete_grant(&self, key: &TokenKey) -> Result<(), StoreError> {
        let mut del = redis::cmd("DEL");
        del.arg(self.keys.secret(key));
        self.query::<()>(del).await?;
        Ok(())
    }
}

impl RedisStore {
    /// The token under `name`, from a reply of a pipeline.
    pub(super) fn record_in(
        &self,
        name: &str,
        reply: Option<&Value>,
    ) -> Result<Option<TokenRecord>, StoreError> {
        match reply {
            Some(Value::BulkString(json)) => parse_record(name, json).map(Some),
            _ => Ok(None),
        }
    }

    /// The refresh token under `name`, opened, from a reply of a pipeline.
    pub(super) fn grant_in(&self, key: &TokenKey, name: &str, reply: Option<&Value>) -> Grant {
        let Some(Value::BulkString(stored)) = reply else {
            return Grant::Missing;
        };
        match self.sealer.open(name, &String::from_utf8_lossy(stored)) {
            Ok(secret) => Grant::Present(secret),
            Err(why) => {
                tracing::warn!(%why, scope = %key.scope(), user = ?key.user(), "stored refresh token cannot be decrypted; treating it as missing");
                Grant::Undecryptable
            }
        }
    }

    /// `EVAL` of the release script: releases the lease of `key` if `owner` holds it.
    pub(super) fn release_cmd(&self, key: &TokenKey, owner: &str) -> Cmd {
        let mut eval = redis::cmd("EVAL");
        eval.arg(RELEASE)
            .arg(1)
            .arg(self.keys.lease(key))
            .arg(owner);
        eval
    }

    /// The put script on the token's key, and the refresh token beside it, at
    /// once: `{written, count, changed}`.
    async fn write_token(
        &self,
        name: &str,
        record: &TokenRecord,
        ttl: i64,
        grant: Option<(&TokenKey, &Secret)>,
    ) -> Result<(i64, u64, i64), StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt {
            key: name.to_owned(),
            reason: e.to_string(),
        })?;
        // serde_json always ends an object with '}'.
        let open = &json[..json.len() - 1];
        let set_grant = grant.map(|(key, refresh_token)| {
            let secret_name = self.keys.secret(key);
            let mut set = redis::cmd("SET");
            set.arg(&secret_name)
                .arg(self.sealer.seal(&secret_name, refresh_token))
                .arg("EX")
                .arg(SECRET_TTL_SECS);
            set
        });
        Ok(self
            .run(|c| {
                let mut invocation = self.scripts.put.key(name);
                invocation
                    .arg(open)
                    .arg(record.token.expose())
                    .arg(record.requested_at_ms)
                    .arg(ttl);
                let set_grant = set_grant.clone();
                async move {
                    let mut script_conn = c.clone();
                    let script = async move { invocation.invoke_async(&mut script_conn).await };
                    match set_grant {
                        // Different keys (different slots on a cluster): sent together.
                        Some(set) => {
                            let mut grant_conn = c;
                            let grant = async move { set.query_async::<()>(&mut grant_conn).await };
                            let (written, ()) = futures::try_join!(script, grant)?;
                            Ok(written)
                        }
                        None => script.await,
                    }
                }
            })
            .await?)
    }
}
