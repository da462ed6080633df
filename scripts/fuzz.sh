#!/usr/bin/env bash
# Fuzzes the event decoder (fuzz/fuzz_targets): `decode` on arbitrary bytes against the
# validation rules, `rfc3339` differentially against chrono. Runs each target SECONDS (default
# 30) on the stable toolchain without a sanitizer (the decoder is safe Rust; libFuzzer's coverage
# instrumentation is what matters), and prints runs and crashes per target. A crash fails the
# script; its input is kept in fuzz/artifacts/TARGET.
#
# The corpus is kept between runs in the repository: every run starts from fuzz/corpus/TARGET
# (committed) plus the hand-written fuzz/seeds/TARGET, and adds what it finds to fuzz/corpus.
# To keep a run's finds, minimize and commit them:
#   (cd fuzz && cargo fuzz cmin -s none TARGET corpus/TARGET) && git add fuzz/corpus
#
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH"
secs=${1:-30}
for t in decode rfc3339; do
  mkdir -p "corpus/$t"
  if ! out=$(cargo fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" 2>&1); then
    echo "$out" | grep -v '^"' | tail -40
    echo "fuzz $t: CRASH (input kept in fuzz/artifacts/$t)"
    exit 1
  fi
  runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' <<<"$out" | tail -1)
  echo "fuzz $t: ${runs#Done }s, 0 crashes, corpus $(ls "corpus/$t" | wc -l) inputs"
done
