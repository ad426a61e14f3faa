# The experiment as posed with the posed model: the paper's 12 layers (d=64, 8 heads) on the proxy, Few (100) / Many
# (1600) x AdamW decay {0, 3e-4, 1e-3, 3e-3, 1e-2} x seeds 0-2 (config/grid.py's axes), the 2-layer proxy's schedule.
#   python grid.py config/grid_depth12.py        # 30 cells, ~8 min each on one idle core
# Budget, declared from Many before any Few cell ran (config/grid_depth12_budget.py, seeds 0-2, to 12k steps): at 12
# layers Many's ICL leaves chance at ~1.2k, passes 0.95 at 1.5k on every seed and peaks (best 3-eval mean) at 0.995
# (3.25k), 0.994 (2.25k) and 0.996 (2.5k), then fades as IWL rises (seed 0: 0.96 at 5k, 0.78 at 12k with IWL 0.96).
# 4000 steps, the 2-layer budget, holds every seed's peak.
synthetic_args = '--n_layer=12 --max_iters=4000 --n_eval_episodes=512 --eval_interval=250 --log_interval=250'
grid_dir = 'out_depth12'
