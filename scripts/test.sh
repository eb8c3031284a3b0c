#!/usr/bin/env bash
# Every test: lint, then the suite on the embedded default (SQLite + the ORM broker), then again on
# PostgreSQL + the Redis broker. The second run needs both services; outside CI it is skipped with
# a message when they do not answer, in CI (CI=true) their absence is a failure.
# Fault drills with real processes (marker "drill") run in the first profile only; the drills that
# restart PostgreSQL or stop Redis (marker "services_drill") in the second only.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

PG_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS=${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}

echo "== ruff"
$BIN/ruff check .
$BIN/ruff format --check .

# Each run's metrics files in a folder of their own, not in the folder of a stack running from this checkout.
metrics_dirs=$(mktemp -d "${TMPDIR:-/tmp}/controlplane-test-metrics.XXXXXX")
trap 'rm -rf "$metrics_dirs"' EXIT

echo "== tests on SQLite with the ORM broker"
PROMETHEUS_MULTIPROC_DIR=$metrics_dirs/sqlite env -u DATABASE_URL -u REDIS_URL $BIN/pytest -m "not services_drill" "$@"

if $BIN/python scripts/services_answer.py "$PG_URL" "$REDIS"; then
  echo "== tests on PostgreSQL with the Redis broker"
  DATABASE_URL=$PG_URL REDIS_URL=$REDIS Q_CLUSTER_NAME=controlplane-test PROMETHEUS_MULTIPROC_DIR=$metrics_dirs/postgresql \
    $BIN/pytest -m "not drill" "$@"
elif [ "${CI:-}" = "true" ]; then
  echo "PostgreSQL ($PG_URL) or Redis ($REDIS) does not answer; CI needs both." >&2
  exit 1
else
  echo "== skipped the PostgreSQL + Redis run: start both (or set TEST_DATABASE_URL / TEST_REDIS_URL) to include it"
fi
