# Omniglot at a CPU scale (issue 13, part 4): Few (100) / Many (1600) x regulariser, seed 0, cells from
# config/omniglot.py + config/omniglot_small.py (14x14 images, 4 layers, 10k steps, constant lr 1e-3: lr*wd*steps = 10*wd).
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_omniglot_small.py
# 8 cells, two at a time on the 2-core CPU (one thread each), ~15 min per cell: ~1 hour in all.
classes = 'few,many'
regularizers = 'none,wd=0.1,wd=1.0,l2=1e-3'
seeds = '0'
grid_dir = 'out_omniglot_small'
