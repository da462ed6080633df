#!/usr/bin/env bash
# Top campaigns from the demo's Iceberg tables via DuckDB (sets up .venv on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python
exec .venv/bin/python scripts/query.py "$@"
