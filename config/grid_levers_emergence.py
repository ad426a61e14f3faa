# Emergence over time at Few (issue 24): the synthetic default at 100 classes without a lever and with the three
# levers that reached ICL >= 0.8 there or nearly (swap=0.8, swap=0.4, wd=1@mlp+head), seeds 0-2, 12k steps (3x the
# lever grid's 4k budget). Does ICL at Few persist, fade (Singh et al.) or arrive late? Each cell continues its
# namesake of config/grid_levers.py (constant lr: the same run) instead of repeating its first 4k steps:
#   python grid.py config/grid_levers_emergence.py
classes = '100'
regularizers = 'none,swap=0.8,swap=0.4,wd=1@mlp+head'
seeds = '0,1,2'
synthetic_args = '--max_iters=12000 --n_eval_episodes=512 --eval_interval=250 --log_interval=250'
extend_from = 'out_levers'
phase = True
grid_dir = 'out_levers_emergence'
