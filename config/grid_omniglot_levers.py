# What replaces rare classes on Omniglot at the CPU scale: class count x lever, seeds 0-2 declared
# here, cells from config/omniglot.py + config/omniglot_small.py (14x14 images, 4 layers, 10k steps, constant lr 1e-3).
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_omniglot_levers.py
# Levers: label swap at 0.4 and 0.8 (the new label drawn from the training classes' labels, as Bratulic et al. do:
# label_swap_to='train'), and weight decay aimed at the MLPs + head. Beside the cross: Many (1600) without a lever,
# and the contrast of the old swap rule (new label drawn from all 1623 labels) at 100 classes.
# Measured: 42 cells, 7.3 h of cell time (about 10 min per cell on one core), two at a time on 2 cores.
classes = '100,400,800'
regularizers = 'none,swap=0.4,swap=0.8,wd=1@mlp+head'
extra_cells = '1600:none;100:swap=0.8+swap_to=all'
seeds = '0,1,2'
phase = True
grid_dir = 'out_omniglot_levers3'
