"""Checks pages of the daemon's /metrics, scraped in order while it ran, with Prometheus's own
text-format parser (`prometheus_client.parser`, the Python client maintained by the Prometheus
project), and the last page's figures against what the test fed the daemon.

    verify_metrics.py EXPECT.json PAGE1 [PAGE2 ...]

EXPECT.json: {"messages": n, "valid": n, "duplicates": n, "dead_letters": {reason: n},
"partition_messages": {partition: n}, "plugins": n, "histograms": {family: [bucket bounds]}}.

Every page must parse into typed families (a sample that does not belong to its TYPE line comes
out of the parser as an "unknown"/untyped family, which fails here), counters must have samples
ending in `_total`, every histogram series must have cumulative, non-decreasing buckets with the
documented bounds ending in `+Inf`, with `+Inf` equal to `_count`. Between successive pages no
counter and no histogram series may go down. Prints one line per problem and exits 1 if any.
"""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def parse(text):
    """family name -> (type, [(sample name, labels dict, value)])."""
    families = {}
    for fam in text_string_to_metric_families(text):
        assert fam.name not in families, f"family {fam.name} twice"
        families[fam.name] = (fam.type, [(s.name, dict(s.labels), s.value) for s in fam.samples])
    return families


def key(labels, drop=()):
    return tuple(sorted((k, v) for k, v in labels.items() if k not in drop))


def check_page(families, expect, problems, where):
    for name, (typ, samples) in families.items():
        if not name.startswith("admetrics_"):
            problems.append(f"{where}: family {name} without the admetrics_ prefix")
        if typ not in ("counter", "gauge", "histogram"):
            problems.append(f"{where}: family {name} parsed as {typ!r} (sample outside its TYPE?)")
        if typ == "counter":
            for s, _, v in samples:
                if not s.endswith("_total"):
                    problems.append(f"{where}: counter sample {s} does not end in _total")
                if v < 0 or not math.isfinite(v):
                    problems.append(f"{where}: counter {s} = {v}")
        if typ == "histogram":
            check_histogram(name, samples, expect["histograms"].get(name), problems, where)
    for name in expect["histograms"]:
        if families.get(name, ("missing",))[0] != "histogram":
            problems.append(f"{where}: {name} is not a histogram on the page")


def check_histogram(name, samples, bounds, problems, where):
    series = {}
    for s, labels, v in samples:
        k = key(labels, drop=("le",))
        entry = series.setdefault(k, {"buckets": [], "count": None, "sum": None})
        if s == name + "_bucket":
            entry["buckets"].append((float(labels["le"]), v))
        elif s == name + "_count":
            entry["count"] = v
        elif s == name + "_sum":
            entry["sum"] = v
        else:
            problems.append(f"{where}: {name} has a sample {s}")
    if not series:
        problems.append(f"{where}: histogram {name} has no series")
    for k, e in series.items():
        b = e["buckets"]
        les = [le for le, _ in b]
        if les != sorted(les) or not les or les[-1] != math.inf:
            problems.append(f"{where}: {name}{dict(k)} bucket bounds {les} not ascending to +Inf")
        if bounds is not None and les[:-1] != [float(x) for x in bounds]:
            problems.append(f"{where}: {name}{dict(k)} bounds {les[:-1]}, documented {bounds}")
        counts = [v for _, v in b]
        if any(a > c for a, c in zip(counts, counts[1:])):
            problems.append(f"{where}: {name}{dict(k)} buckets not cumulative: {counts}")
        if e["count"] is None or e["sum"] is None:
            problems.append(f"{where}: {name}{dict(k)} lacks _count or _sum")
        elif counts and counts[-1] != e["count"]:
            problems.append(f"{where}: {name}{dict(k)} +Inf {counts[-1]} != _count {e['count']}")


def monotone(before, after, problems, where):
    """Counters and histogram series never go down between two scrapes of one daemon."""
    for name, (typ, samples) in before.items():
        if typ not in ("counter", "histogram"):
            continue
        now = {(s, key(l)): v for s, l, v in after.get(name, (typ, []))[1]}
        for s, labels, v in samples:
            if typ == "counter" and labels.get("state") is not None:
                # plugin_calls/errors carry the version's state: a swap moves the series.
                continue
            got = now.get((s, key(labels)))
            if got is None:
                problems.append(f"{where}: {s}{labels} disappeared")
            elif got < v:
                problems.append(f"{where}: {s}{labels} went down: {v} -> {got}")


