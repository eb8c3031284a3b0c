#!/usr/bin/env bash
# The whole stack on its embedded defaults: migrate, an operator account with an API token,
# MLServer on 127.0.0.1:8080 (serving again the models that were live when it last stopped), a
# django-q2 cluster, the packaged MiniLM registered, and the web server on 127.0.0.1:8000.
# Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export CONTROLPLANE_VAR_DIR=${CONTROLPLANE_VAR_DIR:-$PWD/var}
export MODEL_REPOSITORY_ROOT=${MODEL_REPOSITORY_ROOT:-$CONTROLPLANE_VAR_DIR/model-repository}
export INFERENCE_SERVER_URL=${INFERENCE_SERVER_URL:-http://127.0.0.1:8080}
WEB_ADDR=${WEB_ADDR:-127.0.0.1:8000}
mkdir -p "$CONTROLPLANE_VAR_DIR"

pids=()
stop_all() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all EXIT INT TERM

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
token=$($BIN/python manage.py drf_create_token admin | awk '{print $3}')

mlserver_port=${INFERENCE_SERVER_URL##*:}
$BIN/python -m deployments.inference.server --repository "$MODEL_REPOSITORY_ROOT" --port "${mlserver_port%%/*}" &
pids+=($!)
# A fresh server loads nothing: serve again what the registry says is live, before workers start.
$BIN/python manage.py restore_models --wait-for-server 120 || echo "some models could not be restored (see above)"
$BIN/python manage.py qcluster &
pids+=($!)
$BIN/python manage.py register_packaged_model

cat <<INFO

  Control plane:  http://$WEB_ADDR/          API docs: http://$WEB_ADDR/api/docs/
  Admin:          http://$WEB_ADDR/admin/    user admin, password in $password_file
  API token:      $token
  Try:  curl -X POST http://$WEB_ADDR/deploy -H "Authorization: Token $token" \\
             -H "Content-Type: application/json" -d '{"embedding_model_id": "all-minilm-l6-v2"}'

INFO
$BIN/python manage.py runserver "$WEB_ADDR" --noreload &
pids+=($!)
wait -n "${pids[@]}"
