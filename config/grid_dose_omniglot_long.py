# The decays that act on Omniglot, for longer: does ICL appear at Few once its memorisation is gone? Few (100) at
# decay exponents 3 and 30, where by 10k its IWL fell below 0.5, and without decay, with Many (1600) without decay,
# seeds 0-2, to 25k. Each Few cell continues its namesake of config/grid_dose_omniglot.py (10k) at the same weight
# decay: the exponents count the 10k steps (exponent_iters), so by 25k the same decay has summed to exponents 7.6 and
# 76. Many runs here from scratch to 25k, in the same run set.
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_dose_omniglot.py        # first, the 10k cells
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_dose_omniglot_long.py   # 12 cells
classes = 'few'
decay_exponents = '0,3,30'
exponent_iters = 10000
extra_cells = 'many:none'
seeds = '0,1,2'
train_args = '--max_iters=25000'
extend_from = 'out_dose_omniglot'
grid_dir = 'out_dose_omniglot_long'
