#!/usr/bin/env bash
# The whole stack on its embedded defaults: migrate, an operator account with an API token,
# Envoy on 127.0.0.1:8080 (admin :9901) in front of INFERENCE_REPLICAS MLServer replicas on
# 127.0.0.1:8090, 8091, ... (serving again the models that were live when they last stopped), the
# django-q2 workers under their watchdog (run_workers), the packaged MiniLM registered, the web
# server (gunicorn) on 127.0.0.1:8000, and the reconciler (which gives a restarted replica back the
# live revisions, then the router sends it traffic again). A part that dies is started again after
# a short backoff. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export CONTROLPLANE_VAR_DIR=${CONTROLPLANE_VAR_DIR:-$PWD/var}
export MODEL_REPOSITORY_ROOT=${MODEL_REPOSITORY_ROOT:-$CONTROLPLANE_VAR_DIR/model-repository}
export INFERENCE_SERVER_URL=${INFERENCE_SERVER_URL:-http://127.0.0.1:8080}
export ROUTER_ADMIN_URL=${ROUTER_ADMIN_URL:-http://127.0.0.1:9901}
export ROUTER_CONFIG_DIR=${ROUTER_CONFIG_DIR:-$CONTROLPLANE_VAR_DIR/envoy/xds}
export INFERENCE_REPLICAS=${INFERENCE_REPLICAS:-1}
export WEB_ADDR=${WEB_ADDR:-127.0.0.1:8000}
mkdir -p "$CONTROLPLANE_VAR_DIR"
# Every process of the stack writes its metrics here and /metrics merges them (prometheus_client's
# multiprocess mode). The files of a previous run belong to processes that are gone: start empty.
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$CONTROLPLANE_VAR_DIR/prometheus}
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -delete

pids=()
# Once this exists, no part is started again: Ctrl-C reaches the parts too, and a part that has
# just stopped must not be restarted while the stack is being stopped.
stopping=$CONTROLPLANE_VAR_DIR/.stack-stopping
rm -f "$stopping"
stop_all() {
  trap - EXIT INT TERM
  touch "$stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all EXIT INT TERM

# keep_alive NAME COMMAND...: run COMMAND in the background, and again whenever it exits, waiting 1 s,
# then 2, 4, ... up to 30 s while it keeps dying young (a part that ran a minute starts over at 1 s).
keep_alive() {
  local name=$1 child="" backoff=1 started status
  shift
  (
    trap 'if [ -n "$child" ]; then kill "$child" 2>/dev/null; wait "$child" 2>/dev/null; fi; exit 0' TERM
    while true; do
      started=$SECONDS
      "$@" &
      child=$!
      status=0
      wait "$child" || status=$?
      [ -e "$stopping" ] && exit 0
      ((SECONDS - started >= 60)) && backoff=1
      echo "run-stack: $name exited (status $status); starting it again in ${backoff}s" >&2
      sleep "$backoff" &
      wait $! || true
      [ -e "$stopping" ] && exit 0
      backoff=$((backoff * 2 > 30 ? 30 : backoff * 2))
    done
  ) &
  pids+=($!)
}

$BIN/python manage.py migrate --noinput
$BIN/python manage.py collectstatic --noinput >/dev/null

# An operator account for the admin and the API: password kept in var/ (never in the code).
password_file=$CONTROLPLANE_VAR_DIR/admin_password
if [ ! -s "$password_file" ]; then
  (umask 077; $BIN/python -c "import secrets; print(secrets.token_urlsafe(18))" >"$password_file")
fi
DJANGO_SUPERUSER_USERNAME=admin DJANGO_SUPERUSER_EMAIL=admin@localhost \
  DJANGO_SUPERUSER_PASSWORD=$(cat "$password_file") \
  $BIN/python manage.py createsuperuser --noinput >/dev/null 2>&1 || true
# A new API token for the operator each run (stored hashed, so it is printed now or never).
token=$($BIN/python manage.py create_token admin --expires-days 30)

port_of() { local port=${1##*:}; echo "${port%%/*}"; }
# Envoy keeps its routes in $ROUTER_CONFIG_DIR (the parent folder is its workdir): restarted, it
# routes what it routed.
keep_alive envoy $BIN/python -m deployments.inference.cli router --workdir "$(dirname "$ROUTER_CONFIG_DIR")" \
  --port "$(port_of "$INFERENCE_SERVER_URL")" --admin-port "$(port_of "$ROUTER_ADMIN_URL")"
replica_urls=$($BIN/python manage.py shell -v 0 -c \
  "from django.conf import settings; print(' '.join(settings.INFERENCE_REPLICA_URLS))")
for replica in $replica_urls; do
  keep_alive "mlserver:$(port_of "$replica")" $BIN/python -m deployments.inference.cli replica \
    --repository "$MODEL_REPOSITORY_ROOT" --port "$(port_of "$replica")"
done
# Fresh replicas load nothing: serve again what the registry says is live, before workers start.
$BIN/python manage.py restore_models --wait-for-server 120 || echo "some models could not be restored (see above)"
# The workers, watched: a cluster that stops running jobs (django-q2 can wedge) is restarted.
keep_alive workers $BIN/python manage.py run_workers
# What the server serves follows the registry: a restarted MLServer gets the live revisions back.
keep_alive reconciler $BIN/python manage.py reconcile --every 5
$BIN/python manage.py register_packaged_model

cat <<INFO

  Control plane:  http://$WEB_ADDR/          API docs: http://$WEB_ADDR/api/docs/
  Admin:          http://$WEB_ADDR/admin/    user admin, password in $password_file
  Health:         http://$WEB_ADDR/readyz    (every part: database, broker, workers, pending tasks, the fleet)
  Metrics:        http://$WEB_ADDR/metrics   (Prometheus; each MLServer replica's own on its HTTP port + 100)
  Models:         $INFERENCE_SERVER_URL/v2/models/<id>/infer   (Envoy; $INFERENCE_REPLICAS MLServer replica(s) behind it)
  API token:      $token
  Try:  curl -X POST http://$WEB_ADDR/deploy -H "Authorization: Token $token" \\
             -H "Content-Type: application/json" -d '{"embedding_model_id": "all-minilm-l6-v2"}'

INFO
# gunicorn: WEB_CONCURRENCY workers (2) of WEB_THREADS threads (4) on WEB_ADDR, one access-log line
# per request on stdout (controlplane/gunicorn.conf.py).
keep_alive web $BIN/python -m gunicorn -c controlplane/gunicorn.conf.py
wait
