"""
A grid's verdict with its family interval widened over every lever tried on its scale, across grids: the claim "some
lever works at 100 classes" picks among all of them, so it pays for all of them (Bonferroni, 1 - 0.05 / N).

    python scripts/family.py out_relabel --family=82 --write=assets/results/relabel/family.md

The grid's own report widens over its own levers only; this reruns report.verdict on the same cells with N levers.
FAMILIES counts, per scale, the levers at Few (100 classes) in the grid configs, run or declared: each grid x lever is
one try (a lever rerun at another budget or on other seeds is another try, also where its first runs were
later continued into a larger grid and their config deleted).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from phase import class_count  # noqa: E402
from report import load_cells, numerics_line, reg_of, run_stats, verdict_lines  # noqa: E402

# levers tried at Few (100 classes), grid by grid (config/grid_*.py), per scale
FAMILIES = {
    'proxy, 2 layers': {'grid.py (posed)': 4, 'grid_width': 8, 'grid_capacity': 2, 'grid_extended': 8, 'grid_dose': 6,
                        'grid_dose_lr2x': 3, 'grid_levers': 18, 'grid_levers_emergence': 3, 'grid_swap_confirm': 1,
                        'grid_swap_five': 1, 'grid_long_horizon': 2, 'grid_forget': 4, 'grid_forget_long': 2,
                        'grid_curvature': 2, 'grid_curvature_long': 2, 'grid_relabel': 6, 'grid_relabel_five': 1,
                        'grid_principle': 9},
    'Omniglot 14², 4 layers': {'grid.py config/omniglot.py (posed)': 4, 'grid_posed_omniglot_long': 4,
                               'grid_dose_omniglot': 3, 'grid_omniglot_levers': 4,
                               'grid_omniglot_long (seeds 0-2 of _swap_five_long, judged first)': 1,
                               'grid_erase_omniglot': 2, 'grid_wrong_omniglot': 3, 'grid_dose_omniglot_long': 2,
                               'grid_omniglot_swap_five': 1, 'grid_omniglot_swap_five_long': 1},
    'proxy, 12 layers': {'grid_depth12 (posed)': 4, 'grid_depth12_dose': 4, 'grid_depth12_levers': 3,
                         'grid_depth12_width': 2},
    'Omniglot 14², 12 layers': {'grid_omniglot_depth12': 4, 'grid_omniglot_depth12_five': 1},
}
NO_FEW_LEVER = ('grid_axes', 'grid_levers_long', 'grid_depth12_budget', 'grid_omniglot_depth12_budget',
                'grid_omniglot_many_long')  # Many, or classes other than 100, only


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('grid_dir', nargs='?', default='', help='a grid folder (none: list the families)')
    ap.add_argument('--family', type=int, default=0, help="levers tried on the scale (0: list FAMILIES' counts)")
    ap.add_argument('--write', default='')
    args = ap.parse_args()
    if args.family < 1 or not args.grid_dir:
        for scale, grids in FAMILIES.items():
            print(f"{scale}: {sum(grids.values())} levers ({', '.join(f'{g} {n}' for g, n in grids.items())})")
        sys.exit(0)
    cells = [c for c in load_cells(args.grid_dir) if c['summary'] and c.get('regularizer')]
    if not cells:
        sys.exit(f"family: no finished cell in {args.grid_dir}")
    groups = {}
    for c in cells:
        c['stats'] = run_stats(c['rows'], c['summary']['config'])
        n = class_count(c)
        if n in (100, 1600):
            groups.setdefault(('', 'few' if n == 100 else 'many', reg_of(c)), []).append(c)
    lines, _ = verdict_lines(groups, [''], 0.9, family=args.family)
    lines[0] = (f"## Verdict of {os.path.basename(os.path.normpath(args.grid_dir))} over a family of {args.family} "
                f"levers")
    text = '\n'.join(lines[:1] + ['', numerics_line([c['summary'] for c in cells])] + lines[1:]) + '\n'
    print(text)
    if args.write:
        with open(args.write, 'w') as f:
            f.write(text)


if __name__ == '__main__':
    main()
