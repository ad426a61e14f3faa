# The levers that acted at 2 layers, at 12: label swap 0.8 (Bratulic et al.'s rule), periodic relabelling every 50
# steps (the principle's lever: the memorised map made wrong without label noise) and decay on the MLPs and head
# (wd=1@mlp+head: exponent 8 on those weights at 4k steps) at Few (100), against Many (1600) without a lever, seeds 0-2,
# at config/grid_depth12.py's budget; both rules.
#   python grid.py config/grid_depth12_levers.py   # 15 cells, ~8 min each on one idle core
# Budget: config/grid_depth12.py's 4000 steps, declared there from Many's curve at 12 layers.
classes = '100'
regularizers = 'none,swap=0.8,relabel_every=50,wd=1@mlp+head'
extra_cells = '1600:none'
seeds = '0,1,2'
synthetic_args = '--n_layer=12 --max_iters=4000 --n_eval_episodes=512 --eval_interval=250 --log_interval=250'
phase = True
grid_dir = 'out_depth12_levers'