def value(families, name, sample, **labels):
    _, samples = families.get(name, (None, []))
    hits = [v for s, l, v in samples if s == sample and all(l.get(k) == w for k, w in labels.items())]
    return sum(hits) if hits else None


def check_figures(f, expect, problems):
    def eq(what, got, want):
        if got != want:
            problems.append(f"{what}: {got}, expected {want}")

    eq("messages", value(f, "admetrics_messages", "admetrics_messages_total"), expect["messages"])
    eq("valid events", value(f, "admetrics_valid_events", "admetrics_valid_events_total"), expect["valid"])
    eq("duplicates", value(f, "admetrics_duplicate_events", "admetrics_duplicate_events_total"),
       expect["duplicates"])
    for reason, n in expect["dead_letters"].items():
        eq(f"dead letters {reason}",
           value(f, "admetrics_dead_letters", "admetrics_dead_letters_total", reason=reason), n)
    dead = sum(expect["dead_letters"].values())
    eq("dead letters committed",
       value(f, "admetrics_committed_rows", "admetrics_committed_rows_total", table="dead_letters"), dead)
    events = value(f, "admetrics_committed_rows", "admetrics_committed_rows_total", table="campaign_events")
    eq("campaign_events committed", events, expect["valid"])
    for p, n in expect["partition_messages"].items():
        eq(f"partition {p} messages",
           value(f, "admetrics_partition_messages", "admetrics_partition_messages_total", partition=p), n)
        eq(f"partition {p} committed offset",
           value(f, "admetrics_committed_offset", "admetrics_committed_offset", partition=p), n)
        eq(f"partition {p} lag", value(f, "admetrics_consumer_lag_messages",
                                       "admetrics_consumer_lag_messages", partition=p), 0)
    commits = value(f, "admetrics_commits", "admetrics_commits_total")
    eq("commit_seconds_count == commits_total",
       value(f, "admetrics_commit_seconds", "admetrics_commit_seconds_count"), commits)
    eq("commit_batch_events_count == commits_total",
       value(f, "admetrics_commit_batch_events", "admetrics_commit_batch_events_count"), commits)
    eq("commit_batch_events_sum == campaign_events committed",
       value(f, "admetrics_commit_batch_events", "admetrics_commit_batch_events_sum"), events)
    # One observation per committed event with a Kafka timestamp: every valid event here.
    eq("visible_latency_seconds_count",
       value(f, "admetrics_visible_latency_seconds", "admetrics_visible_latency_seconds_count"),
       expect["valid"])
    # Per plugin version: the call-duration series and the published call counters name the
    # same versions; the histogram is live, the counters a snapshot of the last commit interval,
    # so the histogram has at least as many calls.
    _, hist = f.get("admetrics_plugin_call_seconds", (None, []))
    _, calls = f.get("admetrics_plugin_calls", (None, []))
    hist_counts = {(l["plugin"], l["version"]): v for s, l, v in hist if s.endswith("_count")}
    call_counts = {}
    for _, l, v in calls:
        k = (l["plugin"], l["version"])
        call_counts[k] = call_counts.get(k, 0) + v
    eq("plugin versions with a call-duration series", len(hist_counts), expect["plugins"])
    eq("plugin versions, histogram vs calls_total", sorted(hist_counts), sorted(call_counts))
    for k, n in hist_counts.items():
        if not (n >= call_counts.get(k, math.inf) > 0):
            problems.append(f"plugin {k}: {n} observed calls, {call_counts.get(k)} counted")
    eq("ready", value(f, "admetrics_ready", "admetrics_ready"), 1)


def main():
    expect = json.load(open(sys.argv[1]))
    pages = [open(p).read() for p in sys.argv[2:]]
    problems = []
    parsed = []
    for i, text in enumerate(pages):
        try:
            families = parse(text)
        except Exception as e:  # the parser's own complaint is the finding
            problems.append(f"page {i}: the Prometheus parser refused it: {e!r}")
            continue
        check_page(families, expect, problems, f"page {i}")
        parsed.append(families)
    for i, (a, b) in enumerate(zip(parsed, parsed[1:])):
        monotone(a, b, problems, f"pages {i}->{i + 1}")
    if parsed:
        check_figures(parsed[-1], expect, problems)
    for p in problems:
        print(p)
    print(f"{len(pages)} pages, {len(parsed[-1]) if parsed else 0} families, {len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
