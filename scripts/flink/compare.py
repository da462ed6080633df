#!/usr/bin/env python3
"""admetrics vs Flink on the same job, same input, same machine, same run (scripts/flink-compare.sh).

1. Generates a deterministic event file with `admetrics loadgen --out` (seeded: 2M events by
   default, ~220 B each, impressions 90% / clicks 9% / conversions 1%, 100 campaigns, 100K users,
   30 minutes of event time, up to 2 s disorder).
2. Runs, alternately, `--runs` times each:
   - admetrics: `admetrics run --file` with the three shipped plugins (ctr, cvr, attribution),
     committing campaign_events, campaign_metrics and dead_letters to Iceberg (SQLite catalog,
     local warehouse; a fresh one per run);
   - Flink: PyFlink 2.3.0's local mini-cluster with the equivalent Flink SQL (flink_job.py).
3. Checks that both give the same per-window counts and revenue (revenue to 1e-6), reading
   admetrics' results back from Iceberg with PyIceberg (the current value of each window by
   sql/current_metrics.sql: latest revision per Kafka partition, shares summed).
4. Prints wall seconds, CPU seconds, events per CPU-second and peak RSS of the whole process tree
   (the JVM and the Python driver included for Flink) per run, the medians and the ratios.

CPU is read from /proc every 50 ms for every process in the tree, and from wait4()'s rusage of
the root (which covers the children it waited for); the larger of the two is used, both being
lower bounds of the truth. Peak RSS is the sampled sum over the tree (wait4's ru_maxrss only when
no sample was taken: Linux carries this script's own resident size across the child's exec into
its maximum).
"""
import argparse
import calendar
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def children_map():
    kids = defaultdict(list)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids[ppid].append(int(d))
    return kids


