#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, builds the plugins (both
# ways), runs every test and fuzzes the event decoder briefly. End-to-end tests start their own broker on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
scripts/build-plugins.sh
# --nocapture: the slow end-to-end tests report progress while they run (see wait_for).
# The plugins' own tests run natively: reach's error at 1M users, the attribution models' exact
# splits (attribution-core), ctr/cvr breakdowns, the template. `ctr@VERSION`: the RustCrypto
# crate `ctr` is in the dependency graph too.
cargo test --release -p admetrics -p admetrics-event -p admetrics-plugin-sdk \
  -p ctr@0.1.0 -p cvr -p attribution -p attribution-core -p attribution-linear -p attribution-time-decay \
  -p attribution-position -p reach -p metric-template -- --nocapture
# The event decoder under libFuzzer, 30 s per target (longer: scripts/fuzz.sh 600).
scripts/fuzz.sh 30
