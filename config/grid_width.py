# Width axis: every cell once with config/d48.py and once with config/d96.py (cell names end in _d48/_d96;
# the verdict is given per width, each against the Many+wd=0 baseline of the same width).
#   python grid.py config/omniglot.py config/grid_width.py
widths = 'd48,d96'
