# Emergence over time at Few on the synthetic default: 100 classes without a lever and with the three levers that
# reached ICL >= 0.8 there or nearly at 4k steps (swap=0.8, swap=0.4, wd=1@mlp+head), held against Many (1600)
# without one, seeds 0-2, 12k steps (3x the lever grid's budget). Does ICL at Few persist, fade (Singh et al.) or
# arrive late, and what is the verdict at this longer budget (the same policy as Omniglot's 25k)?
#   python grid.py config/grid_levers_emergence.py      # 15 cells, ~5 min each on one core
classes = '100'
regularizers = 'none,swap=0.8,swap=0.4,wd=1@mlp+head'
extra_cells = '1600:none'
seeds = '0,1,2'
synthetic_args = '--max_iters=12000 --n_eval_episodes=512 --eval_interval=250 --log_interval=250'
phase = True
grid_dir = 'out_levers_emergence'
