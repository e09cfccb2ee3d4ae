//! The Lua scripts of the Redis outbox (`redis.rs`). Each runs inside one workspace's hash tag, so it is
//! atomic on a single node and on a cluster alike.

use std::sync::LazyLock;

/// Accepts a workspace's jobs. KEYS[1] jobs hash, KEYS[2] dead list, KEYS[3..] due sets and budget keys
/// named by index. ARGV[1] now (ms), [2] backlog cap, [3] dead-letter cap, [4] link burst, [5] link rate
/// per minute, then per job: event id, due-set index, budget-key index (0: none), due (ms), job JSON.
/// Returns per job 0 queued, 1 duplicate, 2 link budget spent, 3 backlog full; then the number of dead
/// letters the cap evicted. The budget rule is `queue::spend_budget`'s.
pub(super) const PUSH_SCRIPT: &str = r#"#!lua
local now = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local deadcap = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local rate = tonumber(ARGV[5])
local out = {}
local evicted = 0
local backlog = redis.call('HLEN', KEYS[1])
local function bury(reason, json)
  local n = redis.call('LPUSH', KEYS[2], '{"reason":"' .. reason .. '","at_ms":' .. now .. ',"job":' .. json .. '}')
  if n > deadcap then
    redis.call('LTRIM', KEYS[2], 0, deadcap - 1)
    evicted = evicted + n - deadcap
  end
end
local function spend(key)
  local tokens, at = burst, now
  local v = redis.call('GET', key)
  if v then
    local sep = string.find(v, ':', 1, true)
    tokens = tonumber(string.sub(v, 1, sep - 1))
    at = tonumber(string.sub(v, sep + 1))
  end
  local dt = now - at
  if dt < 0 then dt = 0 end
  tokens = math.min(burst, tokens + dt * rate / 60000)
  local ok = tokens >= 1
  if ok then tokens = tokens - 1 end
  local ttl = 86400000
  if rate > 0 then ttl = math.ceil((burst - tokens) * 60000 / rate) + 1000 end
  redis.call('SET', key, tostring(tokens) .. ':' .. now, 'PX', ttl)
  return ok
end
for i = 6, #ARGV, 5 do
  local id = ARGV[i]
  local budget = tonumber(ARGV[i + 2])
  if redis.call('HEXISTS', KEYS[1], id) == 1 then
    out[#out + 1] = 1
  elseif burst > 0 and budget > 0 and not spend(KEYS[budget]) then
    bury('link_budget', ARGV[i + 4])
    out[#out + 1] = 2
  elseif backlog >= cap then
    bury('backlog_full', ARGV[i + 4])
    out[#out + 1] = 3
  else
    redis.call('HSET', KEYS[1], id, ARGV[i + 4])
    redis.call('ZADD', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 3], id)
    backlog = backlog + 1
    out[#out + 1] = 0
  end
end
out[#out + 1] = evicted
return out
"#;

/// Leases due jobs of one partition. KEYS[1] jobs hash, KEYS[2] due set. ARGV[1] now, [2] max, [3]
/// lease (ms). Returns {jobs' JSON, next due (ms) or -1 when the partition is empty}.
pub(super) const TAKE_SCRIPT: &str = r"#!lua
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local jobs = {}
local lease_end = tonumber(ARGV[1]) + tonumber(ARGV[3])
for _, id in ipairs(ids) do
  local json = redis.call('HGET', KEYS[1], id)
  if json then
    redis.call('ZADD', KEYS[2], lease_end, id)
    jobs[#jobs + 1] = json
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local next_due = -1
if first[2] then next_due = tonumber(first[2]) end
return {jobs, next_due}
";

/// Withdraws held jobs. KEYS[1] jobs hash, KEYS[2..] due sets. ARGV[1] now, then (event id, due-set
/// index) pairs. A job due already (perhaps leased) stays. Returns how many were withdrawn.
pub(super) const WITHDRAW_SCRIPT: &str = r"#!lua
local n = 0
for i = 2, #ARGV, 2 do
  local key = KEYS[tonumber(ARGV[i + 1])]
  local due = redis.call('ZSCORE', key, ARGV[i])
  if due and tonumber(due) > tonumber(ARGV[1]) then
    redis.call('ZREM', key, ARGV[i])
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
";

/// Re-queues dead letters. KEYS[1] jobs hash, KEYS[2] dead list, KEYS[3..] due sets. ARGV[1] now, then
/// per dead letter: its stored JSON, event id, due-set index, job JSON. Only letters still in the list
/// are re-queued (two replays never queue one twice). Returns how many.
pub(super) const REQUEUE_SCRIPT: &str = r"#!lua
local n = 0
for i = 2, #ARGV, 4 do
  if redis.call('LREM', KEYS[2], 1, ARGV[i]) == 1 then
    if redis.call('HEXISTS', KEYS[1], ARGV[i + 1]) == 0 then
      redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 3])
      redis.call('ZADD', KEYS[tonumber(ARGV[i + 2])], ARGV[1], ARGV[i + 1])
    end
    n = n + 1
  end
end
return n
";

pub(super) static PUSH_SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(PUSH_SCRIPT).get_hash().to_owned());
pub(super) static TAKE_SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(TAKE_SCRIPT).get_hash().to_owned());
pub(super) static WITHDRAW_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(WITHDRAW_SCRIPT).get_hash().to_owned());
pub(super) static REQUEUE_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(REQUEUE_SCRIPT).get_hash().to_owned());
