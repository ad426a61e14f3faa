# The principle against levers it was not fitted to, on one axis: how often the in-weights answer is wrong while
# training (eval.WrongMemory, every eval row's 'wrong_memory'). One lever or two of each kind at Few (100 classes),
# rerun here so every cell logs that share, with Few and Many without a lever, seeds 0-2 declared here:
#   python grid.py config/grid_principle.py         # 42 cells, ~2 min each on one core
# - expensive: uniform decay (wd=1) and decay aimed at the weights that can hold the map (wd=1@mlp+head);
# - erased: forgetting every 50 steps (config/grid_forget.py) and the curvature edit every 250 (config/grid_curvature.py);
# - wrong: label swap 0.4 and 0.8 (and periodic relabelling: config/grid_relabel.py);
# - harder, never wrong: within-class variation. Each exemplar is (mu + eps*eta)/sqrt(1+eps^2) around its class mean
#   (within_class_noise, 0.1 by default): a larger eps makes a class's 20 exemplars differ more, so memorising a class
#   takes more while the memorised answer stays right. Chan et al. 2022 report that within-class variation favours
#   ICL: the lever that could break "wrong builds ICL, expensive does not". Many is run at each strength too.
# Budget: config/grid.py's synthetic_args (4000 steps). Verdicts are against Many at the default noise (none).
classes = '100'
regularizers = ('none,wd=1,wd=1@mlp+head,forget_every=50,curvature_every=250+curvature_rho=0.5,swap=0.4,swap=0.8,'
                'within_class_noise=0.25,within_class_noise=0.5,within_class_noise=1.0')
extra_cells = ';'.join(f'1600:{r}' for r in ('none', 'within_class_noise=0.25', 'within_class_noise=0.5',
                                             'within_class_noise=1.0'))
seeds = '0,1,2'
phase = True
grid_dir = 'out_principle'
