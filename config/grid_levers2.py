# Issue 17, second pass on the embedded synthetic default (after config/grid_levers.py, same grid folder):
# stronger decay aimed at the MLPs (+ head), classical L2 on them, label swap between and beyond the first
# pass's strengths (1.0 = every sequence swapped), and swap combined with targeted decay.
#   python grid.py config/grid_levers2.py                                              # 8 levers x 3 class counts
#   python grid.py config/grid_levers2.py --classes=200 --regularizers=swap=0.4 --seeds=1,2   # seeds at a threshold
classes = '100,200,400'
regularizers = ('wd=4@mlp+head,wd=4@mlp,l2=1e-2@mlp+head,swap=0.3,swap=0.6,swap=1.0,'
                'swap=0.2+wd=1@mlp+head,swap=0.4+wd=1@mlp+head')
seeds = '0'
phase = True
grid_dir = 'out_levers'
