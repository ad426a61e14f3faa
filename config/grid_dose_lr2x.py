# The proxy dose-response at twice the learning rate (4e-3), matched by decay exponent (wd halves for the same
# exponent): does the answer depend on lr and wd separately, or on their product alone? Applied after grid_dose.py:
#   python grid.py config/grid_dose.py config/grid_dose_lr2x.py    # 42 cells
train_args = '--learning_rate=4e-3'
grid_dir = 'out_dose_lr2x'
