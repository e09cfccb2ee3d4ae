-- wrk script for loadtest/bench.py.
--   CODES_FILE    one code per line (the requests pick random codes from it)
--   BOT_PERCENT   share of requests sent with a link-preview bot user agent (default 0)
--   RANDOM_CODES  "1": request random 8-character codes that do not exist (404 flood)
--   SEQUENTIAL    "1": walk the codes in file order, round and round (cache warm-up: every code once)
-- At the end it prints one line "JSON {...}" with requests, errors and latency percentiles (µs).
local codes = {}
local bot_percent = tonumber(os.getenv("BOT_PERCENT") or "0")
local random_codes = os.getenv("RANDOM_CODES") == "1"
local sequential = os.getenv("SEQUENTIAL") == "1"
local next_code = 0
local human_ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
local bot_ua = "facebookexternalhit/1.1 Facebot Twitterbot/1.0"
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  if not random_codes then
    for line in io.lines(os.getenv("CODES_FILE")) do
      if #line > 0 then codes[#codes + 1] = "/" .. line end
    end
  end
end

local function random_code()
  local t = {}
  for i = 1, 8 do
    local k = math.random(#alphabet)
    t[i] = alphabet:sub(k, k)
  end
  return "/" .. table.concat(t)
end

function request()
  local ua = human_ua
  if bot_percent > 0 and math.random(100) <= bot_percent then ua = bot_ua end
  local path
  if random_codes then
    path = random_code()
  elseif sequential then
    next_code = next_code % #codes + 1
    path = codes[next_code]
  else
    path = codes[math.random(#codes)]
  end
  return wrk.format("GET", path, { ["User-Agent"] = ua })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests": %d, "duration_us": %d, "errors": %d, "status_errors": %d, "p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
