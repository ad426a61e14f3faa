# The extended decay sweep: the standard decays plus 0.03, 0.1, 0.3 and 1.0, where lr*wd*steps
# reaches O(1-10) and decay can actually erase memorised weights within the budget.
#   python grid.py config/grid_extended.py                     # embedded synthetic grid, 54 cells
#   python grid.py config/omniglot.py config/grid_extended.py  # paper scale
weight_decays = '0,3e-4,1e-3,3e-3,1e-2,0.03,0.1,0.3,1.0'
