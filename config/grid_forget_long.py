# Forgetting at Few over 12k steps (3x config/grid_forget.py's budget): whole-run forgetting every 50 steps and
# temporary forgetting (every 50 steps until step 6000), against Many (1600) without a lever, seeds 0-2
# (data_seed 0 in every cell). Does ICL arrive late, or come back once forgetting stops?
#   python grid.py config/grid_forget_long.py      # 12 cells, ~3 min each on one core
classes = '100'
regularizers = 'none,forget_every=50,forget_every=50+forget_until=6000'
extra_cells = '1600:none'
seeds = '0,1,2'
synthetic_args = '--max_iters=12000 --n_eval_episodes=512 --eval_interval=250 --log_interval=250'
phase = True
grid_dir = 'out_forget_long'
