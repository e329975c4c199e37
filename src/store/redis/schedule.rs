//! The index keys: the active set, the refresh schedule, the expiry and read
//! clocks, refresh statuses, and the incremental prune of the active set.

use super::RedisStore;
use crate::domain::TokenKey;
use crate::store::{Due, DueRule, Forget, Reconciled, RefreshStatus, Schedule, StoreError};
use async_trait::async_trait;
use redis::{Cmd, Value};

impl RedisStore {
    /// Commands removing `members` (full token keys) from the schedule and, for
    /// [`Forget::Everywhere`], from every other index.
    pub(super) fn forget_members(&self, members: &[String], forget: Forget) -> Vec<Cmd> {
        let mut indexes = vec![(redis::cmd("ZREM"), self.keys.schedule())];
        if forget == Forget::Everywhere {
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

    /// Index entries for tokens another writer stored (their key names, read
    /// whole): their refresh due by `due_at` and their expiry, two per token.
    /// Values that are not token JSON, or names that are not token keys, are
    /// left alone.
    async fn adopt(&self, names: &[String], due_at: &DueRule) -> Result<Vec<Cmd>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let values = self.mget(names).await?;
        let mut cmds = Vec::new();
        for (name, value) in names.iter().zip(values) {
            let (Some(_), Some(json)) = (self.keys.parse_token(name), value) else {
                continue;
            };
            let Ok(record) = super::parse_record(name, json.as_bytes()) else {
                continue;
            };
            let mut schedule = redis::cmd("ZADD");
            schedule
                .arg(self.keys.schedule())
                .arg(due_at(&record))
                .arg(name);
            let mut expiry = redis::cmd("ZADD");
            expiry
                .arg(self.keys.expiry())
                .arg(record.expires_on)
                .arg(name);
            cmds.extend([schedule, expiry]);
        }
        Ok(cmds)
    }

    fn names(&self, keys: &[TokenKey]) -> Vec<String> {
        keys.iter().map(|k| self.keys.token(k)).collect()
    }
}

#[async_trait]
impl Schedule for RedisStore {
    async fn due(&self, now: i64, limit: usize) -> Result<Due, StoreError> {
        let mut range = redis::cmd("ZRANGEBYSCORE");
        range
            .arg(self.keys.schedule())
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        let names: Vec<String> = self.query(range).await?;
        let mut due = Vec::with_capacity(names.len());
        let mut unknown = Vec::new();
        for name in names {
            match self.keys.parse_token(&name) {
                Some(key) => due.push(key),
                None => unknown.push(name),
            }
        }
        if !unknown.is_empty() {
            self.each_ignored(&self.forget_members(&unknown, Forget::Everywhere))
                .await?;
        }
        Ok(Due {
            keys: due,
            dropped: unknown.len(),
        })
    }

    async fn unschedule(&self, keys: &[TokenKey], forget: Forget) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.each_ignored(&self.forget_members(&self.names(keys), forget))
            .await?;
        Ok(())
    }

    async fn reconcile_step(
        &self,
        count: usize,
        due_at: &DueRule,
    ) -> Result<Reconciled, StoreError> {
        let cursor_key = self.keys.prune_cursor();
        let mut get = redis::cmd("GET");
        get.arg(&cursor_key);
        let cursor: u64 = self.query::<Option<u64>>(get).await?.unwrap_or(0);
        let mut scan = redis::cmd("SSCAN");
        scan.arg(self.keys.active())
            .arg(cursor)
            .arg("COUNT")
            .arg(count);
        let (next, members): (u64, Vec<String>) = self.query(scan).await?;
        // Whether each member's token is there, and whether an index knows it:
        // every token this service writes is in the expiry index (and, unless it
        // was dropped from refreshing, in the schedule); one another writer
        // stored is in neither.
        let mut checks: Vec<Cmd> = members
            .iter()
            .map(|member| {
                let mut exists = redis::cmd("EXISTS");
                exists.arg(member);
                exists
            })
            .collect();
        if !members.is_empty() {
            for index in [self.keys.expiry(), self.keys.schedule()] {
                let mut scores = redis::cmd("ZMSCORE");
                scores.arg(index).arg(&members);
                checks.push(scores);
            }
        }
        let mut replies = self.each(&checks).await?;
        let scores = |replies: &mut Vec<Value>| match replies.pop() {
            Some(Value::Array(scores)) if !members.is_empty() => scores,
            _ => Vec::new(),
        };
        let scheduled = scores(&mut replies);
        let expiring = scores(&mut replies);
        let (mut gone, mut unindexed) = (Vec::new(), Vec::new());
        for (i, member) in members.into_iter().enumerate() {
            let unknown = |scores: &[Value]| matches!(scores.get(i), Some(Value::Nil));
            match replies.get(i) {
                Some(Value::Int(0)) => gone.push(member),
                _ if unknown(&expiring) && unknown(&scheduled) => unindexed.push(member),
                _ => {}
            }
        }
        let mut cmds = self.adopt(&unindexed, due_at).await?;
        let adopted = cmds.len() / 2;
        let mut expired = redis::cmd("ZREMRANGEBYSCORE");
        expired
            .arg(self.keys.expiry())
            .arg("-inf")
            .arg(self.clock.now());
        cmds.push(expired);
        // A cursor that did not move (an active set scanned whole) is not rewritten.
        if next != cursor {
            let mut set = redis::cmd("SET");
            set.arg(&cursor_key).arg(next);
            cmds.push(set);
        }
        if !gone.is_empty() {
            cmds.extend(self.forget_members(&gone, Forget::Everywhere));
        }
        self.each_ignored(&cmds).await?;
        Ok(Reconciled {
            pruned: gone.len(),
            adopted,
            wrapped: next == 0,
        })
    }

    async fn statuses(&self, keys: &[TokenKey]) -> Result<Vec<Option<RefreshStatus>>, StoreError> {
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

    async fn put_status(&self, key: &TokenKey, status: &RefreshStatus) -> Result<(), StoreError> {
        let json = serde_json::to_string(status).unwrap_or_default();
        // Kept a day past the retry so operators can still see what went wrong.
        let ttl = (status.next_attempt - self.clock.now()).max(0) as u64 + 86_400;
        let mut cmds = [redis::cmd("SET"), redis::cmd("ZADD")];
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

    async fn mark_read(&self, key: &TokenKey, now: i64) -> Result<(), StoreError> {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(self.keys.reads())
            .arg(now)
            .arg(self.keys.token(key));
        self.query::<()>(zadd).await?;
        Ok(())
    }

    async fn last_reads(&self, keys: &[TokenKey], now: i64) -> Result<Vec<i64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names = self.names(keys);
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

    async fn active_count(&self) -> Result<u64, StoreError> {
        let mut scard = redis::cmd("SCARD");
        scard.arg(self.keys.active());
        Ok(self.query(scard).await?)
    }

    /// Read-only (health calls it): entries of tokens that already expired are
    /// skipped here and removed by the sweep's prune step.
    async fn soonest_expiry(&self) -> Result<Option<i64>, StoreError> {
        let mut range = redis::cmd("ZRANGEBYSCORE");
        range
            .arg(self.keys.expiry())
            .arg(format!("({}", self.clock.now()))
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(1);
        let first: Vec<(String, f64)> = self.query(range).await?;
        Ok(first.first().map(|(_, at)| *at as i64))
    }
}
