#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, builds the plugins (both
# ways), runs every test and fuzzes the event decoder briefly. End-to-end tests start their own broker on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
scripts/build-plugins.sh
# --nocapture: the slow end-to-end tests report progress while they run (see wait_for).
cargo test --release -p admetrics -p admetrics-event -p admetrics-plugin-sdk -- --nocapture
# The event decoder under libFuzzer, 30 s per target (longer: scripts/fuzz.sh 600).
scripts/fuzz.sh 30
