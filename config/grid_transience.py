# Transience (issue 13, Singh et al. 2023): does ICL fade on long runs, and does weight decay change that?
#   python grid.py config/grid_transience.py        # 6 cells x 25k steps: ~40 min on 2 CPU cores
# 25k steps is >= 10x past the ICL transition of the synthetic default (~2k-2.5k steps at 16000 classes).
# 16000 classes: the Many cell; 1600: near the ICL threshold, where memorisation catches up and ICL can fade;
# 100: the Few cell, to see whether decay ever turns memorisation into ICL late in training. wd=1.0 is the
# strongest decay of the phase diagram that keeps ICL at 16000 classes; over 25k steps at lr 2e-3 its
# lr*wd*steps is 50 (weights the gradients leave alone shrink by e^-50).
classes = '100,1600,16000'
regularizers = 'none,wd=1.0'
seeds = '0'
synthetic_args = '--max_iters=25000 --n_eval_episodes=512 --eval_interval=500 --log_interval=500'
grid_dir = 'out_transience'
