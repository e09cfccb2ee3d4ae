-- wrk script: every request GETs a random code from $CODES_FILE (one code per line), with a user agent
-- drawn from a human/bot mix ($BOT_PERCENT, default 0).
local codes = {}
local bot_percent = tonumber(os.getenv("BOT_PERCENT") or "0")
local human_ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
local bot_ua = "facebookexternalhit/1.1 Facebot Twitterbot/1.0"

function init(args)
  local path = os.getenv("CODES_FILE") or "loadtest/out/codes.txt"
  for line in io.lines(path) do
    if #line > 0 then codes[#codes + 1] = "/" .. line end
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  local ua = human_ua
  if bot_percent > 0 and math.random(100) <= bot_percent then ua = bot_ua end
  return wrk.format("GET", codes[math.random(#codes)], { ["User-Agent"] = ua })
end