def tree(root):
    kids, out, todo = children_map(), [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def sample(pid):
    """(cpu seconds of the process itself, rss bytes) or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK, rss


def measure(cmd, env=None, log=None):
    """Runs cmd; returns wall s, cpu s, peak tree RSS bytes, exit code."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    cpu, peak = {}, 0
    while True:
        done, status, ru = None, None, None
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            break
        total = 0
        for q in tree(p.pid):
            s = sample(q)
            if s:
                cpu[q] = max(cpu.get(q, 0.0), s[0])
                total += s[1]
        peak = max(peak, total)
        time.sleep(0.05)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    waited = ru.ru_utime + ru.ru_stime
    return {
        "wall": wall,
        "cpu": max(waited, sum(cpu.values())),
        "rss": peak or ru.ru_maxrss * 1024,
        "code": p.returncode,
    }


def admetrics_rows(workdir):
    from pyiceberg.catalog.sql import SqlCatalog
    sys.path.insert(0, str(REPO / "tests"))
    from current_metrics import CLASSIC, COLUMNS, current_metrics_rows
    cat = SqlCatalog("admetrics", uri=f"sqlite:///{workdir}/catalog.db", warehouse=f"file://{workdir}/wh")
    t = cat.load_table("ads.campaign_metrics").scan(selected_fields=COLUMNS).to_arrow()
    out = defaultdict(lambda: {"impressions": 0, "clicks": 0, "conversions": 0, "revenue": Decimal(0)})
    not_final = 0
    # Totals of ctr, cvr and last-click attribution: Flink's job computes those (one row per
    # window and campaign).
    for r in current_metrics_rows(t, CLASSIC):
        ws, c, m = r["window_start"], r["campaign_id"], r["metric"]
        not_final += not r["is_final"] or r["withheld"]
        k = (c, ws.replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S"))
        if m == "ctr":
            out[k]["clicks"], out[k]["impressions"] = int(r["numerator"]), int(r["denominator"])
        elif m == "cvr":
            out[k]["conversions"] = int(r["numerator"])
            out[k]["clicks_cvr"] = int(r["denominator"])
        elif m == "revenue":
            out[k]["revenue"] = Decimal(repr(r["numerator"]))
    return out, not_final


def flink_rows(path):
    out = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            out[(r["campaign_id"], r["window_start"])] = {
                "impressions": r["impressions"], "clicks": r["clicks"],
                "conversions": r["conversions"], "revenue": Decimal(r["revenue"])}
    return out


def compare(ours, theirs):
    problems = []
    for k in sorted(set(ours) | set(theirs)):
        a = ours.get(k, {"impressions": 0, "clicks": 0, "conversions": 0, "revenue": Decimal(0)})
        b = theirs.get(k, {"impressions": 0, "clicks": 0, "conversions": 0, "revenue": Decimal(0)})
        for f in ("impressions", "clicks", "conversions"):
            if a[f] != b[f]:
                problems.append(f"{k} {f}: admetrics {a[f]} flink {b[f]}")
        if "clicks_cvr" in a and a["clicks_cvr"] != b["clicks"]:
            problems.append(f"{k} cvr denominator: admetrics {a['clicks_cvr']} flink {b['clicks']}")
        if abs(a["revenue"] - b["revenue"]) > Decimal("0.000001"):
            problems.append(f"{k} revenue: admetrics {a['revenue']} flink {b['revenue']}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", default=None, help="default: a temporary directory")
    ap.add_argument("--flink-python", default=str(REPO / ".venv-flink/bin/python"))
    ap.add_argument("--flink-parallelism", type=int, default=0, help="0 = Flink's default (the cores)")
    ap.add_argument("--only", choices=("admetrics", "flink"), default=None)
    ap.add_argument("--formats", default="iso,epoch",
                    help="input forms to run, comma-separated: iso (event_time an ISO-8601 string, revenue a "
                         "decimal string: as the load generator writes them; Flink's slowest path) and epoch "
                         "(epoch-millis event_time, numeric revenue: Flink's fastest path; admetrics reads both)")
    ap.add_argument("--binary", default=str(REPO / "target/release/admetrics"),
                    help="the admetrics build to measure (e.g. an older one, for before/after figures)")
    a = ap.parse_args()

    work = Path(a.workdir or tempfile.mkdtemp(prefix="admetrics-vs-flink-"))
    work.mkdir(parents=True, exist_ok=True)
    binary = Path(a.binary)
    events = work / f"events-{a.events}-seed{a.seed}.jsonl"
    span_s = 1800
    if not events.exists():
        subprocess.run([binary, "loadgen", "--out", events, "--total", str(a.events),
                        "--rate", str(max(1, a.events // span_s)), "--campaigns", "100",
                        "--users", "100000", "--ctr", "0.1", "--cvr", "0.111",
                        "--disorder-ms", "2000", "--seed", str(a.seed)], check=True)
    size = events.stat().st_size
    print(f"input: {events} — {a.events:,} events, {size / a.events:.0f} B each, {size / 1e6:.0f} MB")

    summary, ok = {}, True
    for form in [f.strip() for f in a.formats.split(",") if f.strip()]:
        if form not in ("iso", "epoch"):
            sys.exit(f"compare: unknown form {form!r} (iso, epoch)")
        source = events if form == "iso" else epoch_file(events)
        print(f"\n== input form: {form} ({source.name})", flush=True)
        med, same = run_form(a, work, binary, source, form)
        summary[form] = {"medians": {k: {"wall_s": v[0], "cpu_s": v[1], "rss_mb": v[2] / 2**20}
                                     for k, v in med.items()}, "identical": same}
        ok = ok and same
    print(json.dumps({"events": a.events, "runs": a.runs, "forms": summary, "identical": ok}))
    sys.exit(0 if ok else 1)


def epoch_line(line, seconds):
    """One loadgen JSON line with `event_time` as epoch milliseconds and `revenue` a JSON number
    (Flink's fastest input form; admetrics reads both). `seconds` caches parsed whole seconds."""
    i = line.index('"event_time":"') + 14
    iso = line[i:i + 24]  # 2026-01-01T00:00:00.123Z
    sec = seconds.get(iso[:19])
    if sec is None:
        sec = seconds[iso[:19]] = calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S"))
    line = f"{line[:i - 1]}{sec * 1000 + int(iso[20:23])}{line[i + 25:]}"
    j = line.find('"revenue":"')
    if j >= 0:
        k = line.index('"', j + 11)
        line = f"{line[:j + 10]}{line[j + 11:k]}{line[k + 1:]}"
    return line


def epoch_file(events):
    """The same events in the epoch form (`epoch_line`), written once beside the file."""
    out = events.with_name(events.stem + "-epoch.jsonl")
    if out.exists():
        return out
    tmp = out.with_suffix(".tmp")
    with open(events) as src, open(tmp, "w") as dst:
        seconds, buf = {}, []
        for line in src:
            buf.append(epoch_line(line, seconds))
            if len(buf) >= 8192:
                dst.write("".join(buf))
                buf.clear()
        dst.write("".join(buf))
    tmp.rename(out)
    return out


def run_form(a, work, binary, events, form):
    """Runs both sides `a.runs` times on `events`; prints the runs, the check and the medians."""
    results = {"admetrics": [], "flink": []}
    last = {}
    for i in range(a.runs):
        if a.only != "flink":
            run_dir = work / f"admetrics-{form}-{i}"
            subprocess.run(["rm", "-rf", run_dir], check=True)
            run_dir.mkdir()
            env = dict(os.environ, ADMETRICS_LOG="warn",
                       ADMETRICS__ICEBERG__CATALOG_URI=f"sqlite:{run_dir}/catalog.db",
                       ADMETRICS__ICEBERG__WAREHOUSE=str(run_dir / "wh"))
            with open(run_dir / "log.txt", "w") as log:
                m = measure([binary, "run", "-c", REPO / "scripts/flink/admetrics.toml", "--file", events],
                            env=env, log=log)
            if m["code"] != 0:
                sys.exit(f"admetrics failed (exit {m['code']}); see {run_dir}/log.txt")
            results["admetrics"].append(m)
            last["admetrics"] = run_dir
            print(f"run {i + 1} admetrics: {m['wall']:.2f} s wall, {m['cpu']:.2f} CPU-s, {m['rss'] / 2**20:.0f} MB peak RSS", flush=True)
        if a.only != "admetrics":
            out = work / f"flink-{form}-{i}.jsonl"
            cmd = [a.flink_python, REPO / "scripts/flink/flink_job.py", events, out]
            if form == "epoch":
                cmd.append("--epoch")
            if a.flink_parallelism:
                cmd += ["--parallelism", str(a.flink_parallelism)]
            with open(work / f"flink-{form}-{i}.log", "w") as log:
                m = measure(cmd, log=log)
            if m["code"] != 0:
                sys.exit(f"flink failed (exit {m['code']}); see {work}/flink-{form}-{i}.log")
            results["flink"].append(m)
            last["flink"] = out
            print(f"run {i + 1} flink:     {m['wall']:.2f} s wall, {m['cpu']:.2f} CPU-s, {m['rss'] / 2**20:.0f} MB peak RSS", flush=True)

    ok = True
    if len(last) == 2:
        ours, not_final = admetrics_rows(last["admetrics"])
        theirs = flink_rows(last["flink"])
        problems = compare(ours, theirs)
        if not_final:
            problems.append(f"{not_final} admetrics metric rows are not final or withheld")
        tot = lambda rows, f: sum(r[f] for r in rows.values())
        print(f"\nresults: {len(theirs)} Flink window rows, {len(ours)} admetrics (campaign, window) keys; "
              f"impressions {tot(ours, 'impressions')} / {tot(theirs, 'impressions')}, clicks {tot(ours, 'clicks')} / "
              f"{tot(theirs, 'clicks')}, conversions {tot(ours, 'conversions')} / {tot(theirs, 'conversions')}, "
              f"revenue {tot(ours, 'revenue')} / {tot(theirs, 'revenue')} (admetrics / Flink)")
        if problems:
            ok = False
            print(f"MISMATCH: {len(problems)} differences, first ones:")
            for p in problems[:20]:
                print("  ", p)
        else:
            print("identical: every (campaign, window) has the same impressions, clicks, conversions and revenue (to 1e-6)")

    med = {}
    print(f"\n{'':12}{'wall s':>10}{'CPU s':>10}{'events/CPU-s':>15}{'peak RSS MB':>14}   (medians of {a.runs})")
    for name, ms in results.items():
        if not ms:
            continue
        w = statistics.median(m["wall"] for m in ms)
        c = statistics.median(m["cpu"] for m in ms)
        r = statistics.median(m["rss"] for m in ms)
        med[name] = (w, c, r)
        print(f"{name:12}{w:10.2f}{c:10.2f}{a.events / c:15,.0f}{r / 2**20:14.0f}")
    if len(med) == 2:
        (wa, ca, ra), (wf, cf, rf) = med["admetrics"], med["flink"]
        print(f"{'ratio':12}{wf / wa:9.1f}×{cf / ca:9.1f}×{(a.events / ca) / (a.events / cf):14.1f}×{rf / ra:13.1f}×"
              "   (Flink / admetrics: higher is better for admetrics)")
    return med, ok


if __name__ == "__main__":
    main()
