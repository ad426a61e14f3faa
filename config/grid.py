# The grid's axes and what its Few/Many cells mean. grid.py applies this file first, always;
# later config/grid_*.py files and --key=value override it. Lists are comma-separated strings
# (the configurator only takes int/float/bool/str).
classes = 'few,many'
weight_decays = '0,3e-4,1e-3,3e-3,1e-2'
seeds = '0,1,2'
widths = ''                  # '' = no width axis; 'd48,d96' adds config/d48.py / config/d96.py (an int: --n_embd)

# Paper-scale grid (`python grid.py config/omniglot.py`): a cell adds one of these config files.
few_config = 'config/few.py'
many_config = 'config/many.py'

# Embedded synthetic grid (`python grid.py` with no train config file): cells run train.py's synthetic
# default (16-dim Gaussian clusters, 32 shared labels, 2 layers d64, batch 64, constant lr 2e-3) with
# Few = 100 classes (memorised at once, ICL at chance) and Many = 1600 classes (the proxy's ICL threshold,
# as in every other verdict: ICL near 1.0 by ~2.5k steps, then fading as IWL takes over).
# Both use the same 32-label vocabulary (label_mode='shared', the default) and the same data_seed, so the
# holdout classes, the label map of the common first 100 classes and the eval episodes are identical.
# Budget as posed, "to the step where ICL peaks, plus margin": 4000 steps. 512 eval episodes keep the ICL
# standard error ~0.02. ~50 steps/s per one-thread cell: 30 cells ~25 min on 2 cores. The decay is weak at this
# scale: lr*wd*steps = 2e-3*1e-2*4000 = 0.08 at the largest wd (config/grid_extended.py goes to wd 1.0, exponent 8).
synthetic_few = '--n_train_classes=100'
synthetic_many = '--n_train_classes=1600'
synthetic_args = '--max_iters=4000 --n_eval_episodes=512 --eval_interval=250 --log_interval=250'
