#!/usr/bin/env python3
"""Checks the attribution plugins' rows in ads.campaign_metrics against attribution recomputed
here, independently, from ads.campaign_events.

    verify_attribution_models.py --catalog DB --warehouse DIR [options]
    verify_attribution_models.py --self-test

For every checked plugin (default: every plugin with rows whose name is `attribution` or
`attribution-*` and whose model is known, see MODELS), this script rebuilds each user's clicks and
views as the host holds them, splits every conversion's revenue by the plugin's model with its own
implementation of the rounding rule, and compares, in integer micro-units, EXACTLY:

* per final window, campaign, ad and metric: `revenue` (per campaign: Σ revenue, conversions),
  `unattributed_revenue` (per campaign: revenue and count of conversions with no touchpoint
  chosen), `attributed_revenue` (per credited campaign and ad: Σ shares, count of conversions
  crediting it) against the plugin's rows: per (stream, partition) share the latest revision
  among live rows (no restatement, not shadow, totals only: `dimensions` empty or NULL when the
  column exists), summed over the shares. A window is compared when every latest share row of
  the plugin in it is final; a withheld share is a problem.
* per final window, from the rows alone: Σ attributed + Σ unattributed = Σ revenue; and per
  (window, campaign) attributed (the campaign's ads) + unattributed = revenue wherever no
  credit crosses campaigns in that window (a conversion may be credited to another campaign's
  ad: then the identity holds per window only, and the script counts the campaigns it skipped).

The host's touchpoints (the rule of host/src/window.rs, as scripts/lineage.py documents it): per
(stream, kafka_partition), events in offset order, duplicates (`is_duplicate`) ignored; each click
(late ones too) goes into its user's click list, kept sorted by event time (a click with the
same time as others goes after them) and cut to the latest `--max-touchpoints` (the oldest
dropped); impressions the same into the user's view list when any checked plugin does view-through
(`--max-views`, default the same). A conversion that is not late (`is_late`) counts in its window
with the clicks of its list with `t - lookback <= time <= t` (`--lookback-secs`) and, for a
view-through plugin, the views with `t - view lookback <= time <= t` (`--view-lookback-secs`).

The models (the definitions of plugins/attribution-core/src/lib.rs, implemented again here):
* choice: the clicks inside the plugin's own `lookback_secs` (0/absent: the host's only); if
  none and the plugin's `view_lookback_secs` > 0, the views inside it; else unattributed. Oldest
  first, equal times in list order.
* weights: last_click 1 for the latest (of equal latest times the first in list order, as the
  shipped `attribution` plugin does), 0 for the others; linear 1 each; position_based 1 | 1,1 | 2(n-2),1,...,1,2(n-2);
  time_decay 2^(-(t_last - t_i)/half_life) in the fixed point documented there (62-bit, the
  table of 2^(-2^-j) computed here with 80-digit decimals).
* split: largest remainder, floors first, the micros left to the largest remainders, equal
  remainders to the later touchpoint.
* credit: merged per (campaign, ad); last click credits only its one touchpoint; a conversion
  counts once per (campaign, ad) it credits.

Plugin parameters: those recorded in the lineage of the plugin's rows (`admetrics.plugins` of
the campaign_metrics snapshots: name, params) when present, overridden by `--param`. Defaults:
lookback_secs 0, view_lookback_secs 0, half_life_secs 604800.

Options:
  --plugin NAME[=MODEL]   check this plugin (repeatable); MODEL one of last_click, linear,
                          time_decay, position_based, needed for a name not in MODELS
  --param NAME.KEY=VALUE  a parameter of plugin NAME, as in [plugins.config.NAME] (repeatable)
  --lookback-secs S       host [attribution] lookback_secs (default 604800)
  --view-lookback-secs S  host [attribution] view_lookback_secs (default 86400)
  --max-touchpoints N     host [attribution] max_touchpoints (default 8)
  --max-views N           views kept per user (default: --max-touchpoints)
  --min-windows N         each plugin must have at least N final windows compared (default 1)
  --min-attributed N      ... and at least N attributed conversions in them (default 1)
  --min-view-credited N   each view-through plugin: at least N conversions credited to views
                          (default 0)
  --min-unattributed N    each plugin: at least N conversions in final windows credited to no
                          touchpoint (default 0; input design, so the identity is not trivial)
  --min-split N           each plugin: at least N conversions split over several ads (default 0)
  --verbose               print every mismatch (default: the first 20 per plugin)

Prints one line per problem and a summary per plugin; exits 0 when all agree, 1 on a problem,
2 when the tables cannot be read or nothing can be checked. `--self-test` runs this script's own
model implementation on hand-computed cases and generated ones (no tables) and exits 0/1.
`--cross-check FILE` compares it case by case with attribution-core's credits on the generated
cases that `ATTRIBUTION_CASES_OUT=FILE cargo test --release -p attribution-core cases_for` writes.
"""
import argparse
import bisect
import json
import random
import sys
from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Context, Decimal

