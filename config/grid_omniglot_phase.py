# Omniglot at the CPU scale (issue 13): does decay move the class count at which ICL appears? Cells from
# config/omniglot.py + config/omniglot_small.py (14x14 images, 4 layers, 10k steps, constant lr 1e-3), seed 0.
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_omniglot_phase.py
# 100 and 1600 classes are the Few and Many cells of config/grid_omniglot_small.py (same configs: few.py and
# many.py set n_train_classes to 100 and 1600); copying those finished cell folders in as c100_*/c1600_*
# skips rerunning them. ~17 min per cell on one CPU core.
classes = '100,800,1600'
regularizers = 'none,wd=1.0'
seeds = '0'
phase = True
grid_dir = 'out_omniglot_phase'
