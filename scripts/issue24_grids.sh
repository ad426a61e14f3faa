#!/usr/bin/env bash
# Issue 24's grids in the order their results depend on each other, then their reports into assets/results/.
# Every grid resumes (finished cells skip, interrupted ones continue), so rerun this until it prints "all done":
#   setsid nohup bash scripts/issue24_grids.sh > grid_issue24.log 2>&1 &
# Omniglot first (the headline), its 25k continuation (copies the finished 10k cells), then the synthetic proxy.
set -u
cd "$(dirname "$0")/.."
OMNI=(config/omniglot.py config/omniglot_small.py)
run() { echo "=== $(date +%T) python grid.py $*"; python grid.py "$@" || failed=1; }
failed=0
run "${OMNI[@]}" config/grid_omniglot_levers.py
run "${OMNI[@]}" config/grid_omniglot_long.py
run config/grid_levers.py
run config/grid_levers_emergence.py
run config/grid_levers_long.py
[ "$failed" = 0 ] || { echo "some cells failed: rerun this script"; exit 1; }
for pair in omniglot_levers3:out_omniglot_levers3 omniglot_long:out_omniglot_long levers:out_levers \
            levers_emergence:out_levers_emergence levers_long:out_levers_long; do
  python scripts/results_table.py --collect "${pair%%:*}" "${pair#*:}"
done
echo "all done: assets/results/ and the README/RESULTS blocks are rewritten; commit them"
