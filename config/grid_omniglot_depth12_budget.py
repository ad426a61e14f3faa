# The budget for the posed model on Omniglot 14^2, declared from Many before any Few cell runs: Many (1600 classes)
# without decay with the paper's 12-layer transformer over the same ResNet (config/layers12.py), seeds 0-2, to 25k
# steps, the CPU scale's schedule otherwise (constant lr 1e-3 after 500 warmup steps). At 4 layers Many still rose at
# 25k; where the 12-layer Many peaks or levels off is the budget of config/grid_omniglot_depth12.py.
#   python grid.py config/omniglot.py config/omniglot_small.py config/layers12.py config/grid_omniglot_depth12_budget.py
classes = '1600'
regularizers = 'none'
seeds = '0,1,2'
train_args = '--max_iters=25000'
phase = True
grid_dir = 'out_omniglot_depth12_budget'
