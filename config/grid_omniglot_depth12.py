# The posed model on Omniglot 14^2: the paper's 12-layer transformer over the same ResNet (config/layers12.py), Few
# (100) without decay, at decay exponents 0.3, 3 and 30, and with label swap 0.8, against Many (1600) without decay,
# seeds 0-2, both rules.
#   python grid.py config/omniglot.py config/omniglot_small.py config/layers12.py config/grid_omniglot_depth12.py
#   # 18 cells, 45 min (AVX512) to 80 min (AVX2 EPYC) each on one core of two busy
# Budget, declared from Many before any Few cell ran (config/grid_omniglot_depth12_budget.py, seeds 0-2, to 25k):
# the seeds peak (best 3-eval mean) at 0.938 (19k), 0.870 (15.5k) and 0.853 (21k) and reach 0.8 by 5k, 15k and 20k;
# their mean levels off from 15k (3-eval means 0.845 at 15k, 0.847 at 20k, 0.839 at 22.5k). 25k holds every seed's
# peak, and is the budget of the 4-layer Omniglot grids run to 25k.
classes = 'few'
decay_exponents = '0,0.3,3,30'
extra_cells = 'few:swap=0.8;many:none'
seeds = '0,1,2'
train_args = '--max_iters=25000'
grid_dir = 'out_omniglot_depth12'
