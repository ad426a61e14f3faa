# What replaces rare classes on Omniglot at the CPU scale (issue 17, part c): class count x lever, cells from
# config/omniglot.py + config/omniglot_small.py (14x14 images, 4 layers, 10k steps, constant lr 1e-3).
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_omniglot_levers.py
# The levers are the synthetic grid's (config/grid_levers.py) strongest: label swap at 0.4 and 0.8, and the
# decay aimed at the MLPs + head. ~17-25 min per cell on one core; narrow it with --classes / --regularizers.
classes = '100,800,1600'
regularizers = 'none,swap=0.8,swap=0.4,wd=1@mlp+head'
seeds = '0'
phase = True
grid_dir = 'out_omniglot_levers'
