#!/usr/bin/env bash
# The Superset dashboard over the admetrics Iceberg tables, embedded (no Docker): Superset in its
# own venv (.venv-superset, from PyPI), DuckDB with the offline iceberg extension as its
# database, the bundle in dashboard/bundle/ imported, served on loopback.
#
#   scripts/dashboard.sh                      # tables of scripts/demo.sh (.state/warehouse), port 8088
#   scripts/dashboard.sh --warehouse DIR --port 8089 --home DIR [--bind 0.0.0.0]
#   scripts/dashboard.sh --rest-uri http://rest:8181 --s3-endpoint http://minio:9000 --warehouse s3://B/
#                      # tables in an Iceberg REST catalog on S3 (docker-compose; AWS_* credentials)
#
# Log in as admin / admin (ADMETRICS_SUPERSET_PASSWORD to change) and open
# http://127.0.0.1:PORT/superset/dashboard/admetrics/ — it refreshes every 10 s. Run it beside
# scripts/demo.sh (another terminal) to watch the demo's numbers move.
# Superset's caches are in Redis: ADMETRICS_REDIS_URL (docker-compose: its `redis` service), or
# else a redis-server of its own on a unix socket in the --home folder (no persistence), stopped
# with Superset (SIGTERM/SIGINT to this script or its process group stops both).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
warehouse=.state/warehouse
port=8088
bind=127.0.0.1
home=.state/superset
namespace=ads
rest_uri=
s3_endpoint=
while [[ $# -gt 0 ]]; do
  case $1 in
    --warehouse) warehouse=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --bind) bind=$2; shift 2 ;;
    --home) home=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    --rest-uri) rest_uri=$2; shift 2 ;;
    --s3-endpoint) s3_endpoint=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "dashboard.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '\033[1mdashboard:\033[0m %s\n' "$*"; }
scripts/setup.sh --superset
mkdir -p "$home"
[[ -n $rest_uri ]] || mkdir -p "$warehouse"
export ADMETRICS_SUPERSET_HOME
ADMETRICS_SUPERSET_HOME=$(cd "$home" && pwd)
export SUPERSET_CONFIG_PATH="$repo/dashboard/superset_config.py"
# superset_config.py plugs in dashboard/admetrics_superset.py (shared chart-data cache, ...).
export PYTHONPATH="$repo/dashboard${PYTHONPATH:+:$PYTHONPATH}"
export FLASK_APP=superset
py=$repo/.venv-superset/bin
password=${ADMETRICS_SUPERSET_PASSWORD:-admin}

# Superset's caches (superset_config.py): a redis-server of our own unless one is named; started
# first, since the CLI steps below load the same config.
redis_pid=
if [[ -z ${ADMETRICS_REDIS_URL:-} ]]; then
  sock=$ADMETRICS_SUPERSET_HOME/redis.sock
  rm -f "$sock"
  redis-server --port 0 --unixsocket "$sock" --unixsocketperm 700 --save '' --appendonly no \
    --maxmemory 256mb --maxmemory-policy volatile-lru --daemonize no \
    --logfile "$ADMETRICS_SUPERSET_HOME/redis.log" &
  redis_pid=$!
  trap 'kill -TERM "$redis_pid" 2>/dev/null; wait' EXIT
  export ADMETRICS_REDIS_URL="unix://$sock"
  for _ in $(seq 100); do
    redis-cli -s "$sock" ping >/dev/null 2>&1 && break
    kill -0 "$redis_pid" 2>/dev/null || { tail -5 "$ADMETRICS_SUPERSET_HOME/redis.log" >&2; exit 1; }
    sleep 0.1
  done
fi
# The bundle names absolute paths (warehouse, extensions) and an import never overwrites existing
# databases, datasets or charts: when the rendered bundle differs from the one imported, the
# metadata database is rebuilt from scratch (the dashboard is code; nothing else lives there).
# The dashboard reads DuckDB views over the tables, and creating a view needs its tables: wait
# for the daemon to have created them (it does so when it starts).
waited=0
if [[ -n $rest_uri ]]; then
  # Through the REST catalog: bundle.py fails (naming the missing table) until the daemon made them.
  until err=$("$py/python" dashboard/bundle.py --rest-uri "$rest_uri" --s3-endpoint "$s3_endpoint" \
      --warehouse "$warehouse" --namespace "$namespace" \
      --duckdb "$ADMETRICS_SUPERSET_HOME/views.duckdb" --out "$ADMETRICS_SUPERSET_HOME/bundle.zip" 2>&1); do
    (( waited % 30 == 0 )) && log "waiting for the admetrics tables in $rest_uri ($(tail -1 <<<"$err"))"
    sleep 2; waited=$((waited + 2))
  done
