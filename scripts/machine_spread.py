"""
The machine as a source of variance: the same cells, run as separate run sets on several CPU float paths, compared
seed by seed beside their spread over seeds.

    python scripts/machine_spread.py out_swap_five out_swap_five_default out_swap_five_avx2
    python scripts/machine_spread.py <grid dirs...> --write=assets/results/machine_proxy   # also machine.md + .json

Cells are matched by name across the run sets (a grid dir each); only seeds that every run set finished count. Per
cell: each run set's 3-eval peak ICL per seed (report.run_stats), the machine spread (largest minus smallest over run
sets, per seed) and the seed spread (over seeds, per run set). Per Few cell: its ratio to Many's mean peak in each run
set. Then how many seeds a verdict needs before a change of machine cannot flip it at a margin of 0.05: a run that
diverges after a few thousand steps draws its noise afresh on another machine, so with sigma^2 = half the mean squared
per-seed difference between run sets, a ratio r = few / many of n-seed means moves by
sd = r * sqrt(2 / n * (sigma_few^2 / few^2 + sigma_many^2 / many^2)), and 1.96 sd <= 0.05 needs n seeds.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from report import load_cells, numerics_line, run_stats  # noqa: E402

MARGIN = 0.05
BAR = 0.9   # the posed rule's fraction of Many's peak


def seeds_needed(ratio, rel_var, margin):
    """The seeds n at which 1.96 sd of a ratio of n-seed means stays within margin, where sd^2 = ratio^2 * 2 / n *
    rel_var and rel_var sums each side's machine variance over its mean squared (the module's docstring)."""
    return math.ceil(2 * (1.96 * ratio / margin) ** 2 * rel_var)


def peaks(grid_dir):
    """{(cell name without its seed, seed): peak ICL} of the finished cells, and their summaries."""
    out, summaries = {}, []
    for c in load_cells(grid_dir):
        if not c['summary']:
            continue
        name, _, seed = c['name'].rpartition('_s')
        out[(name, int(seed))] = run_stats(c['rows'])['peak_icl']
        summaries.append(c['summary'])
    return out, summaries


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('grid_dirs', nargs='+')
    ap.add_argument('--many', default='c1600_wd0', help="the Many cell's name without its seed")
    ap.add_argument('--write', default='', help='a folder for machine.md and machine.json')
    args = ap.parse_args()
    if len(args.grid_dirs) < 2:
        sys.exit("machine_spread: give at least two grid dirs (run sets) to compare")
    sets = {}
    for d in args.grid_dirs:
        p, summaries = peaks(d)
        if not p:
            sys.exit(f"machine_spread: {d} has no finished cells")
        path = ', '.join(sorted({f"{s.get('cpu_capability', 'not recorded')} ({s.get('cpu_model', 'not recorded')})"
                                 for s in summaries}))
        sets[os.path.basename(os.path.normpath(d))] = {'peaks': p, 'path': path, 'numerics': numerics_line(summaries)}
    keys = set.intersection(*[set(s['peaks']) for s in sets.values()])
    cells = sorted({name for name, _ in keys})
    if args.many not in cells:
        sys.exit(f"machine_spread: no Many cell {args.many!r} finished in every run set (cells: {cells})")
    names = list(sets)
    lines = [f"# The machine as a source of variance: {', '.join(names)}", "",
             "Run sets (one per CPU float path; every cell and seed finished in all of them counts):", ""]
    for n in names:   # each run set's provenance on a line of its own
        lines += [f"`{n}`: {sets[n]['path']}.", "", sets[n]['numerics'], ""]
    lines += ["", "| cell | seed | " + " | ".join(names) + " | machine spread |", "|---|---|" + "---|" * (len(names) + 1)]
    result = {'run_sets': {n: sets[n]['path'] for n in names}, 'cells': {}}
    sigma2 = {}
    for cell in cells:
        seeds = sorted(s for name, s in keys if name == cell)
        rows = {s: [sets[n]['peaks'][(cell, s)] for n in names] for s in seeds}
        for s, values in rows.items():
            lines.append(f"| {cell} | {s} | " + " | ".join(f"{v:.3f}" for v in values)
                         + f" | {max(values) - min(values):.3f} |")
        seed_spread = {n: max(rows[s][i] for s in seeds) - min(rows[s][i] for s in seeds) for i, n in enumerate(names)}
        diffs = [(a - b) ** 2 for values in rows.values() for i, a in enumerate(values) for b in values[i + 1:]]
        sigma2[cell] = sum(diffs) / len(diffs) / 2
        means = {n: sum(rows[s][i] for s in seeds) / len(seeds) for i, n in enumerate(names)}
        result['cells'][cell] = {'seeds': seeds, 'peaks': {n: [rows[s][i] for s in seeds] for i, n in enumerate(names)},
                                 'mean': means, 'seed_spread': seed_spread,
                                 'machine_spread_mean': sum(max(v) - min(v) for v in rows.values()) / len(rows),
                                 'machine_sd': math.sqrt(sigma2[cell])}
    lines += ["", "| cell | mean peak per run set | seed spread per run set | mean machine spread | machine sd |",
              "|---|---|---|---|---|"]
    for cell, r in result['cells'].items():
        lines.append(f"| {cell} | " + ', '.join(f"{r['mean'][n]:.3f}" for n in names) + " | "
                     + ', '.join(f"{r['seed_spread'][n]:.3f}" for n in names)
                     + f" | {r['machine_spread_mean']:.3f} | {r['machine_sd']:.3f} |")
    lines += ["", f"Few over Many per run set, and the seeds a verdict at a margin of {MARGIN} needs before a change of "
              f"machine cannot flip it (1.96 sd of the ratio <= {MARGIN}):", "",
              "| Few cell | ratio per run set | ratio spread | seeds needed |", "|---|---|---|---|"]
    many = result['cells'][args.many]
    for cell, r in result['cells'].items():
        if cell == args.many:
            continue
        ratios = [r['mean'][n] / many['mean'][n] for n in names]
        f, m = sum(r['mean'].values()) / len(names), sum(many['mean'].values()) / len(names)
        rel = sigma2[cell] / f ** 2 + sigma2[args.many] / m ** 2
        need = seeds_needed(f / m, rel, MARGIN)
        r.update(ratios=dict(zip(names, ratios)), seeds_needed=need)
        lines.append(f"| {cell} | " + ', '.join(f"{x:.3f}" for x in ratios)
                     + f" | {max(ratios) - min(ratios):.3f} | {need} |")
    if len(result['cells']) == 1:
        lines.append(f"| (none: only {args.many} finished in every run set) | - | - | - |")
        # Many's noise alone, for a ratio at the bar: a lower bound (a Few cell's own machine noise only adds to it)
        m = sum(many['mean'].values()) / len(names)
        bound = {margin: seeds_needed(BAR, sigma2[args.many] / m ** 2, margin) for margin in (0.05, 0.025)}
        result['seeds_needed_at_least'] = {str(k): v for k, v in bound.items()}
        lines += ["", f"Many's machine noise alone, for a ratio at the bar ({BAR}), a lower bound (a Few cell's own adds to "
                  f"it): at least {bound[0.05]} seeds at a margin of 0.05, {bound[0.025]} at 0.025."]
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.write:
        os.makedirs(args.write, exist_ok=True)
        with open(os.path.join(args.write, 'machine.md'), 'w') as fh:
            fh.write(text)
        with open(os.path.join(args.write, 'machine.json'), 'w') as fh:
            json.dump(result, fh, indent=1)


if __name__ == '__main__':
    main()
