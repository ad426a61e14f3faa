# Where does Many's ICL on Omniglot stop rising? Many (1600 classes) without a lever, seeds 0-2, continued from the
# five-seed swap grid's 25k runs (config/grid_omniglot_swap_five_long.py; constant lr: the same runs) to 50k steps:
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_omniglot_swap_five_long.py  # 25k first
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_omniglot_many_long.py       # then 50k
# At 25k two of the three seeds still peak in the last 2.5k steps. The emergence table's share of seeds by each
# step and each seed's peak step say where it levels off (~25 min a cell on one CPU thread).
classes = '1600'
regularizers = 'none'
seeds = '0,1,2'
train_args = '--max_iters=50000'
extend_from = 'out_omniglot_swap_five_long'
phase = True
grid_dir = 'out_omniglot_many_long'