else
  for t in campaign_metrics campaign_events dead_letters; do
    until compgen -G "$warehouse/$namespace/$t/metadata/*.metadata.json" >/dev/null; do
      (( waited % 30 == 0 )) && log "waiting for the admetrics tables in $warehouse/$namespace (is the daemon running?)"
      sleep 1; waited=$((waited + 1))
    done
  done
  "$py/python" dashboard/bundle.py --warehouse "$warehouse" --namespace "$namespace" \
    --duckdb "$ADMETRICS_SUPERSET_HOME/views.duckdb" --out "$ADMETRICS_SUPERSET_HOME/bundle.zip" >/dev/null
fi
want=$(cat dashboard/bundle.py "$SUPERSET_CONFIG_PATH" "$ADMETRICS_SUPERSET_HOME/bundle.zip" | sha256sum | cut -d' ' -f1)
if [[ ! -f $ADMETRICS_SUPERSET_HOME/.imported || $(cat "$ADMETRICS_SUPERSET_HOME/.imported") != "$want" ]]; then
  log "initialising Superset's metadata database in $ADMETRICS_SUPERSET_HOME (~1 min)"
  rm -f "$ADMETRICS_SUPERSET_HOME/superset.db" "$ADMETRICS_SUPERSET_HOME/.imported"
  {
    "$py/superset" db upgrade
    "$py/superset" fab create-admin --username admin --firstname admin --lastname admetrics \
      --email admin@localhost --password "$password"
    "$py/superset" init
    "$py/superset" import-dashboards -p "$ADMETRICS_SUPERSET_HOME/bundle.zip" -u admin
  } >"$ADMETRICS_SUPERSET_HOME/init.log" 2>&1 || { tail -30 "$ADMETRICS_SUPERSET_HOME/init.log" >&2; exit 1; }
  echo "$want" > "$ADMETRICS_SUPERSET_HOME/.imported"
fi
log "serving http://$bind:$port/superset/dashboard/admetrics/ (admin / $password); Ctrl-C stops"
# Workers are processes (Superset's request handling is Python, CPU-bound: about one per core);
# threads overlap the DuckDB queries, which release the GIL. Keep-alive outlives a page load's
# pauses: with gunicorn's 2 s default, a browser (or the load benchmark) reusing a connection the
# server is closing gets a reset. dashboard/gunicorn_conf.py: the app is built once, before the
# port opens (preload), so /health answers only when every worker can serve.
"$py/gunicorn" --config "$repo/dashboard/gunicorn_conf.py" \
  --bind "$bind:$port" --workers "${ADMETRICS_SUPERSET_WORKERS:-3}" \
  --threads "${ADMETRICS_SUPERSET_THREADS:-8}" --timeout 120 --keep-alive 30 \
  --access-logfile "$ADMETRICS_SUPERSET_HOME/access.log" --access-logformat '%(t)s %(s)s %(M)sms %(r)s' \
  --error-logfile "$ADMETRICS_SUPERSET_HOME/gunicorn.log" \
  "superset.app:create_app()" &
gunicorn_pid=$!
# The dashboard's chart data kept warm in Superset's cache (dashboard/warm_cache.py: Superset's
# own warm-up endpoint for each chart, every ADMETRICS_SUPERSET_WARM_EVERY s; 0 = off), from the
# moment Superset answers; stopped with it.
warm_pid=
warm_every=${ADMETRICS_SUPERSET_WARM_EVERY:-10}
if [[ ! $warm_every =~ ^0*\.?0*$ ]]; then  # 0 (or 0.0) = off, as dashboard/cache_timeouts.py reads it
  host=$bind; [[ $host == 0.0.0.0 ]] && host=127.0.0.1
  (
    until curl -sf "http://$host:$port/health" >/dev/null; do
      kill -0 "$gunicorn_pid" 2>/dev/null || exit 0
      sleep 1
    done
    ADMETRICS_SUPERSET_PASSWORD=$password exec "$py/python" dashboard/warm_cache.py \
      --url "http://$host:$port" --every "$warm_every"
  ) &
  warm_pid=$!
fi
# gunicorn is a child (not exec'd) so that our Redis stops with it: a signal to this script is
# passed on, and whichever way gunicorn ends, the EXIT trap above stops Redis after it.
stop() { kill -TERM "$gunicorn_pid" 2>/dev/null || true; }
trap stop TERM INT HUP
status=0
while kill -0 "$gunicorn_pid" 2>/dev/null; do
  wait "$gunicorn_pid" && status=0 || status=$?
done
[[ -z $warm_pid ]] || { kill -TERM "$warm_pid" 2>/dev/null || true; }
exit "$status"