MODELS = {
    "attribution": "last_click",
    "attribution-linear": "linear",
    "attribution-time-decay": "time_decay",
    "attribution-position": "position_based",
}
KNOWN_MODELS = ("last_click", "linear", "time_decay", "position_based")
DEFAULT_HALF_LIFE_SECS = 604800
METRICS = ("revenue", "attributed_revenue", "unattributed_revenue")

# ---------------------------------------------------------------------------------------------
# The models


def _half_roots():
    """round(2^62 * 2^(-2^-j)) for j = 1..32, in 80-digit decimal arithmetic."""
    ctx = Context(prec=80)
    one = Decimal(2) ** 62
    out = []
    for j in range(1, 33):
        exponent = ctx.divide(Decimal(-1), Decimal(2) ** j)
        v = ctx.multiply(one, ctx.power(Decimal(2), exponent))
        frac = v - int(v)
        assert abs(frac - Decimal("0.5")) > Decimal("1e-6"), f"2^(-2^-{j}) too close to a tie"
        out.append(int(v.to_integral_value(rounding=ROUND_HALF_EVEN)))
    return out


HALF_ROOTS = _half_roots()
ONE = 1 << 62


def decay_weight(age_ms, half_life_ms):
    """2^62 * 2^(-age/half_life) in the fixed point of attribution-core."""
    assert age_ms >= 0
    if half_life_ms == 0:
        return ONE if age_ms == 0 else 0
    k, rest = divmod(age_ms, half_life_ms)
    if k >= 63:
        return 0
    x = (rest << 32) // half_life_ms  # 32 fraction bits of rest / half_life
    w = ONE
    for j in range(1, 33):
        if (x >> (32 - j)) & 1:
            w = (w * HALF_ROOTS[j - 1]) >> 62
    return w >> k


def weights(model, times, half_life_ms=None):
    """Weights of touchpoints at `times` (oldest first)."""
    n = len(times)
    if model == "last_click":
        # The latest; of equal latest times the first in list order (the shipped plugin's rule).
        first = times.index(times[-1]) if times else None
        return [1 if i == first else 0 for i in range(n)]
    if model == "linear":
        return [1] * n
    if model == "position_based":
        if n <= 2:
            return [1] * n
        return [2 * (n - 2)] + [1] * (n - 2) + [2 * (n - 2)]
    if model == "time_decay":
        latest = max(times, default=0)
        return [decay_weight(latest - t, half_life_ms) for t in times]
    raise ValueError(model)


def largest_remainder(total, ws):
    """Shares of `total` in proportion to `ws`, summing to `total` exactly; None if Σws = 0."""
    s = sum(ws)
    if s == 0:
        return None
    m = abs(total)
    quota = [divmod(m * w, s) for w in ws]
    shares = [q for q, _ in quota]
    left = m - sum(shares)
    assert 0 <= left < len(ws)
    # Largest remainder first; equal remainders: the later touchpoint first.
    order = sorted(range(len(ws)), key=lambda i: (quota[i][1], i), reverse=True)
    for i in order[:left]:
        shares[i] += 1
    return [-x for x in shares] if total < 0 else shares


def choose(conv_ms, clicks, views, click_lookback_ms, view_lookback_ms):
    """The touchpoints of a conversion: clicks inside the click lookback (None: no limit), else
    views inside the view lookback (None: views off). Each a list of (time_ms, campaign, ad) in
    list order; returns (touchpoints sorted by time, stably; 'click' | 'view' | None)."""

    def inside(tps, lookback):
        return [t for t in tps if t[0] <= conv_ms and (lookback is None or conv_ms - lookback <= t[0])]

    chosen = inside(clicks, click_lookback_ms)
    kind = "click" if chosen else None
    if not chosen and view_lookback_ms is not None:
        chosen = inside(views, view_lookback_ms)
        kind = "view" if chosen else None
    return sorted(chosen, key=lambda t: t[0]), kind


