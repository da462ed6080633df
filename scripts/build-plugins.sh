#!/usr/bin/env bash
# Builds the metric plugins both ways a plugin author can:
#   plain cargo  → target/wasm32-wasip2/release/NAME.wasm   (what config/default.toml loads)
#   cargo component → target/wasm32-wasip1/release/NAME.wasm (adapter-wrapped component)
#   scripts/build-plugins.sh [--plain-only]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
plugins=(-p ctr -p cvr -p attribution)
cargo build --release --target wasm32-wasip2 "${plugins[@]}"
if [[ ${1:-} != --plain-only ]]; then
  cargo component build --release "${plugins[@]}"
fi
