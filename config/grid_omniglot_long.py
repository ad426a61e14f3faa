# Emergence over time on Omniglot at the CPU scale: does ICL at Few (100 classes) persist, fade or arrive
# late? The Few cells without a lever and with swap=0.8, held against Many (1600) without one, at 25k steps (2.5x the
# lever grid's budget; Many is still rising at 10k), seeds 0-2. Each cell continues its namesake of the lever grid
# (config/grid_omniglot_levers.py, 10k steps, constant lr: the same run) instead of repeating its first 10k steps.
# The committed report (assets/results/omniglot_long) continued another run set than the committed omniglot_levers3
# (an earlier one, on AVX2; its 1600-class cells are the posed grid's): compare its numbers with each other only.
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_omniglot_long.py
classes = '100'
regularizers = 'none,swap=0.8'
extra_cells = '1600:none'
seeds = '0,1,2'
train_args = '--max_iters=25000'
extend_from = 'out_omniglot_levers3'
phase = True
grid_dir = 'out_omniglot_long'
