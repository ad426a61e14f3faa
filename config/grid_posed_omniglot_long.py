# The posed grid on Omniglot at the CPU scale, continued to 25k steps (Many still rises at 10k). Each cell resumes
# its namesake of the 10k grid (constant lr: the same run) instead of repeating its first 10k steps:
#   python grid.py config/omniglot.py config/omniglot_small.py                                    # 10k first
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_posed_omniglot_long.py # then 25k
train_args = '--max_iters=25000'
extend_from = 'out_grid_omniglot_omniglot_small'
grid_dir = 'out_posed_omniglot_long'
