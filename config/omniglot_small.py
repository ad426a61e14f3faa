# Omniglot at a scale that runs on a CPU: the paper cell (config/omniglot.py) with the
# images downsampled to 14x14, 4 transformer layers instead of 12, constant lr 1e-3 after 500 warmup steps
# instead of 3e-4 with 4000 warmup steps and 1/sqrt decay, and 10k steps instead of 500k. Everything else is
# the paper cell's: the same ResNet embedder (64-channel 7x7 stem, 4 bottleneck groups), d=64 with 8 heads,
# batch 32, bursty sequences (p_bursty 0.9, 3 shots x 2 ways, 8 context pairs), 1623 per-class labels,
# the same 23 holdout characters, Few = the first 100 of Many's 1600 classes.
# It is an overlay on the paper cell, applied after it:
#   python train.py config/omniglot.py config/omniglot_small.py config/many.py     # one cell, ~15 min, 1 CPU core
#   python grid.py config/omniglot.py config/omniglot_small.py   # the posed Few/Many x decay grid, seeds 0-2
# Measured (2-core CPU, OMP_NUM_THREADS=1, two runs at once, seed 0, Many): 10-12 steps/s; holdout ICL
# 0.51 (1.5k steps), 0.60 (2k), 0.70 (3k), 0.73 (5k), 0.80 (7k), IWL 0.05. At 28x28 the same run follows
# the same curve per step (ICL 0.70 at 3k) at 5 steps/s: the 7x7 stem over 288 images dominates the step.
# Under lr*wd*steps = 1e-3*wd*10000 = 10*wd, weight decay here is ~40x stronger per unit of wd than in the
# paper cell over 500k steps (the sum of lr is ~25 under its schedule).
image_size = 14
n_layer = 4
learning_rate = 1e-3
lr_schedule = 'constant'
warmup_iters = 500
max_iters = 10000
eval_interval = 500
log_interval = 250
