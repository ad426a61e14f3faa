# The erasing levers on Omniglot at the CPU scale (config/omniglot.py + config/omniglot_small.py: 14x14, 4 layers,
# 10k steps): the best setting of each on the proxy at Few (100 classes), against Few and Many (1600) without a
# lever, seeds 0-2. Forgetting every 50 steps re-initialises the label embedding and the head only: the papers reset
# token embeddings, and here the item's embedder is a ResNet, which restarted every 50 steps would never learn the
# image features a match needs (the deviation is this grid's forget_modules). The curvature edit removes half of each
# MLP weight's curvature mass every 50 steps (K-FAC over 256 fresh sequences).
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_erase_omniglot.py   # 12 cells, ~20 min each
classes = '100'
regularizers = ('none,forget_every=50+forget_modules=label_embedding+head,'
                'curvature_every=50+curvature_rho=0.5+curvature_sequences=256')
extra_cells = '1600:none'
seeds = '0,1,2'
phase = True
grid_dir = 'out_erase_omniglot'