def attribute(spec, conv_ms, revenue, clicks, views):
    """{(campaign, ad): micros} for one conversion (empty: unattributed), and the kind chosen."""
    tps, kind = choose(conv_ms, clicks, views, spec["lookback_ms"], spec["view_lookback_ms"])
    ws = weights(spec["model"], [t[0] for t in tps], spec["half_life_ms"])
    shares = largest_remainder(revenue, ws)
    if shares is None:
        return {}, None
    credit = {}
    for t, share, w in zip(tps, shares, ws):
        if spec["model"] == "last_click" and w == 0:
            continue
        key = (t[1], t[2])
        credit[key] = credit.get(key, 0) + share
    assert sum(credit.values()) == revenue
    return credit, kind


def make_spec(model, params):
    """The plugin's model settings from its parameters (name -> text), as attribution-core
    reads them."""
    allowed = {"lookback_secs", "view_lookback_secs"} | ({"half_life_secs"} if model == "time_decay" else set())
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)} for a {model} plugin")

    def secs(name, default):
        v = params.get(name)
        if v is None:
            return default
        v = str(v).strip()
        if not v.isdigit():
            raise ValueError(f"{name} = {v!r}: not a whole number of seconds")
        return int(v)

    lookback = secs("lookback_secs", 0)
    view = secs("view_lookback_secs", 0)
    half = secs("half_life_secs", DEFAULT_HALF_LIFE_SECS)
    if model == "time_decay" and half == 0:
        raise ValueError("half_life_secs must be > 0")
    return {"model": model, "lookback_ms": lookback * 1000 if lookback else None,
            "view_lookback_ms": view * 1000 if view else None,
            "half_life_ms": half * 1000 if model == "time_decay" else None, "params": dict(params)}


# ---------------------------------------------------------------------------------------------
# Self-test of the models (no tables)


