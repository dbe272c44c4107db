#!/usr/bin/env bash
# The README's test command: install everything, then run the default test tier (pyproject: -m "not slow";
# pass -m slow for the slow tier, -m "" for both).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
