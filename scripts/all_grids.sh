#!/usr/bin/env bash
# Every grid a claim in RESULTS.md rests on, then their reports into assets/results/ and the README/RESULTS blocks.
# The list is assets/results/index.json (README's order, which is also the order their results depend on each other:
# a grid that continues another's cells comes after it). Each grid resumes (finished cells skip, interrupted ones
# continue), so rerun this until it prints "all done" (one thread per cell, two cells at a time on 2 cores):
#   setsid nohup bash scripts/all_grids.sh > all_grids.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
entries=$(python -c "import json
for r in json.load(open('assets/results/index.json')): print(r['report'], r['out'].rstrip('/'), r['command'])") || exit 1
failed=0
while read -r report out command; do
  echo "=== $(date +%T) $command"
  $command < /dev/null || failed=1
done <<< "$entries"
[ "$failed" = 0 ] || { echo "some cells failed: rerun this script"; exit 1; }
while read -r report out command; do
  python scripts/results_table.py --collect "$report" "$out" || exit 1
done <<< "$entries"
echo "all done: assets/results/ and the README/RESULTS blocks are rewritten; commit them"
