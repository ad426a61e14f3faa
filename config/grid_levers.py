# What can replace rare classes (issue 17)? Levers x class count on the embedded synthetic default, seed 0:
#   python grid.py config/grid_levers.py
# Levers: uniform decay (wd=1 on every Linear weight), the same decay aimed at one part of the model
# (encoder / attention / MLP / read-out head, and MLP+head: the weights that can hold a class->label map),
# and label swap (Bratulic et al. 2025: in a fraction p of the training sequences the query's class gets one
# new random label, so the memorised answer is wrong and the in-context one right). Budget: config/grid.py's
# synthetic_args (4000 steps, constant lr 2e-3: lr*wd*steps = 8*wd). Then seeds 1-2 at each lever's
# threshold, the combinations, and l2 on the best target: config/grid_levers2.py.
classes = '100,200,400,800,1600'
regularizers = ('none,wd=1,wd=1@encoder,wd=1@attn,wd=1@mlp,wd=1@head,wd=1@mlp+head,'
                'swap=0.1,swap=0.2,swap=0.4,swap=0.8')
seeds = '0'
phase = True
grid_dir = 'out_levers'
