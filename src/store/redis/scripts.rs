//! The Lua scripts: each runs on one key, so each is atomic on a Redis Cluster too.

use redis::Script;

/// Writes a token with its TTL and bumps `refresh_count` from the value it
/// replaces, in one atomic step on the token's own key. Atomic so that two writers
/// racing cannot both read count N and both write N+1, and a slow writer whose
/// request began before the stored token's cannot overwrite it. Returns
/// `{written, count, changed}`: an identical token is not rewritten.
///
/// The JSON arrives without its closing brace; the script appends the count. Lua's
/// cjson would re-encode the whole document (escaping every `/` in the scope), and
/// other applications read this value directly.
const PUT: &str = r#"
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
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Releases a lease only for its owner: a slow owner whose lease expired and was
/// taken by another instance must not release the new holder's lease. Also sent
/// as a plain `EVAL` inside the pipeline that ends a write.
pub(super) const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Loaded once; the crate sends each by its hash and falls back to the source.
pub(super) struct Scripts {
    pub put: Script,
    pub renew: Script,
    pub release: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            put: Script::new(PUT),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
        }
    }
}
