#!/usr/bin/env bash
# The dashboard under load while the pipeline runs: an Apache Kafka broker (scripts/kafka.sh), the daemon and the load
# generator (--rate events/s) write the tables, scripts/maintain.py merges their manifests; Superset (scripts/dashboard.sh) serves the
# dashboard; one real-browser load is timed (dashboard/browser_check.py, headless Chromium), then
# --users concurrent users load it --rounds times at the HTTP level (dashboard/load_bench.py).
# A benchmark with a printed report, not a test.
#
#   scripts/dashboard-bench.sh [--rate 5000] [--users 10] [--rounds 10] [--warmup 30] [--watch 60]
#
# --watch S: afterwards the users keep the dashboard open S seconds, each page refreshing itself
# every 10 s at its own phase (load_bench.py --watch), and the refreshes are timed too.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
rate=5000 users=10 rounds=10 warmup=30 watch=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --rate) rate=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --watch) watch=$2; shift 2 ;;
    *) echo "dashboard-bench.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
scripts/setup.sh --demo
scripts/setup.sh --python
scripts/setup.sh --superset
scripts/setup.sh --browser
scripts/build-plugins.sh --plain-only >/dev/null
cargo build --release -p admetrics

work=$(mktemp -d /tmp/admetrics-dashboard-bench.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kport=$(free_port); kcport=$(free_port); sport=$(free_port); mport=$(free_port)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done
  scripts/kafka.sh stop "$work/kafka"
  wait 2>/dev/null || true
}
trap cleanup EXIT
echo "work dir: $work"
# The broker's data and log (broker.log) under $work/kafka; stopped by cleanup.
scripts/kafka.sh start "$work/kafka" "$kport" "$kcport" >/dev/null
scripts/kafka.sh topic "127.0.0.1:$kport" campaign-events 4 >/dev/null
export ADMETRICS__KAFKA__BROKERS="127.0.0.1:$kport" ADMETRICS__HTTP__LISTEN="127.0.0.1:$mport" \
  ADMETRICS__ICEBERG__CATALOG_URI="sqlite:$work/catalog.db" ADMETRICS__ICEBERG__WAREHOUSE="$work/warehouse" \
  ADMETRICS_LOG=warn
setsid target/release/admetrics run --config config/default.toml > "$work/daemon.log" 2>&1 & pids+=($!)
# 100 ms batches, as in the runs measured with the earlier broker (tansu, whose memory storage
# needed them); kept so the figures stay comparable.
setsid target/release/admetrics loadgen --brokers "127.0.0.1:$kport" --rate "$rate" --linger-ms 100 > "$work/loadgen.log" 2>&1 & pids+=($!)
# Manifest merging beside the daemon, as deployed (scripts/maintain.py).
setsid .venv/bin/python scripts/maintain.py --config config/default.toml --interval 10 > "$work/maintain.log" 2>&1 & pids+=($!)
setsid scripts/dashboard.sh --warehouse "$work/warehouse" --home "$work/superset" --port "$sport" \
  > "$work/dashboard.log" 2>&1 & pids+=($!)
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$sport/health" >/dev/null && break; sleep 1; done
echo "pipeline running at $rate events/s; letting the tables fill for $warmup s"
sleep "$warmup"
echo "daemon: $(curl -s "http://127.0.0.1:$mport/metrics" | grep -E '^admetrics_(messages_total|commits_total) ' | tr '\n' ' ')"
.venv-superset/bin/python dashboard/browser_check.py --url "http://127.0.0.1:$sport" \
  --out "$work/browser.json" --screenshot "$work/dashboard.png"
.venv-superset/bin/python dashboard/load_bench.py --url "http://127.0.0.1:$sport" --calls "$work/browser.json" \
  --users "$users" --rounds "$rounds" --watch "$watch"
echo "daemon after: $(curl -s "http://127.0.0.1:$mport/metrics" | grep -E '^admetrics_(messages_total|commits_total) ' | tr '\n' ' ')"
