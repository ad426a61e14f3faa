# The dose-response on Omniglot at the CPU scale (14x14, 4 layers, 10k steps, constant lr 1e-3 after 500 warmup:
# sum of lr 9.75, so the posed decays 3e-4..1e-2 are exponents 0.003..0.1): Few (100) and Many (1600) at decay
# exponents 0, 0.3, 3 and 30 (wd ~3.1 at the top), seeds 0-2.
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_dose_omniglot.py   # 24 cells, ~9 min each on one core
decay_exponents = '0,0.3,3,30'
seeds = '0,1,2'
grid_dir = 'out_dose_omniglot'
