# The Chan et al. (2022) paper cell on Omniglot, as in the DeepMind reference
# (experiment/configs/images_all_exemplars.py): 12-layer transformer d=64 with 8 heads over ResNet
# image tokens, batch 32, Adam (= AdamW with weight_decay 0) at lr 3e-4 after 4000 linear warmup steps,
# then inverse square root decay; bursty sequences (p_bursty 0.9, 3 shots x 2 ways, 8 context pairs),
# uniform classes, 500k steps. A grid cell adds config/few.py or config/many.py (and --weight_decay, --seed):
#   python train.py config/omniglot.py config/few.py --weight_decay=1e-3 --seed=1
dataset = 'omniglot'
omniglot_classes = 'all_exemplars'  # classes = the 1623 characters, all 20 drawers as exemplars
image_size = 105
pixel_noise = 0.0                   # the reference's noise_scale in this config
# 23 held-out characters (ICL eval) leave exactly the 1600 classes of the Many cell; the holdout set, the
# label vocabulary and the class order (Few = the first 100 of Many's 1600) are fixed by data_seed alone.
n_holdout_classes = 23
n_train_classes = 1600
n_labels = 1623                     # one label per class, the reference's num_classes; same in Few and Many
label_mode = 'per_class'
context_len = 8
p_bursty = 0.9
bursty_shots = 3
ways = 2
zipf_alpha = 0.0
eval_ways = 2
eval_shots = 4
n_layer = 12
n_head = 8
n_embd = 64
dropout = 0.0
batch_size = 32
max_iters = 500000
learning_rate = 3e-4
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.999
grad_clip = 0.0                     # the reference names clip_level 0.25 but never applies it
lr_schedule = 'inverse_sqrt'
warmup_iters = 4000
eval_interval = 1000
log_interval = 500
