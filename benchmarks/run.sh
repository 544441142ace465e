#!/usr/bin/env bash
# Run every benchmark and print its numbers: bash benchmarks/run.sh [name-filter]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
for b in benchmarks/bench_*.py; do
  [ -n "${1:-}" ] && [[ "$b" != *"$1"* ]] && continue
  echo "== $b"
  .venv/bin/python "$b"
done
