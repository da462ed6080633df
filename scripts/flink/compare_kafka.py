#!/usr/bin/env python3
"""admetrics vs Flink on Apache Kafka: the same topic, the same job, both tables written to Iceberg
(scripts/flink-compare.sh --kafka). A benchmark, not a test: it prints a report, and exits non-zero
with a message if a side fails or the results differ.

1. Starts Apache Kafka 4.1.1 (scripts/kafka.sh) on free loopback ports, data in the work directory.
2. For each input size (default 2M and 20M events): a topic of `--partitions` partitions, filled
   with the seeded events of the file comparison (`admetrics loadgen --out -`, the same generator,
   seed and shape as compare.py), rewritten on the way for Flink's fastest path: `event_time` as
   epoch milliseconds, `revenue` as a JSON number (admetrics reads both forms), key = user_id;
   produced with Kafka's own console producer. Then one flush event per partition (campaign
   `campaign-flush`, 2 minutes after the last event) so that admetrics' per-partition watermarks
   close every real window, as Flink's bounded source does at its end; both sides read it, the
   comparison leaves its campaign out.
3. Runs on that topic, `--runs` times each, each with its own consumer group:
   - bare consumers, consuming every message and doing nothing with it: Kafka's
     `kafka-consumer-perf-test` (org.apache.kafka.tools.ConsumerPerformance, Java client) and,
     when installed (Debian's `kcat`; scripts/setup.sh --flink), kcat on librdkafka, the C client
     that admetrics' rdkafka consumer wraps;
   - admetrics: `admetrics run` (scripts/flink/admetrics-kafka.toml: the three shipped plugins,
     dedup on, a fresh SQLite catalog + warehouse), stopped with SIGTERM (a clean stop: commit,
     offsets) once its /metrics say every message is committed to campaign_events;
   - Flink: scripts/flink/flink_kafka_job.py (PyFlink 2.0.2, Kafka SQL connector, Iceberg Flink
     runtime, JdbcCatalog on SQLite), a bounded job that ends at the topic's end.
   CPU seconds and peak RSS of each whole process tree (compare.py's /proc sampling; the JVMs and
   the Python driver included), wall seconds, and the broker's CPU seconds meanwhile.
4. Checks, for the last run of each size, that admetrics' campaign_metrics (current value of each
   window, sql/current_metrics.sql) and Flink's have the same impressions, clicks, conversions
   and revenue (to 1e-6) per (campaign, window), and that both campaign_events tables hold every
   message (snapshot summaries' total-records).
5. Reports whole runs per size and the steady-state marginal cost between the two sizes:
   (CPU(big) - CPU(small)) / (big - small) per event, events per CPU-second at steady state,
   and the ratio; the same for wall time against the bare consumer.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import REPO, TICK, admetrics_rows, compare, epoch_line, sample, tree  # noqa: E402

KAFKA_LIBS = REPO / ".tools/kafka-4.1.1/libs"
FLUSH_CAMPAIGN = "campaign-flush"
SIDES = ("bare", "kcat", "admetrics", "flink")
SPAN_S = 1800  # event time the input spans, as compare.py


def die(msg):
    print(f"\ncompare_kafka: FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def java_tool(*args, heap="-Xmx512m"):
    return ["java", heap, "-XX:+UseSerialGC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={REPO / 'scripts/kafka/log4j2.properties'}",
            "-cp", f"{KAFKA_LIBS}/*", *args]


def proc_cpu(pid):
    s = sample(pid)
    return s[0] if s else 0.0


# --- input ------------------------------------------------------------------------------------

def murmur2(data: bytes) -> int:
    """Kafka's default partitioner hash (the Java client's Utils.murmur2)."""
    m, r = 0x5BD1E995, 24
    n = len(data)
    h = (0x9747B28C ^ n) & 0xFFFFFFFF
    for i in range(0, n - n % 4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    i, extra = n - n % 4, n % 4
    if extra == 3:
        h ^= data[i + 2] << 16
    if extra >= 2:
        h ^= data[i + 1] << 8
    if extra >= 1:
        h ^= data[i]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def convert(partitions):
    """stdin: loadgen's JSON lines; stdout: KEY<TAB>JSON with epoch-millis event_time and numeric
    revenue, then one flush event per partition. (Runs as a pipeline stage.)"""
    seconds = {}
    out = sys.stdout
    max_ms = 0
    buf = []
    for line in sys.stdin:
        line = epoch_line(line, seconds)
        i = line.index('"event_time":') + 13
        max_ms = max(max_ms, int(line[i:line.index(",", i)]))
        u = line.index('"user_id":"') + 11
        key = line[u:line.index('"', u)]
        buf.append(f"{key}\t{line}")
        if len(buf) >= 4096:
            out.write("".join(buf))
            buf.clear()
    out.write("".join(buf))
    # One flush event per partition, 2 minutes of event time after the last event.
    for p in range(partitions):
        n = 0
        while partition_of(f"flush-{p}-{n}", partitions) != p:
            n += 1
        key = f"flush-{p}-{n}"
        out.write(key + "\t" + json.dumps({
            "event_id": f"flush-{p}", "event_type": "impression", "event_time": max_ms + 120_000,
            "campaign_id": FLUSH_CAMPAIGN, "ad_id": "ad-flush", "user_id": key}, separators=(",", ":")) + "\n")
    out.flush()


def end_offsets(bootstrap, topic, missing_ok=False):
    r = subprocess.run(java_tool("org.apache.kafka.tools.GetOffsetShell", "--bootstrap-server", bootstrap,
                                 "--topic", topic, "--time", "latest", heap="-Xmx256m"),
                       capture_output=True, text=True)
    if r.returncode != 0:
        if missing_ok:
            return {}
        die(f"reading the end offsets of {topic} failed: {r.stderr.strip()[-500:]}")
    out = r.stdout
    offs = {}
    for line in out.split():
        t, p, o = line.rsplit(":", 2)
        offs[int(p)] = int(o)
    return offs


def fill_topic(a, bootstrap, topic, events):
    # Kept from an earlier run with the same --workdir and --keep: reused when complete.
    have = sum(end_offsets(bootstrap, topic, missing_ok=True).values())
    if have == events + a.partitions:
        print(f"topic {topic}: {have:,} messages, kept from an earlier run", flush=True)
        return have
    if have:
        die(f"{topic} exists with {have} messages (expected {events + a.partitions}); use another --workdir")
    subprocess.run(java_tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", bootstrap, "--create",
                             "--topic", topic, "--partitions", str(a.partitions), "--replication-factor", "1",
                             heap="-Xmx256m"), check=True, stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    gen = subprocess.Popen([a.binary, "loadgen", "--out", "-", "--total", str(events),
                            "--rate", str(max(1, events // SPAN_S)), "--campaigns", "100", "--users", "100000",
                            "--ctr", "0.1", "--cvr", "0.111", "--disorder-ms", "2000", "--seed", str(a.seed)],
                           stdout=subprocess.PIPE)
    conv = subprocess.Popen([sys.executable, __file__, "_convert", str(a.partitions)],
                            stdin=gen.stdout, stdout=subprocess.PIPE)
    gen.stdout.close()
    prod = subprocess.Popen(java_tool("org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server", bootstrap,
                                      "--topic", topic, "--property", "parse.key=true",
                                      "--property", "key.separator=\t",
                                      "--producer-property", "linger.ms=20",
                                      "--producer-property", "batch.size=524288",
                                      "--producer-property", "acks=1", heap="-Xmx1g"),
                            stdin=conv.stdout)
    conv.stdout.close()
    for p, name in ((gen, "loadgen"), (conv, "converter"), (prod, "console producer")):
        if p.wait() != 0:
            die(f"filling {topic}: {name} exited {p.returncode}")
    offs = end_offsets(bootstrap, topic)
    total = sum(offs.values())
    if total != events + a.partitions:
        die(f"{topic} holds {total} messages, expected {events + a.partitions}")
    print(f"topic {topic}: {total:,} messages over {len(offs)} partitions "
          f"({', '.join(str(offs[p]) for p in sorted(offs))}), produced in {time.monotonic() - t0:.0f} s", flush=True)
    return total


# --- measuring --------------------------------------------------------------------------------

def measure(cmd, env=None, log=None, until=None, poll_s=0.25, timeout_s=3600):
    """Runs cmd, sampling its process tree every 50 ms (as compare.measure). If `until` is given,
    it is called every `poll_s`; once it returns true the root gets SIGTERM (the time is kept as
    `consumed`). Returns wall, consumed (wall when `until` held, else wall), cpu, rss, code.
    Peak RSS is the sampled sum over the tree: wait4's ru_maxrss is not, as Linux carries the
    forked Python parent's resident size across exec into the child's maximum (a 30 MB kcat
    reported this script's 250 MB), so it is used only when no sample was taken."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    cpu, peak, consumed, next_poll, termed = {}, 0, None, t0 + poll_s, False
    while True:
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
        now = time.monotonic()
        if until and not termed and now >= next_poll:
            next_poll = now + poll_s
            if until():
                consumed = now - t0
                p.send_signal(signal.SIGTERM)
                termed = True
        if now - t0 > timeout_s:
            p.kill()
            die(f"{cmd[0]} did not finish within {timeout_s} s")
        time.sleep(0.05)
    wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    return {"wall": wall, "consumed": consumed if consumed is not None else wall,
            "cpu": max(ru.ru_utime + ru.ru_stime, sum(cpu.values())),
            "rss": peak or ru.ru_maxrss * 1024, "code": code, "stopped": termed}


def metric_value(text, name, labels=""):
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else None


def run_bare(a, bootstrap, topic, total, work, tag):
    log_path = work / f"bare-{tag}.log"
    with open(log_path, "w") as log:
        m = measure(java_tool("org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", bootstrap,
                              "--topic", topic, "--messages", str(total), "--group", f"bare-{tag}",
                              "--timeout", "60000", heap="-Xmx512m"), log=log)
    if m["code"] != 0:
        die(f"bare consumer exited {m['code']}; see {log_path}")
    # The CSV line: start, end, MB, MB/s, messages, messages/s, rebalance ms, fetch ms, fetch MB/s, fetch messages/s
    lines = [ln for ln in log_path.read_text().splitlines() if ln.count(",") >= 9 and ln[:1].isdigit()]
    if not lines:
        die(f"bare consumer printed no result; see {log_path}")
    f = [x.strip() for x in lines[-1].split(",")]
    m["messages"], m["rate"], m["fetch_rate"] = int(f[4]), float(f[5]), float(f[9])
    if m["messages"] < total:
        die(f"bare consumer read {m['messages']} of {total} messages; see {log_path}")
    return m


def run_kcat(a, bootstrap, topic, total, work, tag):
    """librdkafka's own CLI (Debian's kcat, the C client admetrics' rdkafka wraps): every message
    of every partition from the beginning to the end offsets, one '.' written per message."""
    out_path = work / f"kcat-{tag}.out"
    with open(out_path, "w") as out:
        m = measure(["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", "."], log=out)
    if m["code"] != 0:
        die(f"kcat exited {m['code']}; see {out_path}")
    n = out_path.read_text().count(".")
    out_path.unlink()
    if n != total:
        die(f"kcat read {n} of {total} messages")
    return m


def run_admetrics(a, bootstrap, topic, total, work, tag):
    run_dir = work / f"admetrics-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    port = free_port()
    env = dict(os.environ, ADMETRICS_LOG="warn",
               ADMETRICS__KAFKA__BROKERS=bootstrap, ADMETRICS__KAFKA__TOPIC=topic,
               ADMETRICS__KAFKA__GROUP_ID=f"admetrics-{tag}", ADMETRICS__HTTP__LISTEN=f"127.0.0.1:{port}",
               ADMETRICS__ICEBERG__CATALOG_URI=f"sqlite:{run_dir}/catalog.db",
               ADMETRICS__ICEBERG__WAREHOUSE=str(run_dir / "wh"))
    state = {}

    def consumed():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return False
        rows = metric_value(text, "admetrics_committed_rows_total", '{table="campaign_events"}') or 0
        dead = metric_value(text, "admetrics_committed_rows_total", '{table="dead_letters"}') or 0
        state["rows"], state["dead"] = rows, dead
        return rows + dead >= total

    with open(run_dir / "log.txt", "w") as log:
        m = measure([a.binary, "run", "-c", REPO / "scripts/flink/admetrics-kafka.toml"], env=env, log=log,
                    until=consumed, timeout_s=a.timeout)
    if m["code"] != 0 or not m["stopped"]:
        die(f"admetrics exited {m['code']} (stopped by us: {m['stopped']}, committed rows seen {state}); "
            f"see {run_dir}/log.txt")
    m["dir"] = run_dir
    return m


def run_flink(a, bootstrap, topic, total, work, tag):
    run_dir = work / f"flink-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    cmd = [a.flink_python, REPO / "scripts/flink/flink_kafka_job.py", "--brokers", bootstrap, "--topic", topic,
           "--group", f"flink-{tag}", "--catalog-db", run_dir / "catalog.db", "--warehouse", run_dir / "wh",
           "--parallelism", str(a.flink_parallelism), "--checkpoint-ms", str(a.checkpoint_ms)]
    if a.flink_jvm_opts:
        cmd.append(f"--jvm-opts={a.flink_jvm_opts}")
    cmd += ["--explain", run_dir / "plan.txt"]
    with open(run_dir / "log.txt", "w") as log:
        m = measure(cmd, log=log, timeout_s=a.timeout)
    if m["code"] != 0:
        die(f"flink exited {m['code']}; see {run_dir}/log.txt")
    m["dir"] = run_dir
    m["plan"] = plan_summary(run_dir / "plan.txt")
    return m


