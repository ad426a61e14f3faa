# Chan et al.'s two other distributional knobs as generic grid axes: burstiness x Zipf exponent at the ICL threshold
# of the synthetic default (1600 classes), no regulariser, one seed (exploratory: no claim rests on it), 4000 steps. No code names these
# keys: --axes crosses any train.py keys, and report/phase label the columns from the cells' settings.
#   python grid.py config/grid_axes.py
classes = '1600'
regularizers = 'none'
axes = 'p_bursty=0.5,0.9,1.0;zipf_alpha=0,1'
seeds = '0'
phase = True
grid_dir = 'out_axes'
