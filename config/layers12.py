# The paper's depth, 12 transformer layers (d=64, 8 heads as before), as an overlay after the CPU-scale configs:
#   python train.py config/omniglot.py config/omniglot_small.py config/layers12.py config/many.py
# config/omniglot.py already has 12 layers; config/omniglot_small.py cuts them to 4 for speed, and this puts them back.
# On the proxy the same is --n_layer=12 (config/grid_depth12*.py).
n_layer = 12
