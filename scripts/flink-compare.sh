#!/usr/bin/env bash
# admetrics vs Flink (PyFlink 2.3.0) on the same job and the same input file, several runs each;
# prints wall/CPU seconds, events per CPU-second, peak RSS and the ratios, and checks that both
# give the same per-window results. Not a test: a benchmark with a printed report.
#
#   scripts/flink-compare.sh                  # 2M events, 3 runs each (~3 minutes)
#   scripts/flink-compare.sh --events 500000 --runs 1
#   scripts/flink-compare.sh --only admetrics # just our side (profiling, before/after)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh --flink
scripts/build-plugins.sh >/dev/null
cargo build --release -p admetrics --bin admetrics
exec .venv/bin/python scripts/flink/compare.py "$@"
