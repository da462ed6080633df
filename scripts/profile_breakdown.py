#!/usr/bin/env python3
"""Groups a callgrind inclusive listing (callgrind_annotate --inclusive=yes) by pipeline stage.

    profile_breakdown.py inclusive.txt --events N

Each stage is the inclusive instruction count of the functions that implement it, minus the
stages nested inside (e.g. the processor's own work excludes decoding and Arrow building, which
it calls). Async functions appear as several nested closures; the outermost (largest) counts.
Used by scripts/profile.sh.
"""
import argparse
import re

LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(.+?)\s*$")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("listing")
    ap.add_argument("--events", type=int, required=True)
    a = ap.parse_args()
    funcs, total = [], None
    for line in open(a.listing, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        n, name = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in name:
            total = n
        else:
            funcs.append((n, name))

    def incl(*patterns):
        """The largest inclusive count of a function matching any pattern."""
        best = 0
        for n, name in funcs:
            if any(re.search(p, name) for p in patterns):
                best = max(best, n)
        return best

    read = incl(r"source::file::read_blocks")
    poll = incl(r"FileSource as admetrics::source::Source>::poll_batch")
    process = incl(r"Processor::process\b(?!_)")
    decode = incl(r"admetrics_event::decode_with", r"admetrics_event::decode\b")
    scan = incl(r"admetrics_event::fast::scan")
    serde_path = incl(r"sonic_rs::serde::de::from_slice")
    push = incl(r"schema::EventsBuffer::push")
    dedup = incl(r"dedup::SeenIds::(check|replayed)")
    touch = incl(r"window::Touchpoints::(record_click|for_conversion)")
    flush = incl(r"Processor::flush_plugins")
    publish = incl(r"Processor::publish")
    plugin = incl(r"plugin::Plugin::accumulate") + incl(r"plugin::Plugin::finish")
    take = incl(r"schema::EventsBuffer::take") + incl(r"schema::metrics_batch") + incl(r"DeadLetterBuffer::take")
    write = incl(r"IcebergSink::write\b")
    append = incl(r"IcebergSink::append\b")
    compile_ = incl(r"PluginRuntime::load\b", r"watch::load_initial")
    open_ = incl(r"IcebergSink::open\b")

    stages = [
        ("file read + line split", read + max(0, poll - process)),
        ("JSON decode (fast path + sonic-rs fallback)", scan + serde_path),
        ("validation (times, decimals, limits)", max(0, decode - scan - serde_path)),
        ("dedup (event-id set)", dedup),
        ("attribution touchpoints", touch),
        ("window state, watermarks, interning", max(0, process - decode - push - dedup - touch)),
        ("plugin calls (wasm, lifting/lowering incl.)", plugin),
        ("plugin batching / publish overhead", max(0, flush + publish - plugin)),
        ("Arrow building (events, metrics, dead letters)", push + take),
        ("Parquet encoding + file writes", write),
        ("catalog commits (3 tables)", append),
        ("start-up: plugin compile, catalog open", compile_ + open_),
    ]
    known = sum(v for _, v in stages)
    if total:
        stages.append(("other (runtime, allocator, threads)", max(0, total - known)))
    total = total or known
    print(f"instructions by stage, {a.events:,} events ({total / a.events:,.0f} instructions/event in all):")
    for name, v in stages:
        print(f"  {name:<50}{v / a.events:>10,.0f} /event  {100 * v / total:5.1f} %")


if __name__ == "__main__":
    main()
