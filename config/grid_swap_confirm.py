# The label-swap result at 100 classes checked on fresh draws: swap 0.8 was chosen as the best of 18 levers at 4k
# steps (seeds 0-2, data_seed 0) and then judged at 12k on those same seeds, data and eval episodes. This grid
# repeats the 12k comparison with new seeds (3, 4, 5) and another data_seed (1: other holdout classes, label map
# and eval episodes), against a Many (1600) with the same seeds and data; its verdict stands alone.
#   python grid.py config/grid_swap_confirm.py      # 9 cells, ~4 min each on one core
classes = '100'
regularizers = 'none,swap=0.8'
extra_cells = '1600:none'
seeds = '3,4,5'
synthetic_args = '--max_iters=12000 --n_eval_episodes=512 --eval_interval=250 --log_interval=250 --data_seed=1'
phase = True
grid_dir = 'out_swap_confirm'
