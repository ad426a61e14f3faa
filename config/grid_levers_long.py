# Issue 17, part d: persistence and late emergence on the embedded synthetic default, 25k steps (seed 0).
#   python grid.py config/grid_levers_long.py                                          # 1600 classes: none vs wd=1@mlp+head
#   python grid.py config/grid_levers_long.py --classes=400 --regularizers=wd=1@mlp+head   # late emergence below the threshold
# wd=1@mlp+head is the first pass's best targeted decay (ICL 0.998 at 800 classes where none stays at 0.52).
# Budget: config/grid.py's synthetic_args with 25k steps and an eval every 500 (lr*wd*steps = 50*wd).
classes = '1600'
regularizers = 'none,wd=1@mlp+head'
seeds = '0'
synthetic_args = '--max_iters=25000 --n_eval_episodes=512 --eval_interval=500 --log_interval=500'
phase = True
grid_dir = 'out_levers_long'
