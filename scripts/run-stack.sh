#!/usr/bin/env bash
# The whole stack on its embedded defaults: migrate, an operator account with an API token,
# Envoy on 127.0.0.1:8080 (admin :9901) in front of INFERENCE_REPLICAS MLServer replicas on
# 127.0.0.1:8090, 8091, ... (serving again the models that were live when they last stopped), the
# django-q2 workers under their watchdog (run_workers), the packaged MiniLM registered, the web
# server (gunicorn) on 127.0.0.1:8000, and the reconciler (which gives a restarted replica back the
# live revisions, then the router sends it traffic again). A part that dies is started again after
# a short backoff. The addresses and folders it chose are in $CONTROLPLANE_VAR_DIR/stack.env while it
# runs, for manage.py in other shells. SIGINT (Ctrl-C), SIGTERM or SIGHUP to this script, or to its
# process group, stops every part (the replicas and Envoy once the workers and reconciler are gone) and
# exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

# A shell starts its background jobs with SIGINT ignored (`setsid make run &` in a script), and a signal
# ignored at entry cannot be trapped: the stack would not hear Ctrl-C or `kill -INT`. Start over with
# SIGINT and SIGTERM at their defaults.
if [ -n "$(trap -p INT TERM)" ]; then
  exec $BIN/python -c 'import os, signal, sys
for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' "$PWD/scripts/run-stack.sh" "$@"
fi

