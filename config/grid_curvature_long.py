# The curvature edit at Few over 12k steps (3x config/grid_curvature.py's budget), the same two schedules, against
# Few and Many (1600) without a lever, seeds 0-2 (data_seed 0). Does ICL arrive late under the edit?
#   python grid.py config/grid_curvature_long.py      # 12 cells, ~4 min each on one core
classes = '100'
regularizers = 'none,curvature_every=250+curvature_rho=0.5,curvature_every=50+curvature_rho=0.5+curvature_sequences=256'
extra_cells = '1600:none'
seeds = '0,1,2'
synthetic_args = '--max_iters=12000 --n_eval_episodes=512 --eval_interval=250 --log_interval=250'
phase = True
grid_dir = 'out_curvature_long'
