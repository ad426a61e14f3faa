"""
Phase diagram of a grid over class counts x regularisers (config/grid_phase.py): where does ICL appear as
the number of training classes grows, and does weight decay or classical L2 move that point?

grid.py calls write_phase_report with its cells (metrics and run_stats already loaded); it writes
phase.png (two heatmaps: peak ICL, and IWL at the end, the ICL threshold marked per regulariser),
phase_curves.png (ICL and IWL vs steps at the threshold), phase.md and phase.json into the grid folder.
phase.md's numbers carry report.py's statistics: 95% intervals over held-out classes and seeds, the peak a
chance-level run would show ('no learning' under it), the raw maximum beside the 3-eval peak, and IWL beside its chance (1 / n_labels).
"""
import json
import os

from report import (CI_NOTE, NONE, PEAK_RULE, _curves, ci_text, fmt_iwl, group_flags, group_numbers, iwl_chance,
                    numerics_line, reg_label as _reg_label, reg_name, reg_of, reg_order, reg_value, verdict_lines)
from stats import WINDOW, reach_step


def class_count(cell):
    return int(cell['classes'][1:]) if cell['classes'].startswith('c') else cell['summary']['config']['n_train_classes']


def reg_label(reg):
    """(weight_decay, l2) -> 'none', 'wd=0.1', 'l2=0.001' (report.py's label, with 'none' for no regulariser)."""
    return 'none' if reg == NONE else _reg_label(reg)


def _mean(values):
    return sum(values) / len(values)


def phase_table(cells):
    """{(regulariser, classes): {'peak_icl', 'final_icl', 'final_iwl', 'seeds', 'peak_min', 'peak_max', 'no_learning',
    and report.group_numbers' intervals, raw-maximum and chance-null peaks, iwl_chance, below_chance}} (mean over seeds)."""
    groups = {}
    for c in cells:
        groups.setdefault((reg_of(c), class_count(c)), []).append(c)
    table = {}
    for key, members in groups.items():
        seeds = [{**c['stats'], 'iwl_chance': iwl_chance(c['summary']['config'] if c['summary'] else None)}
                 for c in members]
        table[key] = {**group_numbers(seeds), 'peak_icl': _mean([s['peak_icl'] for s in seeds]),
                      'final_icl': _mean([s['final_icl'] for s in seeds]),
                      'final_iwl': _mean([s['final_iwl'] for s in seeds]), 'seeds': len(seeds),
                      'peak_min': min(s['peak_icl'] for s in seeds), 'peak_max': max(s['peak_icl'] for s in seeds)}
    return table


def cells_lines(table, regs, counts):
    """phase.md's per-cell table: intervals over classes and seeds, raw-maximum and chance-null peaks, flags."""
    lines = ["## Cells (mean over seeds; 95% CI over classes and seeds)", "",
             "| regulariser | classes | seeds | peak ICL [min-max] | peak 95% CI | raw maximum | chance-null peak | "
             "final ICL [95% CI] | final IWL (chance) | flags |", "|---|---|---|---|---|---|---|---|---|---|"]
    for reg in regs:
        for n in counts:
            t = table.get((reg, n))
            if t is None:
                continue
            lines.append(f"| {reg_label(reg)} | {n} | {t['seeds']} | {t['peak_icl']:.3f} [{t['peak_min']:.3f}-"
                         f"{t['peak_max']:.3f}] | {ci_text(t['peak_ci'], t['ci_method'])} | {t['raw_peak']:.3f} | "
                         f"{t['null_peak']:.3f} | {t['final_icl']:.3f} {ci_text(t['final_ci'], t['final_ci_method'])} | "
                         f"{fmt_iwl(t['final_iwl'], t['iwl_chance'])} | {', '.join(group_flags(t)) or '-'} |")
    return lines + ["", CI_NOTE, ""]


def thresholds(table, regs, counts, threshold):
    """{regularizer: the smallest class count whose mean peak ICL >= threshold, or None}."""
    return {reg: next((n for n in counts if (reg, n) in table and table[(reg, n)]['peak_icl'] >= threshold), None)
            for reg in regs}


