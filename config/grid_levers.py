# What can replace rare classes? Levers x class count on the embedded synthetic default, seeds 0-2
# declared here for every cell (one command regenerates the whole result):
#   python grid.py config/grid_levers.py
# Levers: uniform decay (wd=1 on every Linear weight), the same decay aimed at one part of the model
# (encoder / attention / MLP / read-out head, and MLP+head: the weights that can hold a class->label map),
# and label swap (Bratulic et al. 2025: in a fraction p of the training sequences the query's class gets one
# new label of another training class, so the memorised answer is wrong and the in-context one right; on these
# 32 shared labels, all owned by training classes, label_swap_to 'train' and 'all' are the same draw).
# Beside the cross (extra_cells, at 100-400 classes): stronger decay aimed at the MLPs (+ head), classical L2 on
# them, swap between and beyond the first strengths (1.0 = every sequence), and swap combined with targeted decay.
# Budget: config/grid.py's synthetic_args (4000 steps, constant lr 2e-3: lr*wd*steps = 8*wd).
classes = '100,200,400,800,1600'
regularizers = ('none,wd=1,wd=1@encoder,wd=1@attn,wd=1@mlp,wd=1@head,wd=1@mlp+head,'
                'swap=0.1,swap=0.2,swap=0.4,swap=0.8')
_second = ['wd=4@mlp+head', 'wd=4@mlp', 'l2=1e-2@mlp+head', 'swap=0.3', 'swap=0.6', 'swap=1.0',
           'swap=0.2+wd=1@mlp+head', 'swap=0.4+wd=1@mlp+head']
extra_cells = ';'.join(f'{n}:{r}' for n in (100, 200, 400) for r in _second)
seeds = '0,1,2'
phase = True
grid_dir = 'out_levers'
