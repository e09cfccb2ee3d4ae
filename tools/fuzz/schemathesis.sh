#!/usr/bin/env bash
# Fuzzes a linkhit binary against docs/openapi.yaml with Schemathesis (property-based API testing), as
# described in docs/FUZZING.md: starts the server on a free port (embedded store, no click hold), creates a
# workspace through the admin route, runs every Schemathesis check except `use_after_free` with a fixed
# seed and a bounded number of examples per operation, stops the server and exits non-zero on failures.
#
#   LINKHIT_BIN=target/release/linkhit bash tools/fuzz/schemathesis.sh [extra schemathesis run options]
#
# Knobs (environment): LINKHIT_BIN (default target/release/linkhit), FUZZ_MAX_EXAMPLES (per operation,
# default 100), FUZZ_SEED (default 20261202), FUZZ_WORKERS (default 1), FUZZ_PHASES (default all four),
# FUZZ_MAX_TIME (seconds, optional global budget), FUZZ_SPEC (default docs/openapi.yaml). The reports
# (JUnit, NDJSON), the generated configuration and the server log land in target/fuzz/.
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5 # 4.x: OpenAPI 3.1 (type lists, `webhooks`), per-operation check configuration
bin=${LINKHIT_BIN:-target/release/linkhit}
venv=target/fuzz-venv
out=target/fuzz
max_examples=${FUZZ_MAX_EXAMPLES:-100}
seed=${FUZZ_SEED:-20261202}
workers=${FUZZ_WORKERS:-1}
phases=${FUZZ_PHASES:-examples,coverage,fuzzing,stateful}
spec=${FUZZ_SPEC:-docs/openapi.yaml}

[ -x "$bin" ] || { echo "schemathesis.sh: no executable at $bin (set LINKHIT_BIN)" >&2; exit 2; }
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null || true)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
rm -rf "$out" && mkdir -p "$out"

port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
admin_token="fuzz-admin-$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(16))')"

# The server under test: embedded store (LINKHIT_REDIS_URL unset), verdicts final at once, webhook URLs
# must be public (the SSRF guard stays on, as in production), /track not throttled into 429s.
env -u LINKHIT_REDIS_URL -u LINKHIT_ADMIN_LISTEN -u LINKHIT_WEBHOOK_ALLOW_PRIVATE \
  LINKHIT_LISTEN="127.0.0.1:$port" LINKHIT_BASE_URL="$base" LINKHIT_ADMIN_TOKEN="$admin_token" \
  LINKHIT_CLICK_HOLD=0 LINKHIT_TRACK_RATE=1000000 RUST_LOG="${RUST_LOG:-warn}" \
  "$bin" serve >"$out/linkhit.log" 2>&1 &
