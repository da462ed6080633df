#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, builds the plugins (both
# ways) and runs every test. End-to-end tests start their own broker on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
scripts/build-plugins.sh
cargo test --release -p admetrics -p admetrics-plugin-sdk
