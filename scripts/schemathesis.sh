#!/usr/bin/env bash
# schemathesis against the live spec, all checks, on PostgreSQL. Needs TEST_DATABASE_URL (an
# admin URL on a PostgreSQL that may CREATE DATABASE) and a built target/debug/api.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TEST_DATABASE_URL:?set TEST_DATABASE_URL, as .ci/run does}"

python3 -m pip install -q --disable-pip-version-check 'schemathesis==4.*'

db=user_service_schemathesis
psql -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
base=${TEST_DATABASE_URL%%\?*}
query=${TEST_DATABASE_URL#"$base"}
port=18181
# Tokens on, as in production: schemathesis checks that the declared bearer scheme is enforced.
token=schemathesis-writer
# A 3 s request timeout bounds the change feed's long polls (`wait`) to 2 s each.
DATABASE_URL="${base%/*}/$db$query" HTTP_ADDR="127.0.0.1:$port" ADMIN_ADDR=127.0.0.1:19191 RUST_LOG=warn \
  HTTP_REQUEST_TIMEOUT_SECS=3 API_TOKENS="$token" target/debug/api &
api=$!
trap 'kill $api 2>/dev/null || true; wait $api 2>/dev/null || true; psql -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break
  sleep 0.2
done

# One worker: with several, this CPython (3.11.7) fails concurrent ast.parse calls, which
# hypothesis makes to describe strategies, with "AST constructor recursion depth mismatch"
# (seen in schemathesis' coverage phase in CI).
schemathesis --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
  --checks all \
  --header "Authorization: Bearer $token" \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-100}" \
  --workers 1 \
  --seed 42 \
  --no-color
