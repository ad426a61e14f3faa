"""
Peak ICL against how often the in-weights answer is wrong while training: one point per lever and class count, over
every grid given, each lever coloured by its kind. The principle ("making memorisation wrong builds ICL; making it
expensive or erasing it does not") predicts one rising curve whatever the kind.

    python scripts/wrong_memory.py out_relabel out_principle --write=assets/results/wrong_memory

A cell's wrong-memory share is the mean over its eval rows of 'wrong_memory' (eval.WrongMemory: the share of
measured training sequences, context labels randomised, that the model answered wrong since the previous eval), so it
is the share over the whole run; its peak ICL is report.run_stats' (the best mean of 3 consecutive evals). Points are
the means over the seeds that finished, with the seeds' range. Cells from before the measurement (no 'wrong_memory')
are left out and counted.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from report import load_cells, numerics_line, reg_label, reg_of, run_stats  # noqa: E402

KINDS = {'weight_decay': 'expensive', 'l2': 'expensive', 'forget_every': 'erased', 'curvature_every': 'erased',
         'label_swap': 'wrong', 'relabel_every': 'wrong', 'within_class_noise': 'harder', 'augment': 'harder'}
COLOURS = {'none': 'black', 'expensive': 'tab:blue', 'erased': 'tab:orange', 'wrong': 'tab:red', 'harder': 'tab:green'}


def kind_of(reg):
    """A regulariser's kind: the kind of its first key KINDS names ('none' without one), e.g. swap+decay is 'wrong'."""
    for key, _ in reg:
        if key in KINDS:
            return KINDS[key]
    return 'none' if not reg else 'other'


def cell_points(grid_dir):
    """[(classes, lever label, kind, seed, peak ICL, mean wrong_memory)] of the finished cells that measured it, and
    the number left out, and their summaries."""
    points, skipped, summaries = [], 0, []
    for c in load_cells(grid_dir):
        if not c['summary']:
            continue
        shares = [r['wrong_memory'] for r in c['rows'] if r.get('wrong_memory') is not None]
        if not shares:
            skipped += 1
            continue
        reg = reg_of(c)
        points.append((c['summary']['config']['n_train_classes'], reg_label(reg), kind_of(reg), c['seed'], run_stats(c['rows'])['peak_icl'],
                       sum(shares) / len(shares)))
        summaries.append(c['summary'])
    return points, skipped, summaries


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('grid_dirs', nargs='+')
    ap.add_argument('--write', default='', help='a folder for wrong_memory.md, .json and .png')
    args = ap.parse_args()
    points, skipped, summaries = [], 0, []
    for d in args.grid_dirs:
        p, s, sums = cell_points(d)
        points += [(os.path.basename(os.path.normpath(d)), *x) for x in p]
        skipped += s
        summaries += sums
    if not points:
        sys.exit("wrong_memory: no finished cell measured wrong_memory in " + ', '.join(args.grid_dirs))
    groups = {}
    for grid, classes, label, kind, seed, peak, share in points:
        groups.setdefault((grid, classes, label, kind), []).append((seed, peak, share))
    rows = []
    for (grid, classes, label, kind), seeds in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][3], kv[0][2], kv[0][0])):
        peaks, shares = [p for _, p, _ in seeds], [s for _, _, s in seeds]
        rows.append({'grid': grid, 'classes': classes, 'lever': label, 'kind': kind,
                     'seeds': sorted(s for s, _, _ in seeds), 'peak_icl': sum(peaks) / len(peaks),
                     'peak_icl_range': [min(peaks), max(peaks)], 'wrong_memory': sum(shares) / len(shares),
                     'wrong_memory_range': [min(shares), max(shares)]})
    lines = ["# Peak ICL against how often memory is wrong", "",
             f"Grids: {', '.join(sorted({r['grid'] for r in rows}))}.", "", numerics_line(summaries), "",
             "| grid | classes | lever | kind | seeds | wrong-memory share (range) | peak ICL (range) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['grid']} | {r['classes']} | {r['lever']} | {r['kind']} | {len(r['seeds'])} | {r['wrong_memory']:.3f} "
                     f"({r['wrong_memory_range'][0]:.3f}-{r['wrong_memory_range'][1]:.3f}) | {r['peak_icl']:.3f} "
                     f"({r['peak_icl_range'][0]:.3f}-{r['peak_icl_range'][1]:.3f}) |")
    if skipped:
        lines += ["", f"{skipped} finished cells ran before the measurement and are left out."]
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.write:
        os.makedirs(args.write, exist_ok=True)
        with open(os.path.join(args.write, 'wrong_memory.md'), 'w') as f:
            f.write(text)
        with open(os.path.join(args.write, 'wrong_memory.json'), 'w') as f:
            json.dump({'rows': rows, 'skipped': skipped}, f, indent=1)
        plot(rows, os.path.join(args.write, 'wrong_memory.png'))


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, colour in COLOURS.items():
        mine = [r for r in rows if r['kind'] == kind]
        for r in mine:
            x, y = r['wrong_memory'], r['peak_icl']
            ax.errorbar(x, y, xerr=[[x - r['wrong_memory_range'][0]], [r['wrong_memory_range'][1] - x]],
                        yerr=[[y - r['peak_icl_range'][0]], [r['peak_icl_range'][1] - y]], fmt='o' if
                        r['classes'] <= 100 else 's', color=colour, alpha=0.8, ms=5, capsize=2)
        if mine:
            ax.plot([], [], 'o', color=colour, label=kind)
    ax.plot([], [], 's', color='grey', label='Many (1600)')
    ax.set_xlabel('wrong-memory share while training (mean over evals)')
    ax.set_ylabel('peak ICL (3-eval mean)')
    ax.set_xlim(-0.02, 1.02)
    ax.legend(fontsize=8, loc='lower right')
    ax.set_title('One curve? Levers by kind, Few (circles) and Many (squares)', fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)


if __name__ == '__main__':
    main()
