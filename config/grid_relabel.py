# Is it "wrong", or is it noise? Periodic relabelling makes the memorised map wrong without label noise: every k steps
# the training classes get a fresh class->label map (a permutation of the labels they own, seeded by data_seed and
# the period), and within a period every sequence is consistent, context and query alike. A dose-response in k at
# Few (100 classes) against Many (1600, no lever) of the same seeds in the same run set, seeds 0-2 declared here:
#   python grid.py config/grid_relabel.py          # 24 cells, ~2 min each on one core
# Budget: config/grid.py's synthetic_args (4000 steps, the proxy's lever grids). IWL is scored against the map the
# last step trained on; every eval row also has 'wrong_memory' (eval.WrongMemory), the share of training
# sequences whose in-weights answer was wrong since the previous eval: the common axis of the wrong-memory levers.
classes = '100'
regularizers = ('none,relabel_every=10,relabel_every=25,relabel_every=50,relabel_every=100,relabel_every=400,'
                'relabel_every=1600')
extra_cells = '1600:none'
seeds = '0,1,2'
phase = True
grid_dir = 'out_relabel'