export CONTROLPLANE_VAR_DIR=${CONTROLPLANE_VAR_DIR:-$PWD/var}
export MODEL_REPOSITORY_ROOT=${MODEL_REPOSITORY_ROOT:-$CONTROLPLANE_VAR_DIR/model-repository}
export INFERENCE_SERVER_URL=${INFERENCE_SERVER_URL:-http://127.0.0.1:8080}
export ROUTER_ADMIN_URL=${ROUTER_ADMIN_URL:-http://127.0.0.1:9901}
export ROUTER_CONFIG_DIR=${ROUTER_CONFIG_DIR:-$CONTROLPLANE_VAR_DIR/envoy/xds}
export INFERENCE_REPLICAS=${INFERENCE_REPLICAS:-1}
export WEB_ADDR=${WEB_ADDR:-127.0.0.1:8000}
# gunicorn's wait for open requests and idle keep-alive connections when it is stopped: a stack on a
# workstation stops in a few seconds, an open browser tab included (production's default is 20 s).
export WEB_GRACEFUL_TIMEOUT=${WEB_GRACEFUL_TIMEOUT:-3}
mkdir -p "$CONTROLPLANE_VAR_DIR"
# Every process of the stack writes its metrics here and /metrics merges them (prometheus_client's
# multiprocess mode). The files of a previous run belong to processes that are gone: start empty.
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$CONTROLPLANE_VAR_DIR/prometheus}
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"

# One stack per var folder; the file of one that was killed before it could remove it is stale.
$BIN/python -m controlplane.stack_env running
stack_env=$CONTROLPLANE_VAR_DIR/stack.env
rm -f "$stack_env"
find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -delete

# The parts in the order they were started, by name and pid; each is a process group of its own (see
# keep_alive).
parts=()
part_pids=()
# Once this exists, no part is started again: a part that has just stopped must not be restarted while
# the stack is being stopped.
stopping=$CONTROLPLANE_VAR_DIR/.stack-stopping
rm -f "$stopping"
step_pid=""  # a step of the start that runs in the background, see restore_models

# describe_exit STATUS: how a process ended, from the status `wait` gives (128 + N: killed by signal N).
describe_exit() {
  local status=$1 signal_name
  if ((status > 128)) && signal_name=$(kill -l $((status - 128)) 2>/dev/null); then
    echo "killed by SIG$signal_name"
  else
    echo "exited (status $status)"
  fi
}

# signal_parts INDEX...: SIGTERM to each of those parts (their commands stop, then the part).
signal_parts() {
  local i
  for i in "$@"; do kill -TERM "${part_pids[$i]}" 2>/dev/null || true; done
}

# wait_parts SECONDS INDEX...: wait for each of those parts; one still running after SECONDS (its own
# stop is bounded well below) has its process group SIGKILLed.
wait_parts() {
  local deadline=$((SECONDS + $1)) i pid
  shift
  for i in "$@"; do
    pid=${part_pids[$i]}
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        echo "run-stack: ${parts[$i]} did not stop in time: SIGKILLed" >&2
        kill -KILL -- "-$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
    wait "$pid" 2>/dev/null || true
  done
}

# stop_all SIGNAL STATUS: every part at once but the fleet (replicas, Envoy), which waits until the
# workers and the reconciler are gone, so that no deploy or repair of theirs meets a replica that is
# already stopping; then exit with STATUS (0 for a stop asked by a signal, the failed step's for a start
# that failed).
stop_all() {
  trap - EXIT
  trap 'echo "run-stack: still stopping" >&2' HUP INT TERM
  touch "$stopping"
  rm -f "$stack_env"
  [ -n "${1:-}" ] && echo "run-stack: $1: stopping" >&2
  local web=() callers=() fleet=() i
  [ -n "$step_pid" ] && { kill -TERM "$step_pid" 2>/dev/null || true; }
  for ((i = 0; i < ${#parts[@]}; i++)); do
    case ${parts[$i]} in web) web+=("$i") ;; reconciler | workers) callers+=("$i") ;; *) fleet+=("$i") ;; esac
  done
  signal_parts ${web[@]+"${web[@]}"} ${callers[@]+"${callers[@]}"}
  ((${#callers[@]})) && wait_parts 30 "${callers[@]}"
  ((${#fleet[@]})) && signal_parts "${fleet[@]}"
  wait_parts 30 ${web[@]+"${web[@]}"} ${fleet[@]+"${fleet[@]}"}
  [ -n "${1:-}" ] && echo "run-stack: stopped" >&2
  exit "$2"
}
trap 'stop_all "" $?' EXIT
for signal_name in HUP INT TERM; do
  # shellcheck disable=SC2064  # the name is meant to be expanded now
  trap "stop_all SIG$signal_name 0" "$signal_name"
done

# keep_alive NAME COMMAND...: run COMMAND in the background, and again whenever it exits, waiting 1 s,
# then 2, 4, ... up to 30 s while it keeps dying young (a part that ran a minute starts over at 1 s).
# Each part is a process group of its own (job control on for it): a signal to the stack's group reaches
# this script alone, which stops the parts in order; SIGTERM to the part stops its command, then it.
keep_alive() {
  local name=$1
  shift
  set -m
  (
    child=""
    trap 'if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; fi; exit 0' TERM
    backoff=1
    while true; do
      started=$SECONDS
      "$@" &
      child=$!
      status=0
      wait "$child" || status=$?
      child=""
      [ -e "$stopping" ] && exit 0
      ((SECONDS - started >= 60)) && backoff=1
      echo "run-stack: $name $(describe_exit "$status"); starting it again in ${backoff}s" >&2
      sleep "$backoff" &
      child=$!
      wait "$child" || true
      child=""
      [ -e "$stopping" ] && exit 0
      backoff=$((backoff * 2 > 30 ? 30 : backoff * 2))
    done
  ) &
  part_pids+=($!)
  set +m
  parts+=("$name")
}

# The replicas the settings name (INFERENCE_REPLICA_URLS, or INFERENCE_REPLICAS of them), written down
# with every address and folder above for the commands of other shells.
INFERENCE_REPLICA_URLS=$($BIN/python manage.py shell -v 0 -c \
  "from django.conf import settings; print(','.join(settings.INFERENCE_REPLICA_URLS))")
export INFERENCE_REPLICA_URLS
$BIN/python -m controlplane.stack_env write $$ CONTROLPLANE_VAR_DIR MODEL_REPOSITORY_ROOT INFERENCE_SERVER_URL \
  INFERENCE_REPLICA_URLS ROUTER_ADMIN_URL ROUTER_CONFIG_DIR WEB_ADDR PROMETHEUS_MULTIPROC_DIR

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
replicas=0
for replica in ${INFERENCE_REPLICA_URLS//,/ }; do
  keep_alive "mlserver:$(port_of "$replica")" $BIN/python -m deployments.inference.cli replica \
    --repository "$MODEL_REPOSITORY_ROOT" --port "$(port_of "$replica")"
  replicas=$((replicas + 1))
done
# Fresh replicas load nothing: serve again what the registry says is live, before workers start. (In the
# background: a signal's trap runs only once the foreground command is done, and this one may wait 120 s.)
$BIN/python manage.py restore_models --wait-for-server 120 &
step_pid=$!
wait "$step_pid" || echo "some models could not be restored (see above)"
step_pid=""
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
  Models:         $INFERENCE_SERVER_URL/v2/models/<id>/infer   (Envoy; $replicas MLServer replica(s) behind it)
  Settings:       $stack_env   (read by manage.py in other shells)
  API token:      $token
  Try:  curl -X POST http://$WEB_ADDR/deploy -H "Authorization: Token $token" \\
             -H "Content-Type: application/json" -d '{"embedding_model_id": "all-minilm-l6-v2"}'

INFO
# gunicorn: WEB_CONCURRENCY workers (2) of WEB_THREADS threads (4) on WEB_ADDR, one access-log line
# per request on stdout (controlplane/gunicorn.conf.py).
keep_alive web $BIN/python -m gunicorn -c controlplane/gunicorn.conf.py
# Until a signal's trap stops the stack (wait returns early for a trapped signal, then the trap runs).
wait || true