def self_test():
    problems = []

    def eq(what, got, want):
        if got != want:
            problems.append(f"{what}: got {got}, want {want}")

    day = 86_400_000
    spl = lambda model, r, times, h=None: largest_remainder(r, weights(model, times, h))  # noqa: E731
    t3 = [1000, 2000, 3000]
    eq("linear 10/3", spl("linear", 10, t3), [3, 3, 4])
    eq("linear 2/3", spl("linear", 2, t3), [0, 1, 1])
    eq("linear 5/8", spl("linear", 5, list(range(8))), [0, 0, 0, 1, 1, 1, 1, 1])
    eq("position 7/2", spl("position_based", 7, t3[:2]), [3, 4])
    eq("position 100/3", spl("position_based", 100, t3), [40, 20, 40])
    eq("position 3/4", spl("position_based", 3, list(range(4))), [1, 0, 1, 1])
    eq("position 1000001/5", spl("position_based", 1_000_001, list(range(5))),
       [400_000, 66_667, 66_667, 66_667, 400_000])
    tdt = [0, day, 2 * day]
    eq("decay weights", weights("time_decay", tdt, day), [1 << 60, 1 << 61, 1 << 62])
    eq("decay 10", spl("time_decay", 10, tdt, day), [1, 3, 6])
    eq("decay half", decay_weight(day // 2, day), HALF_ROOTS[0])
    eq("decay 1e6 over half a half-life", spl("time_decay", 1_000_000, [0, day // 2], day), [414_214, 585_786])
    eq("decay far", decay_weight(63 * day, day), 0)
    eq("decay 62", decay_weight(62 * day, day), 1)
    eq("last click", spl("last_click", 10, t3), [0, 0, 10])
    eq("negative", largest_remainder(-10, [1, 1, 1]), [-3, -3, -4])
    eq("table", HALF_ROOTS[:2], [3260954456333195553, 3877950241171266237])
    # Click beats view; views only when on; lookbacks inclusive.
    spec = make_spec("linear", {"lookback_secs": "4", "view_lookback_secs": "86400"})
    T = 1_800_000_000_000
    clicks, views = [(T - 5000, 2, 2)], [(T - 1000, 1, 1), (T - 10, 3, 3)]
    eq("views when the click is outside", attribute(spec, T, 10, clicks, views), ({(1, 1): 5, (3, 3): 5}, "view"))
    eq("click inside", attribute(spec, T, 10, [(T - 4000, 2, 2)], views), ({(2, 2): 10}, "click"))
    eq("views off", attribute(make_spec("linear", {"lookback_secs": "4"}), T, 10, clicks, views), ({}, None))
    eq("after the conversion", attribute(make_spec("linear", {}), T, 10, [(T + 1, 1, 1)], []), ({}, None))
    eq("last click tie: the first of the latest",
       attribute(make_spec("last_click", {}), T, 10, [(T - 9, 9, 9), (T - 1, 1, 1), (T - 1, 2, 2)], []),
       ({(1, 1): 10}, "click"))
    # The host's touchpoint rule, on a small stream by hand.
    def ev(part, off, typ, t, camp="A", ad="a", rev=0, late=False, dup=False, user="u"):
        return {"stream": "s", "partition": part, "offset": off, "type": typ, "t": t, "campaign": camp, "ad": ad,
                "user": user, "revenue": rev, "late": late, "dup": dup, "id": f"{part}-{off}"}

    evs = [
        ev(0, 0, "click", 1000, ad="a1"), ev(0, 1, "click", 2000, ad="a2"), ev(0, 2, "impression", 2500, "B", "b1"),
        ev(0, 3, "click", 2900, ad="dup", dup=True),      # a copy: not remembered
        ev(0, 4, "click", 500, ad="old"),                 # older than both: cut by max_touchpoints = 2
        ev(0, 5, "conversion", 3000, rev=10),
        ev(0, 6, "conversion", 3000, rev=10, late=True),  # late: in no window
        ev(0, 7, "click", 2999, ad="after"),              # received after the conversion
        ev(1, 0, "impression", 2800, "B", "b2"), ev(1, 1, "conversion", 3000, rev=7),   # another partition
        ev(2, 0, "click", 100, ad="l", late=True), ev(2, 1, "conversion", 200, rev=3),  # a late click counts
        ev(2, 2, "conversion", 200, rev=4, user="v"),                                      # another user
    ]
    host = argparse.Namespace(lookback_secs=604800, view_lookback_secs=86400, max_touchpoints=2, max_views=2)
    specs = {"lin": make_spec("linear", {}), "pos-views": make_spec("position_based", {"view_lookback_secs": "60"})}
    got = recount(evs, specs, host)
    eq("recount linear", sorted((c["id"], sorted(c["credit"].items())) for c in got["lin"]),
       [("0-5", [(("A", "a1"), 5), (("A", "a2"), 5)]), ("1-1", []), ("2-1", [(("A", "l"), 3)]), ("2-2", [])])
    eq("recount view-through", sorted((c["id"], sorted(c["credit"].items()), c["kind"]) for c in got["pos-views"]),
       [("0-5", [(("A", "a1"), 5), (("A", "a2"), 5)], "click"), ("1-1", [(("B", "b2"), 7)], "view"),
        ("2-1", [(("A", "l"), 3)], "click"), ("2-2", [], None)])
    host.max_touchpoints = 1
    eq("recount cap 1", [sorted(c["credit"].items()) for c in recount(evs, specs, host)["lin"] if c["id"] == "0-5"],
       [[(("A", "a2"), 10)]])
    for bad in ({"half_life_secs": "60"}, {"lookback": "1"}, {"lookback_secs": "-1"}):
        try:
            make_spec("linear", bad)
            problems.append(f"params {bad} accepted")
        except ValueError:
            pass
    # Generated cases: exact sums, no negative share, each share within 1 of its quota, and the
    # fixed-point weights within 1e-9 of 2^(-age/h).
    rng = random.Random(2026)
    for case in range(20_000):
        model = rng.choice(KNOWN_MODELS)
        n = rng.randrange(1, 13)
        times = sorted(rng.randrange(0, 8 * day) for _ in range(n))
        h = rng.choice([1, day, rng.randrange(1, 30 * day)])
        r = rng.choice([0, rng.randrange(1, 10), 999_999_999_999_999_999, rng.randrange(10 ** 18)])
        ws = weights(model, times, h)
        sh = largest_remainder(r, ws)
        if sum(sh) != r or min(sh) < 0:
            problems.append(f"case {case}: {model} {r} {times}: {sh}")
        s = sum(ws)
        for x, w in zip(sh, ws):
            if not (x * s - s < r * w < x * s + s):
                problems.append(f"case {case}: share {x} not within 1 of {r}*{w}/{s}")
        if model == "time_decay":
            for t, w in zip(times, ws):
                want = 2.0 ** 62 * 2.0 ** (-(max(times) - t) / h)
                if abs(w - want) > want * 1e-9 + 2:
                    problems.append(f"case {case}: decay weight {w} vs {want}")
    for p in problems[:50]:
        print(p)
    print(f"self-test: {len(problems)} problems")
    return 1 if problems else 0


def cross_check(path):
    """Compares this script's models with attribution-core's on the cases its test
    `cases_for_the_python_reference` wrote (ATTRIBUTION_CASES_OUT=FILE cargo test -p attribution-core)."""
    bad = n = 0
    with open(path) as f:
        for line in f:
            c = json.loads(line)
            spec = {"model": c["model"], "lookback_ms": c["lookback_ms"], "view_lookback_ms": c["view_lookback_ms"],
                    "half_life_ms": c["half_life_ms"]}
            clicks = [(t, camp, ad) for t, camp, ad, k in c["touches"] if k == "click"]
            views = [(t, camp, ad) for t, camp, ad, k in c["touches"] if k == "view"]
            credit, _ = attribute(spec, c["t"], c["revenue"], clicks, views)
            theirs = {(camp, ad): m for camp, ad, m in c["credits"]}
            n += 1
            if credit != theirs:
                bad += 1
                if bad <= 10:
                    print(f"differs: {line.strip()}\n  python: {sorted(credit.items())}")
    print(f"cross-check: {n} cases, {bad} differ")
    return 1 if bad or not n else 0


# ---------------------------------------------------------------------------------------------
# The tables


def ms_column(table, name):
    """A timestamp column as integer milliseconds since the epoch."""
    import pyarrow as pa

    col = table.column(name)
    unit = col.type.unit
    ints = col.cast(pa.int64()).to_pylist()
    div = {"s": None, "ms": 1, "us": 1000, "ns": 1_000_000}[unit]
    if div is None:
        return [x * 1000 for x in ints]
    return [x // div for x in ints]


def iso_window(win):
    from datetime import datetime, timezone

    return "[" + " .. ".join(datetime.fromtimestamp(x / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                             for x in win) + ")"


def micros(d):
    """A DECIMAL revenue (Decimal or None) as integer micro-units, exactly."""
    if d is None:
        return 0
    m = Decimal(d).scaleb(6)
    if m != m.to_integral_value():
        raise ValueError(f"revenue {d} is not whole micros")
    return int(m)


def props(snap):
    s = snap.summary
    extra = getattr(s, "additional_properties", None)
    return dict(extra) if extra is not None else {k: s[k] for k in s}


def recorded_params(metrics_t):
    """name -> set of params (as sorted tuples of (key, value)) from the commits' lineage."""
    out = defaultdict(set)
    for snap in metrics_t.snapshots():
        raw = props(snap).get("admetrics.plugins")
        if not raw:
            continue
        try:
            builds = json.loads(raw)
        except ValueError:
            continue
        for b in builds if isinstance(builds, list) else []:
            p = b.get("params") or {}
            if isinstance(p, list):
                p = {k: v for k, v in p}
            # max_dimension_values is the host's, not the plugin's (never passed to init).
            out[b.get("name")].add(tuple(sorted((str(k), str(v)) for k, v in p.items()
                                                if k != "max_dimension_values")))
    return out


def read_events(events_t):
    cols = ["event_id", "event_type", "event_time", "campaign_id", "ad_id", "user_id", "revenue",
            "kafka_partition", "kafka_offset", "is_late", "is_duplicate"]
    names = {f.name for f in events_t.schema().fields}
    has_stream = "stream" in names
    t = events_t.scan(selected_fields=tuple(cols + (["stream"] if has_stream else []))).to_arrow()
    times = ms_column(t, "event_time")
    d = t.to_pydict()
    n = t.num_rows
    evs = []
    for i in range(n):
        evs.append({
            "type": d["event_type"][i], "t": times[i], "campaign": d["campaign_id"][i], "ad": d["ad_id"][i],
            "user": d["user_id"][i], "revenue": micros(d["revenue"][i]) if d["event_type"][i] == "conversion" else 0,
            "stream": d["stream"][i] if has_stream else None, "partition": d["kafka_partition"][i],
            "offset": d["kafka_offset"][i], "late": d["is_late"][i], "dup": d["is_duplicate"][i],
            "id": d["event_id"][i],
        })
    return evs


def insert(lst, tp, cap):
    """Host rule: sorted by time, after equal times, oldest dropped past `cap`."""
    i = len(lst)
    while i > 0 and lst[i - 1][0] > tp[0]:
        i -= 1
    lst.insert(i, tp)
    if len(lst) > cap:
        lst.pop(0)


def recount(evs, specs, a):
    """Per plugin: list of conversions (with their credit) in the host's order, and stats."""
    views_on = any(s["view_lookback_ms"] is not None for s in specs.values())
    by_share = defaultdict(list)
    for e in evs:
        if not e["dup"]:
            by_share[(e["stream"], e["partition"])].append(e)
    host_click_ms, host_view_ms = a.lookback_secs * 1000, a.view_lookback_secs * 1000
    out = {name: [] for name in specs}
    for share, lst in by_share.items():
        lst.sort(key=lambda e: e["offset"])
        offsets = [e["offset"] for e in lst]
        if len(set(offsets)) != len(offsets):
            raise SystemExit(f"share {share}: kafka_offset repeats among non-duplicate events")
        clicks, views = defaultdict(list), defaultdict(list)
        for e in lst:
            tp = (e["t"], e["campaign"], e["ad"])
            if e["type"] == "click":
                insert(clicks[e["user"]], tp, a.max_touchpoints)
            elif e["type"] == "impression":
                if views_on:
                    insert(views[e["user"]], tp, a.max_views)
            elif e["type"] == "conversion" and not e["late"]:
                t = e["t"]
                cs = [c for c in clicks.get(e["user"], []) if t - host_click_ms <= c[0] <= t]
                vs = [v for v in views.get(e["user"], []) if t - host_view_ms <= v[0] <= t]
                for name, spec in specs.items():
                    credit, kind = attribute(spec, t, e["revenue"], cs, vs if spec["view_lookback_ms"] else [])
                    out[name].append({"t": t, "campaign": e["campaign"], "revenue": e["revenue"],
                                      "credit": credit, "kind": kind, "id": e["id"]})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--cross-check", metavar="FILE")
    ap.add_argument("--catalog")
    ap.add_argument("--warehouse")
    ap.add_argument("--plugin", action="append", default=[])
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--lookback-secs", type=int, default=604800)
    ap.add_argument("--view-lookback-secs", type=int, default=86400)
    ap.add_argument("--max-touchpoints", type=int, default=8)
    ap.add_argument("--max-views", type=int)
    ap.add_argument("--min-windows", type=int, default=1)
    ap.add_argument("--min-attributed", type=int, default=1)
    ap.add_argument("--min-view-credited", type=int, default=0)
    ap.add_argument("--min-unattributed", type=int, default=0)
    ap.add_argument("--min-split", type=int, default=0)
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    if a.self_test:
        sys.exit(self_test())
    if a.cross_check:
        sys.exit(cross_check(a.cross_check))
    if not a.catalog or not a.warehouse:
        ap.error("--catalog and --warehouse are required (or --self-test)")
    if a.max_views is None:
        a.max_views = a.max_touchpoints

    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog

    try:
        cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.catalog}", warehouse=f"file://{a.warehouse}")
        metrics_t = cat.load_table("ads.campaign_metrics")
        events_t = cat.load_table("ads.campaign_events")
    except Exception as e:  # noqa: BLE001  (any reader failure is the answer)
        print(f"cannot open the tables: {e!r}")
        sys.exit(2)

    rows = metrics_t.scan().to_arrow()
    for col, typ in (("shadow", pa.bool_()), ("restatement", pa.string()), ("stream", pa.string())):
        if col not in rows.column_names:  # tables written before the column
            rows = rows.append_column(col, pa.nulls(rows.num_rows, typ))
    has_dims = "dimensions" in rows.column_names
    starts, ends = ms_column(rows, "window_start"), ms_column(rows, "window_end")
    rows = rows.drop_columns(["window_start", "window_end"]).append_column(
        "ws", pa.array(starts, pa.int64())).append_column("we", pa.array(ends, pa.int64()))
    all_rows = rows.to_pylist()

    # Which plugins, which models, which parameters.
    present = sorted({r["plugin"] for r in all_rows})
    wanted = {}
    for p in a.plugin:
        name, _, model = p.partition("=")
        model = model or MODELS.get(name)
        if model not in KNOWN_MODELS:
            ap.error(f"--plugin {p}: name a model ({', '.join(KNOWN_MODELS)})")
        wanted[name] = model
    if not wanted:
        wanted = {n: MODELS[n] for n in present if n in MODELS}
    if not wanted:
        print(f"no attribution plugin has rows (plugins present: {present})")
        sys.exit(2)
    overrides = defaultdict(dict)
    for p in a.param:
        key, eqs, value = p.partition("=")
        name, dot, k = key.rpartition(".")
        if not eqs or not dot:
            ap.error(f"--param {p}: expected NAME.KEY=VALUE")
        overrides[name][k] = value
    recorded = recorded_params(metrics_t)
    problems = []
    specs = {}
    for name, model in wanted.items():
        rec = recorded.get(name, set())
        if len(rec) > 1 and not overrides.get(name):
            problems.append(f"{name}: its rows were written with several parameter sets {sorted(rec)}: "
                            "give --param to say which to recount with")
        params = dict(sorted(rec)[0]) if rec else {}
        for k, v in overrides.get(name, {}).items():
            if k in params and params[k] != v:
                print(f"note: {name}.{k} = {v} given, {params[k]} recorded in the lineage")
            params[k] = v
        try:
            specs[name] = make_spec(model, params)
        except ValueError as e:
            problems.append(f"{name}: {e}")
    if not specs:
        for p in problems:
            print(p)
        sys.exit(2)

    conversions = recount(read_events(events_t), specs, a)

    for name, spec in specs.items():
        mine = [r for r in all_rows
                if r["plugin"] == name and r["restatement"] is None and not r["shadow"]
                and r["metric"] in METRICS
                and (not has_dims or r["dimensions"] in (None, "", []))]
        if not mine:
            problems.append(f"{name}: no live rows")
            continue
        # Latest revision per share, then per window the shares summed.
        latest = {}
        for r in mine:
            k = (r["ws"], r["we"], r["campaign_id"], r["ad_id"], r["metric"], r["stream"], r["kafka_partition"])
            if k not in latest or r["revision"] > latest[k]["revision"]:
                latest[k] = r
        windows = defaultdict(lambda: {"final": True, "withheld": 0, "rows": defaultdict(lambda: [0, 0])})
        not_whole = 0
        for k, r in latest.items():
            w = windows[(k[0], k[1])]
            w["final"] &= bool(r["is_final"])
            if r["withheld"]:
                w["withheld"] += 1
                continue
            m = round(r["numerator"] * 1_000_000)
            if abs(m / 1_000_000 - r["numerator"]) > 1e-9 * max(1.0, abs(r["numerator"])) or r["numerator"] < 0:
                not_whole += 1
            cell = w["rows"][(k[2], k[3], k[4])]
            cell[0] += m
            cell[1] += int(r["denominator"])
        if not_whole:
            problems.append(f"{name}: {not_whole} rows whose numerator is not whole micro-units")
        # The window of each conversion: the interval of a row of its campaign that holds it
        # (day windows depend on the campaign's time zone), else the plugin's uniform grid.
        by_campaign = defaultdict(set)
        for (ws, we, c, _, metric, _, _) in latest:
            if metric == "revenue":  # keyed by the conversion's own campaign
                by_campaign[c].add((ws, we))
        by_campaign = {c: sorted(v) for c, v in by_campaign.items()}
        sizes = {we - ws for (ws, we) in windows}
        grid = sizes.pop() if len(sizes) == 1 else None
        if grid is not None and any(ws % grid for (ws, _) in windows):
            grid = None

        def window_of(c, t):
            iv = by_campaign.get(c, [])
            i = bisect.bisect_right(iv, (t, float("inf"))) - 1
            if i >= 0 and iv[i][0] <= t < iv[i][1]:
                return iv[i]
            if grid is not None:
                return (t - t % grid, t - t % grid + grid)
            return None

        expect = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        unplaced = 0
        stats = defaultdict(int)
        crossing = defaultdict(set)  # window -> campaigns whose conversions credit another's ads, and those
        for cv in conversions[name]:
            win = window_of(cv["campaign"], cv["t"])
            if win is None:
                unplaced += 1
                continue
            e = expect[win]
            e[(cv["campaign"], None, "revenue")][0] += cv["revenue"]
            e[(cv["campaign"], None, "revenue")][1] += 1
            cell = e[(cv["campaign"], None, "unattributed_revenue")]
            if not cv["credit"]:
                cell[0] += cv["revenue"]
                cell[1] += 1
            for (c, ad), share in cv["credit"].items():
                e[(c, ad, "attributed_revenue")][0] += share
                e[(c, ad, "attributed_revenue")][1] += 1
                if c != cv["campaign"]:
                    crossing[win] |= {c, cv["campaign"]}
            if windows.get(win, {}).get("final") and not windows[win]["withheld"]:
                stats["conversions"] += 1
                stats["attributed"] += bool(cv["credit"])
                stats["view_credited"] += cv["kind"] == "view"
                stats["split"] += len(cv["credit"]) > 1
        if unplaced:
            problems.append(f"{name}: {unplaced} conversions in no window of the plugin's rows "
                            "(and the windows are not a uniform grid)")
        last_final = max((w for w, v in windows.items() if v["final"]), default=None)
        shown = 0
        compared = cross = 0

        def report(msg):
            nonlocal shown
            shown += 1
            if a.verbose or shown <= 20:
                problems.append(f"{name}: {msg}")
            elif shown == 21:
                problems.append(f"{name}: ... more mismatches (--verbose lists them all)")

        for win in sorted(set(expect) | set(windows)):
            got = windows.get(win)
            if got is None:
                if last_final is not None and win < last_final:
                    report(f"window {iso_window(win)}: {len(expect[win])} expected rows, none written")
                continue
            if got["withheld"]:
                report(f"window {iso_window(win)}: {got['withheld']} withheld shares")
                continue
            if not got["final"]:
                continue
            compared += 1
            want = expect.get(win, {})
            for key in sorted(set(want) | set(got["rows"]), key=lambda k: (k[0], k[1] or "", k[2])):
                w, g = tuple(want.get(key, (0, 0))), tuple(got["rows"].get(key, (0, 0)))
                if w != g:
                    report(f"window {iso_window(win)} {key}: rows give (micros, count) {g}, recount {w}")
            # The identities, from the rows alone.
            tot = defaultdict(int)
            per = defaultdict(lambda: defaultdict(int))
            for (c, ad, metric), (m, _) in got["rows"].items():
                tot[metric] += m
                per[c][metric] += m
            if tot["attributed_revenue"] + tot["unattributed_revenue"] != tot["revenue"]:
                report(f"window {iso_window(win)}: attributed {tot['attributed_revenue']} + unattributed "
                       f"{tot['unattributed_revenue']} != revenue {tot['revenue']}")
            for c, m in per.items():
                if c in crossing[win]:
                    cross += 1
                elif m["attributed_revenue"] + m["unattributed_revenue"] != m["revenue"]:
                    report(f"window {iso_window(win)} campaign {c}: attributed {m['attributed_revenue']} + unattributed "
                           f"{m['unattributed_revenue']} != revenue {m['revenue']}")
        if compared < a.min_windows:
            problems.append(f"{name}: {compared} final windows compared, want at least {a.min_windows}")
        if stats["attributed"] < a.min_attributed:
            problems.append(f"{name}: {stats['attributed']} attributed conversions in final windows, "
                            f"want at least {a.min_attributed}")
        if stats["conversions"] - stats["attributed"] < a.min_unattributed:
            problems.append(f"{name}: {stats['conversions'] - stats['attributed']} unattributed conversions in "
                            f"final windows, want at least {a.min_unattributed}")
        if stats["split"] < a.min_split:
            problems.append(f"{name}: {stats['split']} conversions split over several ads, "
                            f"want at least {a.min_split}")
        if spec["view_lookback_ms"] is not None and stats["view_credited"] < a.min_view_credited:
            problems.append(f"{name}: {stats['view_credited']} conversions credited to views, "
                            f"want at least {a.min_view_credited}")
        print(f"{name} ({spec['model']}, params {spec['params']}): {compared} final windows, "
              f"{stats['conversions']} conversions, {stats['attributed']} attributed "
              f"({stats['split']} split over several ads, {stats['view_credited']} by views), "
              f"{cross} campaign cells skipped for the per-campaign identity (credit across campaigns), "
              f"{shown} mismatches")

    for p in problems:
        print(p)
    print(f"{len(specs)} plugins checked, {len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
