#!/usr/bin/env bash
# Current metrics from the demo's Iceberg tables via DuckDB (sets up .venv on first use).
#   scripts/query.sh [--minutes 15] [--limit 10] [--attribution PLUGIN] [--span minute|hour|day]:
#   top campaigns (revenue of last click, or of the attribution model PLUGIN).
#   scripts/query.sh --by country,device [--campaign C]: CTR and CVR per breakdown cell.
#   scripts/query.sh --models: attributed revenue per campaign, one column per attribution model.
#   scripts/query.sh --plugin reach [--span day]: a plugin's current values per window and key.
#   (scripts/query.py --help says more.)
#   scripts/query.sh --why --window T --campaign C --metric M [--ad A] [--plugin P] [--dimensions
#   CELL]: why a value is what it
#   is (scripts/lineage.py: its shares, plugin builds, runs, commits and events).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python
if [[ ${1:-} == --why ]]; then
  shift
  exec .venv/bin/python scripts/lineage.py "$@"
fi
exec .venv/bin/python scripts/query.py "$@"
