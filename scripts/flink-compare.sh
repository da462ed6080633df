#!/usr/bin/env bash
# admetrics vs Flink (PyFlink 2.3.0) on the same job and the same input file, several runs each;
# prints wall/CPU seconds, events per CPU-second, peak RSS and the ratios, and checks that both
# give the same per-window results. Not a test: a benchmark with a printed report.
#
#   scripts/flink-compare.sh                  # 2M events, 3 runs each, both input forms (~6 minutes)
#   scripts/flink-compare.sh --events 500000 --runs 1 --formats epoch
# Input forms: iso (ISO-8601 event_time, decimal-string revenue, as the load generator writes) and
# epoch (epoch-millis event_time, numeric revenue: Flink's fastest path); see compare.py.
#   scripts/flink-compare.sh --only admetrics # just our side (profiling, before/after)
#
# --kafka: the pipeline for real on Apache Kafka 4.1.1 (scripts/flink/compare_kafka.py): one topic,
# admetrics (`admetrics run`) and a PyFlink 2.0 job (Kafka SQL connector → Iceberg Flink runtime,
# both tables; scripts/flink/flink_kafka_job.py) each in its own consumer group, plus Kafka's
# bare consumer; at 2M and 20M events, whole runs and the steady-state marginal cost.
#   scripts/flink-compare.sh --kafka                       # 2M and 20M events (~15 minutes, ~5 GB of disk)
#   scripts/flink-compare.sh --kafka --sizes 500000,2000000 --runs 2
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh --flink
scripts/build-plugins.sh >/dev/null
cargo build --release -p admetrics --bin admetrics
if [[ ${1:-} == --kafka ]]; then
  shift
  exec .venv/bin/python scripts/flink/compare_kafka.py "$@"
fi
exec .venv/bin/python scripts/flink/compare.py "$@"
