# The curvature edit at Few on the synthetic default: does keeping only the high-curvature components of the MLP
# weights during training (Merullo et al. 2025's K-FAC edit, which takes memorisation out of a trained model) let
# ICL appear at 100 classes? Half of each MLP weight's curvature mass removed every 250 steps (K-FAC over 1024 fresh
# sequences) and every 50 steps (over 256), against Few and Many (1600) without a lever, seeds 0-2 (data_seed 0).
#   python grid.py config/grid_curvature.py      # 12 cells, ~1.5 min each on one core
classes = '100'
regularizers = 'none,curvature_every=250+curvature_rho=0.5,curvature_every=50+curvature_rho=0.5+curvature_sequences=256'
extra_cells = '1600:none'
seeds = '0,1,2'
phase = True
grid_dir = 'out_curvature'
