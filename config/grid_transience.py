# Transience (issue 13, Singh et al. 2023): does ICL fade on long runs, and does weight decay change that?
# 25k steps is >= 10x past the ICL transition of the synthetic default (~1.5k-2.5k steps). Each row compares no
# decay with the strongest decay of the phase diagram (config/grid_phase.py) that still gives ICL there:
#   python grid.py config/grid_transience.py                                           # 1600 and 16000 classes
#   python grid.py config/grid_transience.py --classes=100 --regularizers=none,wd=1.0   # the Few row
# 1600 classes: the ICL threshold, where memorisation catches up and ICL fades; 16000: the Many cell. There
# wd=0.1 is the strongest decay that keeps ICL (wd=1.0 gives neither ICL nor IWL at >= 800 classes in 4000
# steps). 100 classes: the Few cell at the same length with the strongest decay: does decay ever turn
# memorisation into ICL late in training? At lr 2e-3 over 25k steps, lr*wd*steps is 5 for wd=0.1 and 50 for
# wd=1.0. About 70 min on 2 CPU cores for all six cells.
classes = '1600,16000'
regularizers = 'none,wd=0.1'
seeds = '0'
synthetic_args = '--max_iters=25000 --n_eval_episodes=512 --eval_interval=500 --log_interval=500'
grid_dir = 'out_transience'
