# The posed question as a dose-response at 12 layers on the proxy: Few (100) and Many (1600) under uniform AdamW decay
# set by its exponent lr*wd*steps, 0 to 30 (at 2 layers Many lost its ICL from exponent 3 and Few kept its IWL at 30),
# seeds 0-2, at config/grid_depth12.py's budget.
#   python grid.py config/grid_depth12_dose.py   # 30 cells, ~8 min each on one idle core
# Budget: config/grid_depth12.py's 4000 steps, declared there from Many's curve at 12 layers.
decay_exponents = '0,0.3,3,10,30'
synthetic_args = '--n_layer=12 --max_iters=4000 --n_eval_episodes=512 --eval_interval=250 --log_interval=250'
grid_dir = 'out_depth12_dose'
