# Capacity check of the posed grid on the proxy: does a narrower (d=48) or wider (d=96) transformer change the
# answer? Few (100) / Many (1600) x AdamW decay {0, 1e-2} x seeds 0-2 at each width, 4k steps (config/grid.py's
# synthetic budget); the verdict is given per width, each against Many without decay at the same width.
#   python grid.py config/grid_capacity.py      # 24 cells, about a minute each on one core
widths = 'd48,d96'
weight_decays = '0,1e-2'
grid_dir = 'out_capacity'
