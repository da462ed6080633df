#!/usr/bin/env bash
# Builds the metric plugins both ways a plugin author can:
#   plain cargo     → target/wasm32-wasip2/release/NAME.wasm (what config/default.toml loads)
#   cargo component → target/wasm32-wasip1/release/NAME.wasm (adapter-wrapped component)
# plus the test fixtures (faulty plugins, a second ctr version) with plain cargo.
#   scripts/build-plugins.sh [--plain-only]   # --plain-only: the plugins, plain cargo (demo)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
plugins=(-p ctr -p cvr -p attribution -p attribution-linear -p attribution-time-decay -p attribution-position -p reach)
extra=(-p metric-template)
if [[ ${1:-} == --plain-only ]]; then
  exec cargo build --release --target wasm32-wasip2 "${plugins[@]}"
fi
fixtures=()
for f in plugins/fixtures/*/; do fixtures+=(-p "fixture-$(basename "$f")"); done
cargo build --release --target wasm32-wasip2 "${plugins[@]}" "${extra[@]}" "${fixtures[@]}"
cargo component build --release "${plugins[@]}" "${extra[@]}"
