#!/usr/bin/env bash
# Where the daemon's time goes on the Flink-comparison job: `admetrics run --file` over a seeded
# event file (same generator settings as scripts/flink-compare.sh) under valgrind's callgrind,
# which counts instructions (repeatable, unaffected by whatever else the machine does), then the
# inclusive counts grouped by pipeline stage (scripts/profile_breakdown.py).
#
#   scripts/profile.sh [--events 200000] [--keep DIR]
#
# Instruction counts are not seconds (cache misses cost more than their instructions), so the
# report also prints the run's wall and CPU time outside valgrind for the same file.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
events=200000
keep=
while [[ $# -gt 0 ]]; do
  case $1 in
    --events) events=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    *) echo "profile.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { echo "profile.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
scripts/build-plugins.sh --plain-only >/dev/null
cargo build --release -p admetrics --bin admetrics
work=${keep:-$(mktemp -d /tmp/admetrics-profile.XXXXXX)}
mkdir -p "$work"
file=$work/events-$events.jsonl
if [[ ! -f $file ]]; then
  target/release/admetrics loadgen --out "$file" --total "$events" --rate $(( events / 1800 > 0 ? events / 1800 : 1 )) \
    --campaigns 100 --users 100000 --ctr 0.1 --cvr 0.111 --disorder-ms 2000 --seed 7
fi
run() { # dir, then the command prefix
  local dir=$1; shift
  rm -rf "$dir"; mkdir -p "$dir"
  ADMETRICS_LOG=warn ADMETRICS__ICEBERG__CATALOG_URI="sqlite:$dir/catalog.db" ADMETRICS__ICEBERG__WAREHOUSE="$dir/wh" \
    "$@" target/release/admetrics run -c scripts/flink/admetrics.toml --file "$file"
}
echo "native run:"
run "$work/native" /usr/bin/time -o "$work/native.time" -f "  %e s wall, %U s user + %S s sys, %M KB peak RSS"
cat "$work/native.time"
echo "callgrind run (slow: ~50x)..."
run "$work/cg" valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" --dump-instr=no \
  --separate-threads=no --trace-children=no >/dev/null 2>"$work/valgrind.log"
callgrind_annotate --auto=no --inclusive=no --threshold=100 "$work/callgrind.out" > "$work/self.txt" 2>/dev/null
python3 scripts/profile_breakdown.py "$work/self.txt" --events "$events"
echo "(callgrind output: $work/callgrind.out; self-cost listing: $work/self.txt;"
echo " callers of a function: callgrind_annotate --auto=no --tree=caller $work/callgrind.out)"
