#!/usr/bin/env bash
# The main job on the embedded default: a local tansu broker, the SQLite catalog + local
# warehouse under .state/, the three plugins, the daemon and a load generator, with a live view.
#
#   scripts/demo.sh                       # until Ctrl-C
#   scripts/demo.sh --rate 20000 --duration 60 --campaigns 50 --seed 7
#   scripts/demo.sh --dashboard           # also serve the Superset dashboard on 127.0.0.1:8088
#
# Extra arguments go to `admetrics demo` (see `target/release/admetrics demo --help`).
# The daemon serves /metrics, /health and /ready on 127.0.0.1:9464 (config/default.toml [http]).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

dashboard=false
args=()
for a in "$@"; do
  if [[ $a == --dashboard ]]; then dashboard=true; else args+=("$a"); fi
done
set -- "${args[@]+"${args[@]}"}"

scripts/setup.sh --demo
scripts/build-plugins.sh --plain-only
cargo build --release -p admetrics

PORT=${ADMETRICS_DEMO_PORT:-9092}
mkdir -p .state
if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then
  echo "a broker is already listening on 127.0.0.1:$PORT; using it"
else
  echo "starting tansu on 127.0.0.1:$PORT (log: .state/tansu.log)"
  # Durable broker storage, so a restarted demo resumes where it stopped. tansu 0.6 resolves the
  # sqlite path against its working directory even when it starts with "/": keep it relative.
  tansu broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine "sqlite://.state/tansu.db" > .state/tansu.log 2>&1 &
  broker=$!
  trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null' EXIT
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
fi
tansu topic create campaign-events --broker "tcp://127.0.0.1:$PORT" --partitions 4 >/dev/null 2>&1 || true
if $dashboard; then
  scripts/setup.sh --superset
  echo "starting the Superset dashboard (log: .state/dashboard.log): http://127.0.0.1:8088/superset/dashboard/admetrics/ (admin / admin)"
  setsid scripts/dashboard.sh > .state/dashboard.log 2>&1 &
  dash=$!
  # Table maintenance beside the daemon (scripts/maintain.py: compaction, manifest merge,
  # snapshot expiry, unreferenced files): keeps the dashboard's queries from slowing down with
  # every commit while the demo runs.
  scripts/setup.sh --python
  setsid .venv/bin/python scripts/maintain.py --config config/default.toml --interval 10 > .state/maintain.log 2>&1 &
  maint=$!
  trap 'kill -- -$dash 2>/dev/null; kill $maint 2>/dev/null; kill ${broker:-} 2>/dev/null; wait 2>/dev/null' EXIT
fi

ADMETRICS__KAFKA__BROKERS="127.0.0.1:$PORT" target/release/admetrics demo --config config/default.toml "$@"
echo
echo "Query the tables:  scripts/query.sh   (DuckDB over the Iceberg tables; see README)"
