//! Refresh leases and forced-refresh quotas: what instances agree on.

use super::RedisStore;
use crate::domain::TokenKey;
use crate::store::{Coordination, Grant, StoreError, TokenRecord};
use async_trait::async_trait;
use std::time::Duration;

#[async_trait]
impl Coordination for RedisStore {
    async fn try_lease(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(self.keys.lease(key))
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        let taken: Option<String> = self.query(set).await?;
        Ok(taken.is_some())
    }

    async fn lease_and_read(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<(Option<TokenRecord>, Grant)>, StoreError> {
        let (name, secret) = (self.keys.token(key), self.keys.secret(key));
        let mut cmds = [redis::cmd("SET"), redis::cmd("GET"), redis::cmd("GET")];
        cmds[0]
            .arg(self.keys.lease(key))
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        cmds[1].arg(&name);
        cmds[2].arg(&secret);
        // The reads ride along with the attempt; they are used only if it succeeds,
        // and then they are as the new holder sees them (nobody else writes the
        // token or its grant without the lease).
        let replies = self.each(&cmds).await?;
        if matches!(replies.first(), Some(redis::Value::Nil) | None) {
            return Ok(None);
        }
        Ok(Some((
            self.record_in(&name, replies.get(1))?,
            self.grant_in(key, &secret, replies.get(2)),
        )))
    }

    async fn renew_lease(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let lease = self.keys.lease(key);
        let renewed: i64 = self
            .run(|mut c| {
                let mut invocation = self.scripts.renew.key(&lease);
                invocation.arg(owner).arg(ttl.as_millis() as u64);
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        Ok(renewed == 1)
    }

    async fn release_lease(&self, key: &TokenKey, owner: &str) -> Result<(), StoreError> {
        let lease = self.keys.lease(key);
        self.run(|mut c| {
            let mut invocation = self.scripts.release.key(&lease);
            invocation.arg(owner);
            async move { invocation.invoke_async::<i64>(&mut c).await }
        })
        .await?;
        Ok(())
    }

    async fn lease_held(&self, key: &TokenKey) -> Result<bool, StoreError> {
        let mut exists = redis::cmd("EXISTS");
        exists.arg(self.keys.lease(key));
        Ok(self.query(exists).await?)
    }

    async fn count_refresh(
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
}
