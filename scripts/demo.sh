#!/usr/bin/env bash
# The main job on the embedded default: a local Apache Kafka broker, the SQLite catalog + local
# warehouse under .state/, the three plugins, the daemon and a load generator, with a live view.
#
#   scripts/demo.sh                       # until Ctrl-C
#   scripts/demo.sh --rate 20000 --duration 60 --campaigns 50 --seed 7
#   scripts/demo.sh --dashboard           # also serve the Superset dashboard on 127.0.0.1:8088
#
# Extra arguments go to `admetrics demo` (see `target/release/admetrics demo --help`).
# The broker (scripts/kafka.sh: one KRaft node, data under .state/kafka, log .state/kafka/broker.log)
# listens on 127.0.0.1:$ADMETRICS_DEMO_PORT (default 9092), its controller on
# $ADMETRICS_DEMO_CONTROLLER_PORT (default 9093); it is stopped when the demo exits.
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
CONTROLLER_PORT=${ADMETRICS_DEMO_CONTROLLER_PORT:-9093}
mkdir -p .state
broker=false
stop_broker() { if $broker; then scripts/kafka.sh stop .state/kafka; fi; }
if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then
  echo "a broker is already listening on 127.0.0.1:$PORT; using it"
else
  echo "starting Apache Kafka on 127.0.0.1:$PORT (log: .state/kafka/broker.log)"
  # Durable broker storage under .state/kafka, so a restarted demo resumes where it stopped.
  scripts/kafka.sh start .state/kafka "$PORT" "$CONTROLLER_PORT" >/dev/null
  broker=true
  trap stop_broker EXIT
fi
scripts/kafka.sh topic "127.0.0.1:$PORT" campaign-events 4 >/dev/null
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
  trap 'kill -- -$dash 2>/dev/null; kill $maint 2>/dev/null; stop_broker; wait 2>/dev/null' EXIT
fi

ADMETRICS__KAFKA__BROKERS="127.0.0.1:$PORT" target/release/admetrics demo --config config/default.toml "$@"
echo
echo "Query the tables:  scripts/query.sh   (DuckDB over the Iceberg tables; see README)"
