# Phase diagram (issue 13): where does ICL appear as the class count grows, and does a regulariser move it?
#   python grid.py config/grid_phase.py                          # seed 0: 8 class counts x 7 regularisers
#   python grid.py config/grid_phase.py --classes=<N> --seeds=1,2  # then seeds 1, 2 at the class count where
#                                                                  # ICL first appears (the report names it)
# Cells are the embedded synthetic default (train.py) at the grid's budget (config/grid.py synthetic_args:
# 4000 steps, constant lr 2e-3, so lr*wd*steps = 8*wd). Regularisers: AdamW's decoupled decay (wd=...)
# and classical L2 in the loss (l2=..., 1/2*l2*||w||^2 on the same weights).
classes = '100,200,400,800,1600,3200,6400,16000'
regularizers = 'none,wd=0.01,wd=0.1,wd=1.0,l2=1e-4,l2=1e-3,l2=1e-2'
seeds = '0'
phase = True
grid_dir = 'out_phase'
