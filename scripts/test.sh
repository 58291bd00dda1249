#!/usr/bin/env bash
# Create the environment if needed, lint, and run the whole test suite (slow end-to-end checks included).
source "$(dirname "$0")/env.sh"
ruff check featcache tests scripts
python -m pytest -q "$@"
