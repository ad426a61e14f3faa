# Width at depth: the posed question at 12 layers with d=48 and d=96 (config/d48.py, config/d96.py), Few (100) and
# Many (1600) at decay exponents 0 and 3, seeds 0-2, at config/grid_depth12.py's budget; a verdict per width.
#   python grid.py config/grid_depth12_width.py    # 24 cells
# Budget: config/grid_depth12.py's 4000 steps, declared there from Many's curve at 12 layers.
widths = 'd48,d96'
decay_exponents = '0,3'
synthetic_args = '--n_layer=12 --max_iters=4000 --n_eval_episodes=512 --eval_interval=250 --log_interval=250'
grid_dir = 'out_depth12_width'
