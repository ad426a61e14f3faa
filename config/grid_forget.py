# Forgetting at Few on the synthetic default: does re-initialising the token-embedding analogues (item encoder,
# label embedding, head; Chen et al. 2023's active forgetting as Anand et al. 2024's code does it) let ICL appear
# at 100 classes? Whole-run forgetting every 20, 50 and 250 steps (the papers reset ~125 times a run: every 32
# steps here), and temporary forgetting (every 50 steps until step 2000, half the run), against Many (1600) without a
# lever, seeds 0-2 (data_seed 0 in every cell). Few relearns its 100 classes within ~100 steps of a reset.
#   python grid.py config/grid_forget.py      # 18 cells, ~1 min each on one core
classes = '100'
regularizers = 'none,forget_every=20,forget_every=50,forget_every=250,forget_every=50+forget_until=2000'
extra_cells = '1600:none'
seeds = '0,1,2'
phase = True
grid_dir = 'out_forget'
