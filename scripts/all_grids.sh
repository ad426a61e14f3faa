#!/usr/bin/env bash
# Every grid a claim in RESULTS.md rests on, in the order their results depend on each other, then their reports into
# assets/results/ and the README/RESULTS blocks. Each grid resumes (finished cells skip, interrupted ones continue),
# so rerun this until it prints "all done" (one thread per cell, two cells at a time on 2 cores):
#   setsid nohup bash scripts/all_grids.sh > all_grids.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
OMNI=(config/omniglot.py config/omniglot_small.py)
run() { echo "=== $(date +%T) python grid.py $*"; python grid.py "$@" || failed=1; }
failed=0
run                                                   # the experiment as posed, proxy (30 cells)
run "${OMNI[@]}"                                      # the experiment as posed, Omniglot, 10k (30 cells)
run "${OMNI[@]}" config/grid_posed_omniglot_long.py   # ... continued to 25k
run config/grid_capacity.py                           # the posed grid's capacity check: d=48 / d=96, proxy
run config/grid_dose.py                               # the dose-response of decay by its exponent, proxy (42 cells)
run config/grid_dose.py config/grid_dose_lr2x.py      # ... at twice the learning rate (24 cells)
run "${OMNI[@]}" config/grid_dose_omniglot.py         # ... on Omniglot, 10k (24 cells)
run config/grid_levers.py                             # levers x class count, proxy (237 cells)
run "${OMNI[@]}" config/grid_omniglot_levers.py       # levers x class count, Omniglot (42 cells)
run "${OMNI[@]}" config/grid_omniglot_long.py         # Few over time, Omniglot, 25k
run config/grid_levers_emergence.py                   # Few over time, proxy, 12k
run config/grid_swap_confirm.py                       # swap 0.8 at 100 classes on fresh seeds and data_seed, 12k
run config/grid_levers_long.py                        # persistence at 1600, proxy, 25k
run config/grid_forget.py                             # forgetting at Few, proxy, 4k (18 cells)
run config/grid_forget_long.py                        # ... over 12k (12 cells)
run config/grid_long_horizon.py                       # the long horizon, proxy, 50k
run config/grid_axes.py                               # burstiness x Zipf (one seed)
[ "$failed" = 0 ] || { echo "some cells failed: rerun this script"; exit 1; }
for pair in posed:out_grid posed_omniglot:out_grid_omniglot_omniglot_small posed_omniglot_long:out_posed_omniglot_long \
            capacity:out_capacity dose:out_dose dose_lr2x:out_dose_lr2x dose_omniglot:out_dose_omniglot \
            swap_confirm:out_swap_confirm levers:out_levers omniglot_levers3:out_omniglot_levers3 omniglot_long:out_omniglot_long \
            levers_emergence:out_levers_emergence levers_long:out_levers_long long_horizon:out_long_horizon axes:out_axes \
            forget:out_forget forget_long:out_forget_long; do
  python scripts/results_table.py --collect "${pair%%:*}" "${pair#*:}"
done
echo "all done: assets/results/ and the README/RESULTS blocks are rewritten; commit them"
