# The principle's new levers on Omniglot 14² (config/omniglot.py + config/omniglot_small.py: 4 layers, 10k steps),
# Few (100 classes) against Few and Many (1600) without a lever, seeds 0-2:
#   python grid.py config/omniglot.py config/omniglot_small.py config/grid_wrong_omniglot.py   # 15 cells, ~15 min each
# - wrong, without label noise: periodic relabelling at the proxy's best period (config/grid_relabel.py, seeds 0-2:
#   every 50 steps: mean peak ICL 0.993 against 0.988 at 25 and 0.93 at 10);
# - harder, never wrong: augmentation, a random affine warp of every training image (augment: rotation up to
#   +-30 deg x strength, shear +-15 deg, scale +-15%, shift +-10%; model.augment_thetas) at strengths 0.5 and 1.
classes = '100'
regularizers = 'none,relabel_every=50,augment=0.5,augment=1.0'
extra_cells = '1600:none'
seeds = '0,1,2'
phase = True
grid_dir = 'out_wrong_omniglot'
