# Persistence and late emergence on the embedded synthetic default, 25k steps, seeds 0-2:
#   python grid.py config/grid_levers_long.py
# At 1600 classes (the ICL threshold without a lever) ICL fades without one (seed 0: 0.99 -> 0.71): does the decay
# aimed at the MLPs + head (wd=1@mlp+head, the best targeted decay at 4k steps) keep it? At 400 classes: does it
# bring ICL late? Budget: config/grid.py's synthetic_args with 25k steps, an eval every 500 (lr*wd*steps = 50*wd).
classes = '1600'
regularizers = 'none,wd=1@mlp+head'
extra_cells = '400:wd=1@mlp+head'
seeds = '0,1,2'
synthetic_args = '--max_iters=25000 --n_eval_episodes=512 --eval_interval=500 --log_interval=500'
phase = True
grid_dir = 'out_levers_long'
