# The proxy dose-response at twice the learning rate (4e-3), matched by decay exponent (wd halves for the same
# exponent), at four of its exponents: does the answer follow lr*wd*steps alone? Applied after grid_dose.py:
#   python grid.py config/grid_dose.py config/grid_dose_lr2x.py    # 24 cells
decay_exponents = '0,0.3,3,30'
train_args = '--learning_rate=4e-3'
grid_dir = 'out_dose_lr2x'
