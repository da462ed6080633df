"""CPU seconds per program on this machine, from /proc: what dashboard/browser_check.py and
dashboard/load_bench.py print beside their timings, so a slow figure says who had the cores
(the browser, Superset's workers, the pipeline) and how much CPU one dashboard load costs."""
import os


def cpu_by_program():
    """CPU seconds used so far by every live process, summed per program: the command name, or
    for an interpreter the script it runs (python3 maintain.py, java kafka.Kafka)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [x.decode(errors="replace") for x in f.read().split(b"\0") if x]
        except OSError:  # gone meanwhile
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        name = comm
        if comm.startswith(("python", "java")) and argv:
            args = iter(argv[1:])
            main = ""
            for arg in args:
                if arg in ("-cp", "-classpath", "--class-path", "-m", "-c"):
                    next(args, None)  # the option's value
                elif not arg.startswith("-"):
                    main = arg
                    break
            name = f"{comm} {os.path.basename(main)}" if main else comm
        elif "gunicorn" in " ".join(argv[:2]):
            name = "gunicorn (superset)"
        elif "chrom" in comm or "headless" in comm:
            name = "chromium"
        out[name] = out.get(name, 0.0) + cpu
    return out


def cpu_delta(before, after, top=8):
    d = {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in d.items() if v >= 0.05), key=lambda kv: -kv[1])[:top])
