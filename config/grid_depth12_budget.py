# The budget for the posed model on the proxy, declared from Many before any Few cell runs: Many (1600 classes) without
# decay at 12 layers (d=64, 8 heads), seeds 0-2, over 12k steps (3x the 2-layer budget), the 2-layer proxy's schedule
# otherwise (constant lr 2e-3 after 200 warmup steps, batch 64). Where Many's ICL peaks or levels off is the budget of
# config/grid_depth12.py and its siblings.
#   python grid.py config/grid_depth12_budget.py      # 3 cells, ~25 min each on one core
classes = '1600'
regularizers = 'none'
seeds = '0,1,2'
synthetic_args = '--n_layer=12 --max_iters=12000 --n_eval_episodes=512 --eval_interval=250 --log_interval=250'
phase = True
grid_dir = 'out_depth12_budget'
