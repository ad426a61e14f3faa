# The long horizon where weight decay should win if it ever does: grokking-style runs need decay exponent
# lr*wd*steps ~ 100 (AdamW lr 1e-3, wd 1, ~1e5 steps). Here the synthetic default (constant lr 2e-3) at 50k steps
# and wd 1 reaches 2e-3 * 1 * 50000 = 100. Does Few (100 classes) with decay switch from memorising to ICL late,
# and if not, does IWL stay at 1.0 while the decayed weights' norm settles? Seeds 0-2 for every cell:
#   python grid.py config/grid_long_horizon.py      # 12 cells, ~20 min each on one core
classes = '100'
regularizers = 'none,wd=1,wd=1@mlp+head'
extra_cells = '400:wd=1@mlp+head'
seeds = '0,1,2'
synthetic_args = '--max_iters=50000 --n_eval_episodes=512 --eval_interval=1000 --log_interval=1000'
phase = True
grid_dir = 'out_long_horizon'