def plan_summary(path):
    """What Flink's optimized execution plan does with the topic: how many Kafka scans feed the
    two tables (one is the fair plan) and whether the window aggregate is split local/global."""
    try:
        text = path.read_text()
    except OSError:
        return "no plan written"
    plan = text.split("== Optimized Execution Plan ==")[-1]
    scans = plan.count("TableSourceScan(")
    two_phase = "LocalWindowAggregate" in plan and "GlobalWindowAggregate" in plan
    return f"{scans} Kafka scan(s), window aggregate {'local/global' if two_phase else 'one phase'}"


# --- results ----------------------------------------------------------------------------------

def total_records(catalog, table):
    t = catalog.load_table(table)
    snap = t.current_snapshot()
    return int(snap.summary["total-records"]) if snap else 0


def check_results(adm_dir, flink_dir, total):
    from pyiceberg.catalog.sql import SqlCatalog
    ours, not_final = admetrics_rows(adm_dir)
    fcat = SqlCatalog("flink", uri=f"sqlite:///{flink_dir}/catalog.db", warehouse=f"file://{flink_dir}/wh")
    t = fcat.load_table("ads.campaign_metrics").scan().to_arrow().to_pylist()
    theirs, dup_windows = {}, 0
    for r in t:
        k = (r["campaign_id"], r["window_start"].strftime("%Y-%m-%dT%H:%M:%S"))
        dup_windows += k in theirs
        theirs[k] = {"impressions": r["impressions"], "clicks": r["clicks"], "conversions": r["conversions"],
                     "revenue": Decimal(repr(r["revenue"]))}
    flush = [k for k in set(ours) | set(theirs) if k[0] == FLUSH_CAMPAIGN]
    ours = {k: v for k, v in ours.items() if k[0] != FLUSH_CAMPAIGN}
    theirs = {k: v for k, v in theirs.items() if k[0] != FLUSH_CAMPAIGN}
    problems = compare(ours, theirs)
    if dup_windows:
        problems.append(f"{dup_windows} (campaign, window) keys appear twice in Flink's campaign_metrics")
    # admetrics' flush window stays open by design (nothing after it); every other must be final.
    if not_final > len(flush) * 3 * 4:
        problems.append(f"{not_final} admetrics metric rows are not final or withheld")
    acat = SqlCatalog("admetrics", uri=f"sqlite:///{adm_dir}/catalog.db", warehouse=f"file://{adm_dir}/wh")
    a_events, f_events = total_records(acat, "ads.campaign_events"), total_records(fcat, "ads.campaign_events")
    a_dead = total_records(acat, "ads.dead_letters")
    if a_events != total or a_dead != 0:
        problems.append(f"admetrics campaign_events holds {a_events} rows, dead_letters {a_dead}; expected {total}, 0")
    if f_events != total:
        problems.append(f"Flink campaign_events holds {f_events} rows; expected {total}")
    tot = lambda rows, f: sum(r[f] for r in rows.values())  # noqa: E731
    summary = (f"{len(theirs)} Flink window rows, {len(ours)} admetrics (campaign, window) keys; impressions "
               f"{tot(ours, 'impressions')} / {tot(theirs, 'impressions')}, clicks {tot(ours, 'clicks')} / "
               f"{tot(theirs, 'clicks')}, conversions {tot(ours, 'conversions')} / {tot(theirs, 'conversions')}, "
               f"revenue {tot(ours, 'revenue')} / {float(tot(theirs, 'revenue')):.2f}; campaign_events rows "
               f"{a_events} / {f_events} (admetrics / Flink)")
    return problems, summary


