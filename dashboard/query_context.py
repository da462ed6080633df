#!/usr/bin/env python3
"""Writes each chart's `query_context` in dashboard/bundle/charts/*.yaml: the chart-data request
the dashboard's front end sends for it, as a real browser recorded it.

    .venv-superset/bin/python dashboard/browser_check.py --url http://127.0.0.1:8088 --out browser.json
    python3 dashboard/query_context.py browser.json

Why: Superset's cache warm-up (`PUT /api/v1/chart/warm_up_cache`, what dashboard/warm_cache.py
and Superset's own Celery task call) runs a chart's stored query context. A chart saved in
Superset's editor gets one; a chart imported from YAML has only what the YAML holds, and without
it the warm-up fails ("Chart's query context does not exist"). The warm entry is found by a
viewer only if the stored query is the one the dashboard asks for (Superset's cache key is the
query, not the chart), so it is copied from a real load instead of written by hand. Superset's
importer points the context's datasource at the imported dataset, so the ids recorded here do
not matter. tests/verify_warm_cache.py (run by tests/dashboard.rs) fails when a chart's stored
query no longer matches what the browser sends; re-run this script with a fresh recording then.
"""
import json
import re
import sys
from pathlib import Path

import yaml

CHARTS = Path(__file__).resolve().parent / "bundle" / "charts"


def yaml_single_quoted(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    recorded = json.loads(Path(sys.argv[1]).read_text())["charts"]
    changed = 0
    for f in sorted(CHARTS.glob("*.yaml")):
        text = f.read_text()
        name = yaml.safe_load(text)["slice_name"]
        if name not in recorded or recorded[name].get("request") is None:
            sys.exit(f"query_context: {sys.argv[1]} has no request for the chart {name!r} ({f.name})")
        body = dict(recorded[name]["request"], force=False)
        line = "query_context: " + yaml_single_quoted(json.dumps(body, separators=(",", ":")))
        new, n = re.subn(r"^query_context:.*$", lambda _: line, text, count=1, flags=re.M)
        if n != 1:
            sys.exit(f"query_context: {f.name} has no top-level query_context line")
        assert json.loads(yaml.safe_load(new)["query_context"]) == body, f.name
        if new != text:
            f.write_text(new)
            changed += 1
    print(f"query_context: {changed} of {len(list(CHARTS.glob('*.yaml')))} chart files updated")


if __name__ == "__main__":
    main()