def _heatmap(ax, table, regs, counts, key, title, first, cmap):
    import numpy as np
    from matplotlib.patches import Rectangle
    grid = np.full((len(regs), len(counts)), np.nan)
    for i, reg in enumerate(regs):
        for j, n in enumerate(counts):
            if (reg, n) in table:
                grid[i, j] = table[(reg, n)][key]
    ax.imshow(grid, vmin=0, vmax=1, cmap=cmap, aspect='auto')
    for i, reg in enumerate(regs):
        for j, n in enumerate(counts):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha='center', va='center', fontsize=7,
                        color='white' if grid[i, j] < 0.45 else 'black')
        if first.get(reg) is not None:
            j = counts.index(first[reg])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor='red', lw=2))
    ax.set_xticks(range(len(counts)), [str(n) for n in counts], fontsize=8)
    ax.set_yticks(range(len(regs)), [reg_label(r) for r in regs], fontsize=8)
    ax.set_xlabel('training classes')
    ax.set_title(title, fontsize=10)


def plot_phase(path, table, regs, counts, first, threshold):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 0.75 * len(counts) * 2, 1.2 + 0.45 * len(regs)), squeeze=False)
    _heatmap(axes[0, 0], table, regs, counts, 'peak_icl', f'peak ICL (holdout)\nred box: first >= {threshold:g}',
             first, 'viridis')
    _heatmap(axes[0, 1], table, regs, counts, 'final_iwl', 'IWL at the end\n(seen classes)', first, 'magma')
    axes[0, 0].set_ylabel('regulariser')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_threshold_curves(path, cells, first):
    """ICL and IWL vs steps of every regulariser at its own threshold class count (and the one below)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    counts = sorted({n for n in first.values() if n is not None})
    if not counts:
        return False
    fig, axes = plt.subplots(2, len(counts), figsize=(4.5 * len(counts), 6), squeeze=False, sharey=True)
    for j, n in enumerate(counts):
        groups = {}
        for c in cells:
            if class_count(c) == n:
                groups.setdefault(reg_of(c), []).append(c)
        for reg in sorted(groups, key=reg_order):
            for row, key in ((0, 'icl_acc'), (1, 'iwl_acc')):
                steps, mean, lo, hi = _curves(groups[reg], key)
                line, = axes[row, j].plot(steps, mean, label=f"{reg_label(reg)} ({len(groups[reg])} seeds)")
                axes[row, j].fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
        axes[0, j].set_title(f'{n} classes: ICL (holdout), mean and seed range', fontsize=10)
        axes[1, j].set_title(f'{n} classes: IWL, mean and seed range', fontsize=10)
        axes[1, j].set_xlabel('step')
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def peak_text(peak, threshold):
    """A mean peak ICL to two decimals, or three where two would round it up to the threshold it misses (0.796 is
    not 'ICL >= 0.8', and a table that printed 0.80 beside 'never' would read as a contradiction)."""
    return f"{peak:.3f}" if peak < threshold <= round(peak, 2) else f"{peak:.2f}"


def first_step(rows, threshold):
    """The first eval step whose ICL reaches threshold (one eval: the raw rule), or None."""
    return reach_step(rows, threshold, window=1)


def _median(firsts):
    ordered = sorted(float('inf') if f is None else f for f in firsts)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return 'never' if median == float('inf') else f"{median:.0f}"


def emergence_lines(cells, regs, counts, threshold):
    """Emergence over time (Singh et al.'s question, seeds declared up front): per cell, the share of its seeds
    whose holdout ICL has reached `threshold` (report.PEAK_RULE's reach rule: 3 consecutive evals) by each of six
    steps, the median first step over all seeds (a seed that never reaches it counts as later than every step; the
    raw rule's, one eval, beside it), and each seed's peak -> final ICL (fading) and final IWL."""
    last = max(c['rows'][-1]['iter'] for c in cells)
    evals = sorted({r['iter'] for c in cells for r in c['rows']})
    marks = sorted({min(evals, key=lambda it: abs(it - last * f)) for f in (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)})
    lines = [f"## Emergence over time (ICL >= {threshold:g})", "",
             f"Share of seeds whose holdout ICL has reached {threshold:g} by each step (3 consecutive evals averaging "
             f">= {threshold:g}); median first step over all seeds ('never' when half or more never reach it), the raw "
             f"rule's (one eval) in brackets; each seed's peak ICL (its step) -> final ICL, and its final IWL.", "",
             "| regulariser | classes | " + " | ".join(f"by {it}" for it in marks)
             + " | median first step [raw] | peak (step) -> final ICL per seed | final IWL per seed |",
             "|---|---|" + "---|" * (len(marks) + 3)]
    for reg in regs:
        for n in counts:
            group = sorted((c for c in cells if reg_of(c) == reg and class_count(c) == n), key=lambda c: c['seed'])
            if not group:
                continue
            trained = [[r for r in c['rows'] if r['iter'] > 0] for c in group]
            firsts = [reach_step(rows, threshold) for rows in trained]
            shares = [f"{sum(f is not None and f <= it for f in firsts)}/{len(group)}" for it in marks]
            arrows = ', '.join(f"{c['stats']['peak_icl']:.2f}{_step(c['stats'])} -> {c['stats']['final_icl']:.2f}"
                               for c in group)
            iwl = ', '.join(f"{c['stats']['final_iwl']:.2f}" for c in group)
            lines.append(f"| {reg_label(reg)} | {n} | " + " | ".join(shares)
                         + f" | {_median(firsts)} [{_median([first_step(rows, threshold) for rows in trained])}] | "
                           f"{arrows} | {iwl} |")
    return lines + ["", "![every seed's ICL, IWL and decayed-weight norm](emergence.png)", ""]


def _step(stats):
    """' (step)' of a seed's peak, so a reader sees whether it still rose at the end of the run."""
    return f" ({stats['peak_iter']})" if stats.get('peak_iter') is not None else ''


def plot_emergence(path, cells, regs, counts, threshold):
    """Every seed's ICL (solid) and IWL (dashed) curve, one panel per (regulariser, class count), and under it the
    norm of the weights that decay acts on (what a penalty shrinks while memorisation may persist)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = [(reg, n) for reg in regs for n in counts
              if any(reg_of(c) == reg and class_count(c) == n for c in cells)]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(3.6 * cols, 4.4 * rows), squeeze=False,
                             gridspec_kw={'height_ratios': [2, 1] * rows})
    for k, (reg, n) in enumerate(panels):
        ax, ax_norm = axes[2 * (k // cols), k % cols], axes[2 * (k // cols) + 1, k % cols]
        for c in sorted((c for c in cells if reg_of(c) == reg and class_count(c) == n), key=lambda c: c['seed']):
            steps = [r['iter'] for r in c['rows']]
            line, = ax.plot(steps, [r['icl_acc'] for r in c['rows']], lw=1.2, label=f"seed {c['seed']}")
            ax.plot(steps, [r['iwl_acc'] for r in c['rows']], lw=1, ls='--', color=line.get_color())
            if all('weight_norm' in r for r in c['rows']):
                ax_norm.plot(steps, [r['weight_norm'] for r in c['rows']], lw=1, color=line.get_color())
        ax.axhline(threshold, color='grey', lw=0.6, ls=':')
        ax.set_title(f"{reg_label(reg)}, {n} classes", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6, loc='lower right')
        ax_norm.set_ylabel('decayed-weight norm', fontsize=7)
        ax_norm.set_xlabel('step', fontsize=7)
        ax_norm.tick_params(labelsize=6)
    for k in range(len(panels), rows * cols):
        axes[2 * (k // cols), k % cols].axis('off')
        axes[2 * (k // cols) + 1, k % cols].axis('off')
    fig.suptitle('holdout ICL (solid) and IWL (dashed), every seed; below: norm of the weights decay acts on',
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def phase_verdict(cells, counts, few=100, many=1600, threshold=0.9):
    """The grid's verdict (report.verdict_lines), Few = 100 classes and Many = 1600 (the project's meanings): does
    some regularised Few cell reach `threshold` of Many's no-regulariser gain? None without both counts."""
    if few not in counts or many not in counts:
        return [], []
    groups = {}
    for c in cells:
        n = class_count(c)
        if n in (few, many):
            groups.setdefault(('', 'few' if n == few else 'many', reg_of(c)), []).append(c)
    lines, verdicts = verdict_lines(groups, [''], threshold)
    lines[0] = f"## Verdict: Few = {few} classes, Many = {many} classes"
    return lines, verdicts


def write_phase_report(root_dir, cells, threshold=0.8):
    """phase.png, phase_curves.png, phase.md and phase.json from the cells of a class x regulariser grid."""
    running = [c['name'] for c in cells if c['rows'] and c.get('regularizer') and not c['summary']]
    cells = [c for c in cells if c['rows'] and c.get('regularizer') and c['summary']]  # finished runs only
    if not cells:
        print(f"phase: no finished cell with a regularizer in {root_dir}: no report")
        return None
    table = phase_table(cells)
    regs = sorted({reg for reg, _ in table}, key=reg_order)
    counts = sorted({n for _, n in table})
    first = thresholds(table, regs, counts, threshold)
    plot_phase(os.path.join(root_dir, 'phase.png'), table, regs, counts, first, threshold)
    curves = plot_threshold_curves(os.path.join(root_dir, 'phase_curves.png'), cells, first)
    exponents = {reg_of(c): c['summary'].get('decay_exponent') for c in cells
                 if not reg_value(reg_of(c), 'l2')}  # lr*wd*steps: decay only
    lines = [f"# Phase diagram: {os.path.basename(os.path.normpath(root_dir))}", "",
             f"{len(cells)} finished runs" + (f" ({len(running)} still running: not shown)" if running else '')
             + f". {PEAK_RULE} ICL 'appears' at the first class count whose mean peak ICL >= {threshold:g}.", "",
             numerics_line([c['summary'] for c in cells]), "",
             "| regulariser | lr·wd·steps | ICL appears at | " + " | ".join(f"{n}" for n in counts) + " |",
             "|---|---|---|" + "---|" * len(counts)]
    for reg in regs:
        cellsrow = []
        for n in counts:
            t = table.get((reg, n))
            peak = '' if t is None else peak_text(t['peak_icl'], threshold) + ('°' if t['no_learning'] else '')
            cellsrow.append('-' if t is None else f"{peak} / "
                            f"{fmt_iwl(t['final_iwl'], t['iwl_chance'], '.2f')}"
                            + (f" ({t['seeds']} seeds, {t['peak_min']:.2f}-{t['peak_max']:.2f})" if t['seeds'] > 1 else ''))
        exponent = exponents.get(reg)
        lines.append(f"| {reg_label(reg)} | {'-' if exponent is None else format(exponent, '.3g')} | "
                     f"{first[reg] if first[reg] is not None else 'never'} | " + " | ".join(cellsrow) + " |")
    lines += ["", "Each entry: peak ICL / IWL at the end (IWL's chance, 1 / n_labels); ° = no learning: every seed's "
              "peak ICL is at most the chance-null peak (what a run at chance shows as its best of as many evals).", ""]
    lines += cells_lines(table, regs, counts) + ["![phase diagram](phase.png)", ""]
    if curves:
        lines += ["![ICL and IWL vs steps at the threshold](phase_curves.png)", ""]
    lines += emergence_lines(cells, regs, counts, threshold)
    plot_emergence(os.path.join(root_dir, 'emergence.png'), cells, regs, counts, threshold)
    verdict_md, verdicts = phase_verdict(cells, counts)
    lines += verdict_md
    thin = sorted({reg_label(r) for (r, n), t in table.items() if t['seeds'] < 3})
    if thin:
        lines += [f"Seeds: fewer than 3 in some cells ({', '.join(thin)}); declare seeds 0,1,2 in the grid config "
                  f"for every cell a claim rests on.", ""]
    with open(os.path.join(root_dir, 'phase.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(root_dir, 'verdict.json'), 'w') as f:
        json.dump(verdicts, f, indent=2)
    with open(os.path.join(root_dir, 'phase.json'), 'w') as f:
        json.dump({'threshold': threshold, 'peak_window': WINDOW, 'first_class_count': {reg_name(r): n for r, n in first.items()},
                   'table': [{'regularizer': reg_name(r), 'classes': n, **v}
                             for (r, n), v in sorted(table.items(), key=lambda kv: (reg_name(kv[0][0]), kv[0][1]))]},
                  f, indent=2)
    print("phase: ICL appears at " + ", ".join(f"{reg_label(r)}: {first[r] or 'never'}" for r in regs)
          + f"; report {os.path.join(root_dir, 'phase.md')}")
    return {reg_name(r): n for r, n in first.items()}  # keyed like the cell names: 'wd0', 'l2_0.001'