def drop_tables(run_dir):
    """The tables of a finished run (GBs at 20M events); its log stays."""
    shutil.rmtree(run_dir / "wh", ignore_errors=True)
    (run_dir / "catalog.db").unlink(missing_ok=True)


# --- main -------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000000,20000000",
                    help="comma-separated input sizes in events; two or more give the steady-state marginal cost")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--workdir", default=None, help="default: a temporary directory (removed at the end unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the broker's data and the tables")
    ap.add_argument("--flink-python", default=str(REPO / ".venv-flink-kafka/bin/python"))
    ap.add_argument("--flink-parallelism", type=int, default=1)
    ap.add_argument("--checkpoint-ms", type=int, default=10_000)
    ap.add_argument("--flink-jvm-opts", default="-XX:+UseParallelGC -Xms1g -Xmx1g",
                    help="JVM options for Flink's driver + mini-cluster ('' = the JVM's own sizing from the "
                         "machine's memory: a heap of up to a quarter of it)")
    ap.add_argument("--only", choices=("admetrics", "flink", "bare", "kcat"), action="append",
                    help="run only these sides (repeatable); the results check needs admetrics and flink")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds one run may take")
    ap.add_argument("--binary", default=str(REPO / "target/release/admetrics"))
    a = ap.parse_args()
    sizes = sorted(int(s) for s in a.sizes.split(","))
    sides = a.only or (["bare"] + (["kcat"] if shutil.which("kcat") else []) + ["admetrics", "flink"])

    work = Path(a.workdir or tempfile.mkdtemp(prefix="admetrics-vs-flink-kafka-"))
    work.mkdir(parents=True, exist_ok=True)
    # A copy of the binary: target/release may be rebuilt by someone else while this runs.
    binary, src = work / "admetrics", a.binary
    shutil.copy2(a.binary, binary)
    a.binary = str(binary)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"admetrics: {version}, a copy of {src} built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(binary.stat().st_mtime))}")
    kdir = work / "kafka"
    port, cport = free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = int(subprocess.run([REPO / "scripts/kafka.sh", "start", kdir, str(port), str(cport)],
                                capture_output=True, text=True, check=True).stdout.split()[-1])
    print(f"Apache Kafka 4.1.1 on {bootstrap} (pid {broker}), work directory {work}", flush=True)
    results = defaultdict(lambda: defaultdict(list))  # side -> size -> [m]
    checks = {}
    ok = True
    try:
        for size in sizes:
            topic = f"events-{size}"
            total = fill_topic(a, bootstrap, topic, size)
            last = {}
            for i in range(a.runs):
                for side in sides:
                    tag = f"{size}-{i}"
                    b0 = proc_cpu(broker)
                    m = {"bare": run_bare, "kcat": run_kcat, "admetrics": run_admetrics, "flink": run_flink}[side](
                        a, bootstrap, topic, total, work, tag)
                    m["broker_cpu"] = proc_cpu(broker) - b0
                    results[side][size].append(m)
                    extra = f", bare fetch rate {m['fetch_rate']:,.0f} msg/s" if side == "bare" else ""
                    extra += f", consumed at {m['consumed']:.2f} s" if side == "admetrics" else ""
                    extra += f", plan: {m['plan']}" if side == "flink" else ""
                    print(f"{size:>11,} run {i + 1} {side:9}: {m['wall']:7.2f} s wall, {m['cpu']:7.2f} CPU-s, "
                          f"{m['rss'] / 2**20:6.0f} MB peak RSS, broker {m['broker_cpu']:.2f} CPU-s{extra}", flush=True)
                    if "dir" in m:
                        if side in last and not a.keep:
                            drop_tables(last[side])
                        last[side] = m["dir"]
            if "admetrics" in last and "flink" in last:
                problems, summary = check_results(last["admetrics"], last["flink"], total)
                print(f"results at {size:,}: {summary}")
                if problems:
                    ok = False
                    print(f"MISMATCH at {size:,}: {len(problems)} differences, first ones:")
                    for p in problems[:20]:
                        print("  ", p)
                else:
                    print("identical: every (campaign, window) has the same impressions, clicks, conversions and "
                          "revenue (to 1e-6); both campaign_events hold every message", flush=True)
                checks[size] = not problems
            if not a.keep:
                for d in last.values():
                    drop_tables(d)
    finally:
        # The broker's data (GBs) goes; the logs stay while something failed, for the message's path.
        subprocess.run([REPO / "scripts/kafka.sh", "stop", kdir], check=False)
        if not a.keep:
            shutil.rmtree(kdir / "data", ignore_errors=True)

    # --- report ---
    med = lambda ms, f: statistics.median(m[f] for m in ms)  # noqa: E731
    print(f"\nWhole runs (medians of {a.runs}; 2-core machine shared with other work: wall times are noisy, "
          f"CPU-s and RSS are per process tree; the broker's CPU is not in any tree):")
    print(f"{'events':>12} {'':10}{'wall s':>9}{'CPU s':>9}{'events/CPU-s':>14}{'events/s':>11}{'peak RSS MB':>13}{'broker CPU-s':>14}")
    for size in sizes:
        for side in SIDES:
            ms = results[side].get(size)
            if not ms:
                continue
            wall = med(ms, "consumed")
            c = med(ms, "cpu")
            print(f"{size:>12,} {side:10}{med(ms, 'wall'):9.2f}{c:9.2f}{size / c:14,.0f}{size / wall:11,.0f}"
                  f"{med(ms, 'rss') / 2**20:13.0f}{med(ms, 'broker_cpu'):14.2f}")
        if results["admetrics"].get(size) and results["flink"].get(size):
            ca, cf = med(results["admetrics"][size], "cpu"), med(results["flink"][size], "cpu")
            ra, rf = med(results["admetrics"][size], "rss"), med(results["flink"][size], "rss")
            print(f"{size:>12,} {'Flink/adm':10}{'':9}{cf / ca:8.1f}×{'':14}{'':11}{rf / ra:12.1f}×")
    summary = {"sizes": sizes, "runs": a.runs, "identical": checks, "medians": {}}
    for side in results:
        summary["medians"][side] = {str(s): {f: med(ms, f) for f in ("wall", "consumed", "cpu", "rss", "broker_cpu")}
                                    for s, ms in results[side].items()}
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        d = hi - lo
        print(f"\nSteady state, marginal between {lo:,} and {hi:,} events (Δ = {d:,}):")
        print(f"{'':10}{'CPU µs/event':>14}{'events/CPU-s':>14}{'wall µs/event':>15}{'events/s':>11}")
        marg = {}
        for side in SIDES:
            if results[side].get(lo) and results[side].get(hi):
                dc = med(results[side][hi], "cpu") - med(results[side][lo], "cpu")
                dw = med(results[side][hi], "consumed") - med(results[side][lo], "consumed")
                marg[side] = (dc / d, dw / d)
                print(f"{side:10}{dc / d * 1e6:14.3f}{d / dc:14,.0f}{dw / d * 1e6:15.3f}{d / dw:11,.0f}")
        if "admetrics" in marg and "flink" in marg:
            print(f"{'Flink/adm':10}{marg['flink'][0] / marg['admetrics'][0]:13.2f}×  (Flink's CPU per event over admetrics' "
                  f"= admetrics' steady-state events per CPU-second over Flink's)")
        for bare in ("bare", "kcat"):
            if "admetrics" in marg and bare in marg:
                print(f"admetrics' steady-state rate = {marg[bare][1] / marg['admetrics'][1] * 100:.0f} % of the {bare} "
                      f"consumer's (marginal wall time; target ≥ 90 %)")
        summary["marginal"] = {k: {"cpu_s_per_event": v[0], "wall_s_per_event": v[1]} for k, v in marg.items()}
    print(json.dumps(summary))
    if not ok:
        die(f"the results differ (see MISMATCH above; logs in {work})")
    if not a.keep and not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_convert":
        convert(int(sys.argv[2]))
    else:
        main()
