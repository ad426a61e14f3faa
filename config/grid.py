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
# default (16-dim Gaussian clusters, 32 shared labels, 2 layers d64, batch 64, constant lr 2e-3) with:
#
#   Few  = 100 classes:   memorised at once (IWL 0.99 by step 250), ICL stays at chance (0.47) to step 3000.
#   Many = 16000 classes: no memorisation (IWL 0.02-0.03), ICL abrupt at step 2000-2500 -> 0.95-0.98.
#
# Both use the same 32-label vocabulary (label_mode='shared', the default) and the same data_seed, so the
# holdout classes, label map of the common first 100 classes and eval episodes are identical. (Per-class
# labels would need a 16000-way head for Few too; with 1600 per-class labels IWL wins, findings.md.)
# 4000 steps leave a margin past the transition for slower seeds (it moves by a few hundred steps with
# the seed). 512 eval episodes (instead of 1024) halve eval time; the ICL standard error is still ~0.02.
# Probes (OMP_NUM_THREADS=1, two at a time on the 2-core CPU): ~50 steps/s per job, 3000 steps in 65 s,
# so 30 cells x ~85 s / 2 jobs ~ 22 min. The decay is weak at this scale: lr*wd*steps = 2e-3*1e-2*4000 =
# 0.08 at the largest wd (config/grid_extended.py goes to wd 1.0, exponent 8).
synthetic_few = '--n_train_classes=100'
synthetic_many = '--n_train_classes=16000'
synthetic_args = '--max_iters=4000 --n_eval_episodes=512 --eval_interval=250 --log_interval=250'
