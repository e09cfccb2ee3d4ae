#!/usr/bin/env bash
# Cache-hit redirect load test: start linkhit (release build), bulk-create links through the API, then
# hammer random codes with wrk and print wrk's report plus linkhit's CPU time per request.
#
#   loadtest/run.sh                      # embedded store, 100,000 links
#   STORE=redis loadtest/run.sh          # a private redis-server on a free port
#   LINKS=1000000 CONNECTIONS=64 DURATION=20s THREADS=1 loadtest/run.sh
#   WEBHOOKS=1 STORE=redis loadtest/run.sh   # every human click also goes to a local webhook receiver
#
# Needs: cargo, python3, wrk (apt-get install wrk), redis-server for STORE=redis.
set -euo pipefail
cd "$(dirname "$0")/.."

LINKS=${LINKS:-100000}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
DURATION=${DURATION:-10s}
STORE=${STORE:-embedded}
BOT_PERCENT=${BOT_PERCENT:-0}
OUT=loadtest/out
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --release --quiet
WEBHOOKS=${WEBHOOKS:-0}
[ "$WEBHOOKS" = 1 ] && cargo build --release --quiet --example receiver
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

if [ "$STORE" = redis ]; then
  RPORT=$(free_port)
  redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  PIDS+=($!)
  export LINKHIT_REDIS_URL="redis://127.0.0.1:$RPORT/"
  until redis-cli -p "$RPORT" ping >/dev/null 2>&1; do sleep 0.05; done
fi

if [ "$WEBHOOKS" = 1 ]; then
  WPORT=$(free_port)
  target/release/examples/receiver "127.0.0.1:$WPORT" &
  PIDS+=($!)
  export LINKHIT_WEBHOOK_ALLOW_PRIVATE=true
fi

PORT=$(free_port)
export LINKHIT_LISTEN="127.0.0.1:$PORT" LINKHIT_ADMIN_TOKEN="loadtest-admin-token-$$"
export LINKHIT_JOURNAL_DIR="$OUT/journal"
RUST_LOG=warn target/release/linkhit >"$OUT/linkhit.log" 2>&1 &
LH=$!
PIDS+=($LH)
until curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null; do sleep 0.05; done

echo "== creating $LINKS links ($STORE store)"
python3 loadtest/create_links.py --base "http://127.0.0.1:$PORT" --admin-token "$LINKHIT_ADMIN_TOKEN" \
  --links "$LINKS" --out "$OUT/codes.txt" | tee "$OUT/create.json"

if [ "$WEBHOOKS" = 1 ]; then
  KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_key"])' "$OUT/create.json")
  curl -sf -X PUT "http://127.0.0.1:$PORT/api/v1/webhooks" -H "Authorization: Bearer $KEY" \
    -d "{\"click_url\": \"http://127.0.0.1:$WPORT/hook\"}" >/dev/null
fi

# Warm the cache with one pass so the measured run is cache hits only.
CODES_FILE="$OUT/codes.txt" wrk -t1 -c16 -d3s -s loadtest/random_codes.lua "http://127.0.0.1:$PORT" >"$OUT/warmup.txt"

ticks() { awk '{print $14+$15}' "/proc/$LH/stat"; }
CPU0=$(ticks)
echo "== wrk -t$THREADS -c$CONNECTIONS -d$DURATION (random codes, ${BOT_PERCENT}% bot UAs)"
CODES_FILE="$OUT/codes.txt" BOT_PERCENT=$BOT_PERCENT wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
  -s loadtest/random_codes.lua "http://127.0.0.1:$PORT" | tee "$OUT/wrk.txt"
CPU1=$(ticks)
REQS=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
HZ=$(getconf CLK_TCK)
WARM=$(awk '/requests in/ {print $1}' "$OUT/warmup.txt")
API_KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_key"])' "$OUT/create.json")
python3 - "$CPU0" "$CPU1" "$REQS" "$HZ" "$LH" "$WARM" "$PORT" "$API_KEY" "${LINKHIT_CAPTURE:-true}" <<'PY'
import json, sys, time, urllib.request
c0, c1, reqs, hz, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
warm, port, key, capture = int(sys.argv[6]), sys.argv[7], sys.argv[8], sys.argv[9] == "true"
rss = next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
print(f"linkhit CPU per request: {(c1 - c0) / hz / reqs * 1e6:.2f} us   RSS: {int(rss) // 1024} MiB")
if capture:
    # Every request was a hit: the counters must reach warm-up + measured requests.
    expected, started, hits = warm + reqs, time.monotonic(), 0
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/broadcasts/loadtest/stats",
                                 headers={"Authorization": f"Bearer {key}"})
    while time.monotonic() - started < 120:
        hits = json.load(urllib.request.urlopen(req))["hits"]
        if hits >= expected:
            break
        time.sleep(0.05)
    print(f"hits counted: {hits} of {expected} requests, counters caught up {time.monotonic() - started:.2f} s after wrk ended")
PY
if [ "$WEBHOOKS" = 1 ]; then
  python3 - "$PORT" "$API_KEY" "$WPORT" <<'PY'
import json, sys, time, urllib.request
port, key, wport = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/broadcasts/loadtest/stats", headers={"Authorization": f"Bearer {key}"})
human = json.load(urllib.request.urlopen(req))["human_hits"]
started = time.monotonic()
while time.monotonic() - started < 300:
    s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{wport}/stats"))
    if s["distinct_ids"] >= human:
        break
    time.sleep(0.1)
rate = s["events"] / s["span_s"] if s["span_s"] else 0
print(f"webhooks: {s['distinct_ids']} of {human} human clicks delivered ({s['events']} requests), drained {time.monotonic() - started:.2f} s after wrk ended; "
      f"{rate:.0f} deliveries/s; click-to-receiver p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms")
PY
fi
