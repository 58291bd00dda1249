#!/usr/bin/env bash
# Create the environment if needed, lint, and run the whole test suite (slow end-to-end checks included).
#   bash scripts/test.sh           everything (what CI runs)
#   bash scripts/test.sh --fast    the quick lane: tests not marked slow
#   other arguments go to pytest, e.g. bash scripts/test.sh -k heads -x
source "$(dirname "$0")/env.sh"
ARGS=()
for a in "$@"; do
  if [ "$a" = "--fast" ]; then ARGS+=(-m "not slow"); else ARGS+=("$a"); fi
done
ruff check featcache tests scripts
python -m pytest -q ${ARGS[@]+"${ARGS[@]}"}
