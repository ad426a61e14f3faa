# The posed question as a dose-response: Few (100) and Many (1600) under uniform AdamW decay on the posed groups, set
# by its decay exponent lr*wd*steps (a weight that gets no gradient ends at exp(-exponent) of its start) rather than
# by raw wd. The posed decays 3e-4..1e-2 are exponents 0.002..0.078 here (4k steps at lr 2e-3: sum of lr 7.8) and
# 0.008..0.25 under the paper cell's schedule over 500k steps (sum of lr ~25); this grid goes to 30 (wd ~3.8).
#   python grid.py config/grid_dose.py                    # 42 cells, ~40 s each on one core
#   python grid.py config/grid_dose.py config/grid_dose_lr2x.py   # the same at twice the learning rate
decay_exponents = '0,0.1,0.3,1,3,10,30'
seeds = '0,1,2'
grid_dir = 'out_dose'
