# Omniglot's swap 0.8 at 25k steps on five seeds: each cell of config/grid_omniglot_swap_five.py (10k, seeds 0-4, Few
# without a lever and with swap 0.8, Many without one) continued to 25k, so the 10k and 25k verdicts come from one run set.
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_omniglot_swap_five_long.py   # 15 cells
classes = '100'
regularizers = 'none,swap=0.8'
extra_cells = '1600:none'
seeds = '0,1,2,3,4'
train_args = '--max_iters=25000'
extend_from = 'out_omniglot_swap_five'
phase = True
grid_dir = 'out_omniglot_swap_five_long'
