#!/usr/bin/env python3
"""Groups a callgrind profile's self (exclusive) instruction counts by pipeline stage.

    profile_breakdown.py self.txt --events N

`self.txt` is `callgrind_annotate --inclusive=no --threshold=100` output: one line per
(source file, function) with the instructions executed in it, inlined code counted in the file
it came from. Each line is put in the first stage whose pattern matches its file or function
(order matters: specific before general). Self counts add up to the program total, so nothing
is counted twice. Used by scripts/profile.sh.
"""
import argparse
import re

LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(.+?)\s*$")

# (stage, pattern over "file:function [object]")
STAGES = [
    ("plugin compile at start-up (cranelift)", r"cranelift|regalloc2|wasmtime_environ::compile|wasmtime::compile|wasmparser|wasm_encoder|wit_parser|wit_component"),
    ("file read + line split", r"source/file\.rs|memchr::"),
    ("JSON decode: fast scanner", r"event/src/fast\.rs|admetrics_event::fast|str::converts::from_utf8"),
    ("JSON decode: sonic-rs fallback", r"sonic_rs|sonic-rs"),
    ("validation (times, decimals, limits)", r"host/event/src/lib\.rs|admetrics_event::"),
    ("dedup (event-id set)", r"src/dedup\.rs|dedup::SeenIds|twox_hash|xxhash"),
    ("window state, touchpoints, interning", r"src/window\.rs|processor\.rs|pipeline::processor|window::|hashbrown|smallvec|btree|sip::Hasher|BuildHasher::hash_one|binary_heap"),
    ("plugin calls (wasmtime, guest code)", r"wasmtime|src/plugin\.rs|wasi|\?\?\?:0x"),
    ("Arrow building", r"sink/schema\.rs|arrow[-_]"),
    ("Parquet encoding + zstd", r"parquet|zstd|ZSTD_|HUF_|FSE_|HIST_|ahash|snap::|lz4|flate|crc32"),
    ("Iceberg metadata + catalog commits", r"iceberg|sqlx|sqlite|libsqlite|apache_avro|avro|serde_json|opendal|uuid|regex|sha2"),
    ("memcpy / allocator", r"memcpy|memmove|memset|mimalloc|_mi_|mi_|malloc|free\b|realloc"),
    ("async runtime, threads, syscalls", r"tokio|futures|std::sys|std::thread|pthread|libc\.so|ld-linux|parking_lot|crossbeam"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("listing")
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--top-other", type=int, default=0, help="print the largest unclassified lines")
    a = ap.parse_args()
    total, per, other = None, {name: 0 for name, _ in STAGES}, []
    for line in open(a.listing, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        n, name = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in name:
            total = n
            continue
        for stage, pat in STAGES:
            if re.search(pat, name):
                per[stage] += n
                break
        else:
            other.append((n, name))
    listed = sum(per.values()) + sum(n for n, _ in other)
    total = total or listed
    rest = total - sum(per.values())
    print(f"instructions by stage (callgrind, self cost), {a.events:,} events, "
          f"{total / a.events:,.0f} instructions/event in all:")
    for stage, _ in STAGES:
        print(f"  {stage:<42}{per[stage] / a.events:>9,.0f} /event {100 * per[stage] / total:6.1f} %")
    print(f"  {'other (unclassified, below threshold)':<42}{rest / a.events:>9,.0f} /event {100 * rest / total:6.1f} %")
    for n, name in sorted(other, reverse=True)[: a.top_other]:
        print(f"     {n:>14,}  {name[:150]}")


if __name__ == "__main__":
    main()
