//! Tokens under their SPEC §4 names, and refresh tokens under `secret:` names.

use super::{RedisStore, parse_record};
use crate::domain::TokenKey;
use crate::secret::Secret;
use crate::store::{
    Forget, Grant, PutOutcome, SECRET_TTL_SECS, StoreError, StoredToken, TokenRecord, Tokens,
};
use async_trait::async_trait;

/// MGET batch size for listings: large enough to be few round trips, small enough
/// not to stall Redis on one command.
const LIST_BATCH: usize = 500;

#[async_trait]
impl Tokens for RedisStore {
    async fn get(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        let name = self.keys.token(key);
        let mut get = redis::cmd("GET");
        get.arg(&name);
        let raw: Option<String> = self.query(get).await?;
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
            .map(|(name, value)| value.map(|json| parse_record(name, &json)).transpose())
            .collect()
    }

    async fn put(
        &self,
        key: &TokenKey,
        record: &TokenRecord,
        due_at: i64,
    ) -> Result<PutOutcome, StoreError> {
        let ttl = record.expires_on - self.clock.now();
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
                let mut invocation = self.scripts.put.key(&name);
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
            let mut indexes = [
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
                match value.map(|json| parse_record(name, &json)) {
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
