#!lua
-- Counts are passed to redis.call as the argument strings they came in: a Lua number would be
-- formatted back with printf per call.
-- Globals go through Redis's protected global table on every access: the script reads them once, as
-- locals (on a flood's run of INCRs, 5.4 % of Redis's instructions; docs/PERFORMANCE.md, session 10).
local call, KEYS, ARGV, tonumber, unpack, min = redis.call, KEYS, ARGV, tonumber, unpack, math.min
local stored = call('GET', KEYS[1])
if stored then return {1, stored} end
-- Pushes ARGV[s..e] (oldest first) onto a recent-clicks list, 100 per LPUSH, and caps it.
local function push_recent(recent, s, e, cap)
  local len = 0
  while s <= e do
    local t = min(s + 99, e)
    len = call('LPUSH', recent, unpack(ARGV, s, t))
    s = t + 1
  end
  if cap > 0 and len > cap then call('LTRIM', recent, 0, cap - 1) end
end
-- The five keys a broadcast operation (B, D) names, from its indices at ARGV[i+1..i+5].
local function broadcast_keys(i)
  local k = {}
  for j = 1, 5 do k[j] = KEYS[tonumber(ARGV[i + j])] end
  return unpack(k)
end
local out = {}
local i = 2
local n = #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'L' then
    local counters = KEYS[tonumber(ARGV[i + 1])]
    local bot_key = KEYS[tonumber(ARGV[i + 2])]
    local recent = KEYS[tonumber(ARGV[i + 3])]
    local cids = KEYS[tonumber(ARGV[i + 4])]
    local human = tonumber(ARGV[i + 5])
    local bots = tonumber(ARGV[i + 6])
    local cap = tonumber(ARGV[i + 9])
    local k = tonumber(ARGV[i + 10])
    local after = 0
    local bot_after = 0
    if human > 0 then
      after = call('HINCRBY', counters, 'human_hits', ARGV[i + 5])
      local first = call('HGET', counters, 'first_click_at')
      if (not first) or tonumber(first) > tonumber(ARGV[i + 7]) then
        call('HSET', counters, 'first_click_at', ARGV[i + 7])
      end
      local last = call('HGET', counters, 'last_click_at')
      if (not last) or tonumber(last) < tonumber(ARGV[i + 8]) then
        call('HSET', counters, 'last_click_at', ARGV[i + 8])
      end
    end
    if bots > 0 then
      bot_after = call('INCRBY', bot_key, ARGV[i + 6])
    elseif human > 0 then
      bot_after = tonumber(call('GET', bot_key) or '0')
    end
    if human > 0 then
      -- Bot hits that earlier builds counted in the counters hash (read only when answered).
      bot_after = bot_after + tonumber(call('HGET', counters, 'bot_hits') or '0')
    end
    push_recent(recent, i + 11, i + 10 + k, cap)
    local at = i + 11 + k
    local m = tonumber(ARGV[at])
    if m > 0 then
      if call('HLEN', cids) < 1000 then
        for j = at + 1, at + 2 * m, 2 do call('HSETNX', cids, ARGV[j], ARGV[j + 1]) end
      end
      call('PEXPIRE', cids, '2592000000')
    end
    local slot_of = tonumber(ARGV[at + 1 + 2 * m])
    local nxt = at + 2 + 2 * m
    if slot_of > 0 then
      local slot = human > 0 and tonumber(call('HGET', KEYS[slot_of], ARGV[nxt]))
      if slot then
        -- The link's bot hits in its bot slot (see X); 2^20 slots per key (keys::BOT_SLOT_BITS).
        local slots = ARGV[nxt + 1] .. math.floor(slot / 1048576) .. '}'
        bot_after = bot_after + call('BITFIELD', slots, 'GET', 'i64', '#' .. (slot % 1048576))[1]
      end
      nxt = nxt + 2
    end
    if human > 0 then out[#out + 1] = {after, bot_after} else out[#out + 1] = 0 end
    i = nxt
  elseif op == 'X' then
    -- Bot hits of links with a bot slot: one BITFIELD of up to 250 increments, not a key per hit.
    local slots = KEYS[tonumber(ARGV[i + 1])]
    local t, k = {}, 0
    local j = i + 3
    for _ = 1, tonumber(ARGV[i + 2]) do
      t[k + 1] = 'INCRBY'; t[k + 2] = 'i64'; t[k + 3] = ARGV[j]; t[k + 4] = '1'
      k, j = k + 4, j + 1
    end
    local p = tonumber(ARGV[j])
    j = j + 1
    for _ = 1, p do
      t[k + 1] = 'INCRBY'; t[k + 2] = 'i64'; t[k + 3] = ARGV[j]; t[k + 4] = ARGV[j + 1]
      k, j = k + 4, j + 2
    end
    local s = 1
    while s <= k do
      local e = min(s + 999, k)
      call('BITFIELD', slots, unpack(t, s, e))
      s = e + 1
    end
    out[#out + 1] = 0
    i = j
  elseif op == 'R' then
    local first = tonumber(ARGV[i + 1])
    -- INCR, not INCRBY 1: one argument less for Lua to hand over and Redis to parse, per hit.
    for j = first, first + tonumber(ARGV[i + 2]) - 1 do call('INCR', KEYS[j]) end
    out[#out + 1] = 0
    i = i + 3
  elseif op == 'c' then
    call('INCRBY', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
    out[#out + 1] = 0
    i = i + 3
  elseif op == 'b' then
    local recent = KEYS[tonumber(ARGV[i + 2])]
    call('INCRBY', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 3])
    local cap = tonumber(ARGV[i + 4])
    local k = tonumber(ARGV[i + 5])
    push_recent(recent, i + 6, i + 5 + k, cap)
    out[#out + 1] = 0
    i = i + 6 + k
  elseif op == 'B' then
    local hash, uniques, timeline, counts, reasons = broadcast_keys(i)
    call('HINCRBY', hash, 'hits', ARGV[i + 6])
    if tonumber(ARGV[i + 7]) > 0 then call('HINCRBY', hash, 'human_hits', ARGV[i + 7]) end
    if tonumber(ARGV[i + 8]) > 0 then call('HINCRBY', hash, 'bot_hits', ARGV[i + 8]) end
    local r = tonumber(ARGV[i + 9])
    local added = {}
    local new = 0
    for j = i + 10, i + 9 + r do
      local a = 0
      if call('HINCRBY', counts, ARGV[j], 1) >= 1 then a = call('SADD', uniques, ARGV[j]) end
      added[#added + 1] = a
      new = new + a
    end
    if new > 0 then call('HINCRBY', hash, 'unique_clicks', new) end
    local at = i + 10 + r
    local p = tonumber(ARGV[at])
    for j = at + 1, at + 2 * p, 2 do
      call('HINCRBY', timeline, ARGV[j], ARGV[j + 1])
    end
    at = at + 1 + 2 * p
    local q = tonumber(ARGV[at])
    for j = at + 1, at + 2 * q, 2 do
      call('HINCRBY', reasons, ARGV[j], ARGV[j + 1])
    end
    if r == 0 then out[#out + 1] = 0 else out[#out + 1] = added end
    i = at + 1 + 2 * q
  elseif op == 'C' then
    local counters = KEYS[tonumber(ARGV[i + 1])]
    local n = tonumber(ARGV[i + 3])
    if call('HINCRBY', counters, 'human_hits', -n) <= 0 then
      call('HDEL', counters, 'first_click_at', 'last_click_at')
    end
    call('INCRBY', KEYS[tonumber(ARGV[i + 2])], ARGV[i + 3])
    out[#out + 1] = 0
    i = i + 4
  elseif op == 'D' then
    local hash, uniques, timeline, counts, reasons = broadcast_keys(i)
    local k = tonumber(ARGV[i + 6])
    for j = i + 7, i + 6 + 4 * k, 4 do
      call('HINCRBY', hash, 'human_hits', -1)
      call('HINCRBY', hash, 'bot_hits', 1)
      call('HINCRBY', timeline, ARGV[j + 1], -1)
      call('HINCRBY', timeline, ARGV[j + 2], 1)
      call('HINCRBY', reasons, ARGV[j + 3], 1)
      if ARGV[j] ~= '' and call('HINCRBY', counts, ARGV[j], -1) == 0
        and call('SREM', uniques, ARGV[j]) == 1 then
        call('HINCRBY', hash, 'unique_clicks', -1)
      end
    end
    out[#out + 1] = 0
    i = i + 7 + 4 * k
  elseif op == 'Y' then
    local key = KEYS[tonumber(ARGV[i + 1])]
    if call('HGET', key, ARGV[i + 2]) == ARGV[i + 3] then call('HDEL', key, ARGV[i + 2]) end
    out[#out + 1] = 0
    i = i + 4
  elseif op == 'P' then
    call('SADD', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
    out[#out + 1] = 0
    i = i + 3
  elseif op == 'Z' then
    call('SREM', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
    out[#out + 1] = 0
    i = i + 3
  elseif op == 'K' then
    local key = KEYS[tonumber(ARGV[i + 1])]
    if call('HEXISTS', key, ARGV[i + 2]) == 1 then call('HSET', key, ARGV[i + 2], 'bot') end
    out[#out + 1] = 0
    i = i + 3
  elseif op == 'O' then
    out[#out + 1] = call('HSETNX', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  else
    return redis.error_reply('linkhit: unknown counting operation ' .. tostring(op))
  end
end
local reply = cjson.encode(out)
call('SET', KEYS[1], reply, 'PX', ARGV[1])
return {0, reply}