server_pid=$!
stop_server() {
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT

for _ in $(seq 100); do
  if curl -fsS "$base/healthz" >/dev/null 2>&1; then break; fi
  kill -0 "$server_pid" 2>/dev/null || { echo "schemathesis.sh: the server exited:" >&2; cat "$out/linkhit.log" >&2; exit 2; }
  sleep 0.1
done
curl -fsS "$base/healthz" >/dev/null

workspace=$(curl -fsS -X POST "$base/api/v1/workspaces" -H "Authorization: Bearer $admin_token" \
  -H 'Content-Type: application/json' -d '{"name": "fuzz"}')
api_key=$(printf '%s' "$workspace" | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')

# Schemathesis configuration; docs/FUZZING.md explains every entry.
export LINKHIT_FUZZ_ADMIN_TOKEN="$admin_token"
cat >"$out/schemathesis.toml" <<'TOML'
# Positive cases draw these fields from dictionaries: values the server accepts by design, where JSON Schema
# cannot say which strings are acceptable (public webhook hosts, phone numbers a phone-number library
# validates, future expiry, past send times, URLs the WHATWG parser takes). Negative cases are unaffected.
# One origin only, so that stored secrets bound to their destination stay valid between PUTs.
[dictionaries.public_webhook_urls]
values = ["https://hooks.example.com/linkhit", "https://hooks.example.com/v2/click?src=linkhit"]

[dictionaries.phone_numbers]
values = ["+12025550100", "+12025550143", "+61435790000", "61435790000", "+447911123456", "+4915123456789"]

[dictionaries.target_urls]
values = ["https://shop.example/fall", "http://example.com/a?b=c#d", "https://EXAMPLE.com/x y", "https://münchen.de/"]

[dictionaries.future_times]
values = ["2099-01-01T00:00:00Z", "2999-12-31T23:59:59+02:00"]

[dictionaries.past_times]
values = ["2026-01-01T00:00:00Z", "2025-06-30T12:34:56.789+10:00"]

[dictionaries.conversion_values]
values = [0, 49.9, 1000000000000, 0.000001, "49.90"]

[parameters]
"body.click_url" = { dictionary = "public_webhook_urls" }
"body.opt_out_url" = { dictionary = "public_webhook_urls" }
"body.conversion_url" = { dictionary = "public_webhook_urls" }
"body.oauth.url" = { dictionary = "public_webhook_urls" }
"body.target_url" = { dictionary = "target_urls" }
"body.content_urls[*]" = { dictionary = "target_urls" }
"body.recipient" = { dictionary = "phone_numbers" }
"body.recipients[*].recipient" = { dictionary = "phone_numbers" }
"body.reports[*].recipient" = { dictionary = "phone_numbers" }
"path.recipient" = { dictionary = "phone_numbers" }
"body.expires_at" = { dictionary = "future_times" }
"body.sent_at" = { dictionary = "past_times" }
"body.recipients[*].sent_at" = { dictionary = "past_times" }
"body.occurred_at" = { dictionary = "past_times" }
"body.at" = { dictionary = "past_times" }
"body.value" = { dictionary = "conversion_values" }

# Admin routes take the admin token (the --header below carries the workspace key everywhere else).
[[operations]]
include-path-regex = "^/api/v1/workspaces"
headers = { Authorization = "Bearer ${LINKHIT_FUZZ_ADMIN_TOKEN}" }

# A disabled or expired link answers 410 by design (the stateful phase disables links it created).
[[operations]]
include-path = "/{code}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "404", "410"]

# Schema-valid requests refused because of server state a schema cannot express: `PUT /api/v1/webhooks`
# refuses to send a stored Authorization/OAuth secret to a new destination (400 SECRET_REQUIRED) and
# `POST /api/v1/webhooks/test` needs a configured URL for the type (400 WEBHOOK_NOT_CONFIGURED). So 400 is an
# accepted answer to their positive cases. (Checks named with --checks on the command line cannot be
# switched off per operation; their expected statuses can.)
[[operations]]
include-name = ["PUT /api/v1/webhooks", "POST /api/v1/webhooks/test"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429", "5xx"]

# The coverage phase sends boundary values of its own and ignores the dictionaries above, so its
# schema-valid recipients (`+10`), send times (a day ahead), expiry times (past), target URLs and conversion
# values (7 decimals) may be refused for reasons JSON Schema cannot express (phone-number validity, the
# server's clock, the URL parser, decimal places of a JSON number): 400 is accepted there. The examples and
# fuzzing phases still require 2xx for valid requests.
# (Filters of one entry are alternatives, hence `include-name` = "METHOD path" to name one operation.)
[[operations]]
include-name = ["POST /api/v1/links", "POST /api/v1/broadcasts/{broadcast_id}/links", "POST /api/v1/messages/shorten",
                "POST /api/v1/opt-outs", "GET /api/v1/opt-outs/{recipient}", "DELETE /api/v1/opt-outs/{recipient}",
                "POST /api/v1/conversions", "POST /track", "GET /track", "POST /api/v1/delivery-reports"]
phases.coverage.checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429", "5xx"]
TOML
# Crashes are cached for `st replay` in this run's directory only: a later run must not replay them.
printf '\n[cache]\ndirectory = "%s"\n' "$PWD/$out/cache" >>"$out/schemathesis.toml"

status=0
# Hypothesis keeps its caches under target/fuzz/ (not .hypothesis/ in the repository), and no example
# database: every run with the same seed generates the same cases.
HYPOTHESIS_STORAGE_DIRECTORY="$PWD/$out/hypothesis" \
"$venv/bin/schemathesis" --config-file "$out/schemathesis.toml" --no-color run "$spec" \
  --url "$base" \
  --header "Authorization: Bearer $api_key" \
  --checks all --exclude-checks use_after_free \
  --phases "$phases" \
  --max-examples "$max_examples" --seed "$seed" --generation-database none \
  --workers "$workers" \
  --request-timeout 10 --output-sanitize false \
  --report junit,ndjson --report-dir "$out" \
  ${FUZZ_MAX_TIME:+--max-time "$FUZZ_MAX_TIME"} \
  "$@" || status=$?

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "schemathesis.sh: the server died during the run; see $out/linkhit.log" >&2
  status=1
fi
stop_server
trap - EXIT
if [ "$status" -ne 0 ]; then
  echo "schemathesis.sh: failures (exit $status); reports in $out/" >&2
fi
exit "$status"
