#!/usr/bin/env bash
# Top campaigns from the demo's Iceberg tables via DuckDB (sets up .venv on first use).
#   scripts/query.sh --why --window T --campaign C --metric M [--ad A]: why a value is what it
#   is (scripts/lineage.py: its shares, plugin builds, runs, commits and events).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python
if [[ ${1:-} == --why ]]; then
  shift
  exec .venv/bin/python scripts/lineage.py "$@"
fi
exec .venv/bin/python scripts/query.py "$@"
