"""
The grid's analysis and report: pure functions on the metrics rows of cell folders (run_stats, verdict),
and report.md / verdict.json / figures written from them. grid.py runs the cells and calls write_report;
phase.py draws the class-count x regulariser phase diagram from the same run_stats.
"""
import json
import os


def wd_name(wd):
    return f"wd{wd:g}"


# A cell's regulariser is its setting of the REG_KEYS (and any other train.py key a grid's regularizers entry
# sets), as a canonical tuple of (key, value) pairs without the keys at their defaults: () is no regulariser.
REG_KEYS = ('weight_decay', 'l2', 'decay_modules', 'label_swap')  # label order; other keys follow by name
REG_DEFAULTS = {'weight_decay': 0.0, 'l2': 0.0, 'decay_modules': 'all', 'label_swap': 0.0}
NONE = ()


def _key_rank(key):
    return (REG_KEYS.index(key), '') if key in REG_KEYS else (len(REG_KEYS), key)


def as_reg(reg):
    """The canonical regulariser of a setting dict, a (key, value) tuple, a (weight_decay, l2) pair or a bare
    weight decay (the weight_decays axis). decay_modules counts only when something decays."""
    if isinstance(reg, dict):
        items = dict(reg)
    elif isinstance(reg, tuple) and (not reg or isinstance(reg[0], tuple)):
        items = dict(reg)
    elif isinstance(reg, tuple):
        items = {'weight_decay': reg[0], 'l2': reg[1]}
    else:
        items = {'weight_decay': reg}
    items = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in items.items()}
    if 'decay_modules' in items:
        from model import DECAY_MODULES, parse_decay_modules
        modules = parse_decay_modules(items['decay_modules'])
        items['decay_modules'] = 'all' if modules == DECAY_MODULES else ','.join(modules)
        if not items.get('weight_decay') and not items.get('l2'):
            del items['decay_modules']
    return tuple(sorted(((k, v) for k, v in items.items() if v != REG_DEFAULTS.get(k, object())),
                        key=lambda kv: _key_rank(kv[0])))


def reg_value(reg, key):
    return dict(reg).get(key, REG_DEFAULTS.get(key))


def reg_of(cell):
    """A cell's regulariser: its grid setting (cells from before settings have weight_decay and l2 only)."""
    return as_reg({'weight_decay': cell['weight_decay'], 'l2': cell.get('l2', 0.0), **cell.get('setting', {})})


def reg_order(reg):
    """none, then the decays, then the L2 strengths, then label swap, each increasing; targeted after uniform."""
    return (len(reg) > 0, tuple((_key_rank(k), v if isinstance(v, float) else 0.0, str(v)) for k, v in reg))


def _terms(reg, value_form, modules_form):
    d = dict(reg)
    modules = d.pop('decay_modules', None)
    terms = []
    for key, value in sorted(d.items(), key=lambda kv: _key_rank(kv[0])):
        term = value_form(key, value)
        if modules and key in ('weight_decay', 'l2'):
            term += modules_form(modules)
            modules = None  # one decayed group: written once, on the first of wd / l2
        terms.append(term)
    return terms


_SHORT = {'weight_decay': 'wd', 'label_swap': 'swap'}


def reg_label(reg):
    """'wd=0' (none), 'wd=0.1', 'l2=0.001', 'wd=1@mlp+head', 'swap=0.2+wd=1@mlp', 'p_bursty=0.5' (grid syntax)."""
    reg = as_reg(reg)
    if not reg:
        return 'wd=0'
    terms = _terms(reg, lambda k, v: f"{_SHORT.get(k, k)}={v:g}" if isinstance(v, float) else f"{_SHORT.get(k, k)}={v}",
                   lambda m: '@' + m.replace(',', '+'))
    swap = [t for t in terms if t.startswith('swap=')]
    return '+'.join(swap + [t for t in terms if not t.startswith('swap=')])


def reg_name(reg):
    """File-name form, as grid.py names cells: wd0.01, l2_0.001, wd1-mlp-head, swap0.2_wd1-mlp."""
    reg = as_reg(reg)
    if not reg:
        return wd_name(0.0)

    def value_form(key, value):
        text = f"{value:g}" if isinstance(value, float) else str(value)
        return {'weight_decay': 'wd', 'l2': 'l2_', 'label_swap': 'swap'}.get(key, key + '_') + text
    terms = _terms(reg, value_form, lambda m: '-' + m.replace(',', '-'))
    swap = [t for t in terms if t.startswith('swap')]
    return '_'.join(swap + [t for t in terms if not t.startswith('swap')])


def _fmt(value, spec='.3f'):
    return '-' if value is None else format(value, spec)


# ---- analysis: pure functions on metrics rows -----------------------------------------------------

_lr_sums = {}


def lr_sum(config):
    """Sum of the learning rate over the run's steps, with train.py's own schedule function (cached: a
    paper-scale grid has 30 cells of 500k steps with one schedule). wd * lr_sum is the decay exponent."""
    from model import learning_rate_at
    key = tuple(config.get(k) for k in ('learning_rate', 'warmup_iters', 'max_iters', 'lr_schedule', 'min_lr'))
    if key not in _lr_sums:
        _lr_sums[key] = sum(learning_rate_at(it, config) for it in range(config['max_iters']))
    return _lr_sums[key]


def run_stats(rows):
    """One seed's numbers from its metrics rows: peak ICL (first max after step 0: the untrained model's
    value is no peak), its step, and the attention / calibration at that step; final ICL and IWL; the
    chance level of its episodes (best constant answer) with flags for 'no learning' (the peak is within
    2 standard errors of chance) and 'below chance' (the final ICL is more than 2 standard errors under it)."""
    trained = [r for r in rows if r['iter'] > 0] or rows
    peak = max(trained, key=lambda r: r['icl_acc'])  # max() keeps the first of equal values
    final = rows[-1]
    chance = rows[0].get('icl_chance', 0.5)
    n = rows[0].get('icl_episodes')
    se = (chance * (1 - chance) / n) ** 0.5 if n else 0.0
    return {'peak_icl': peak['icl_acc'], 'peak_iter': peak['iter'], 'ece_at_peak': peak['ece'],
            'attn_image_at_peak': peak['attn_match_image'], 'attn_label_at_peak': peak['attn_match_label'],
            'final_icl': final['icl_acc'], 'final_iwl': final['iwl_acc'], 'final_iter': final['iter'],
            'chance': chance, 'icl_se': se, 'no_learning': peak['icl_acc'] <= chance + 2 * se,
            'below_chance': final['icl_acc'] < chance - 2 * se}


def _mean(values):
    return sum(values) / len(values)


def _candidate(reg, runs, base, min_attn, min_iwl):
    """One regularised Few cell against the Many+wd=0 baseline runs: its ratios and collapse checks."""
    peaks, base_peaks = [r['peak_icl'] for r in runs], [r['peak_icl'] for r in base]
    attn = _mean([r['attn_label_at_peak'] for r in runs])
    iwl = _mean([r['final_iwl'] for r in runs])
    finals = [r['final_icl'] for r in runs if 'final_icl' in r]
    base_finals = [r['final_icl'] for r in base if 'final_icl' in r]
    return {**{k: reg_value(reg, k) for k in REG_KEYS}, 'regularizer': reg_label(reg), 'n_seeds': len(runs),
            'ratio': _mean(peaks) / _mean(base_peaks),
            'final_ratio': _mean(finals) / _mean(base_finals) if finals and base_finals and _mean(base_finals) > 0 else None,
            'ratio_lo': min(peaks) / max(base_peaks), 'ratio_hi': max(peaks) / max(min(base_peaks), 1e-12),
            'attn_label': attn, 'attn_ok': attn >= min_attn, 'final_iwl': iwl, 'iwl_ok': iwl >= min_iwl}


def verdict(groups, threshold=0.9, attn_fraction=0.5, iwl_fraction=0.5):
    """Does some regularised Few cell reach `threshold` x the Many+wd=0 (no regulariser) peak ICL without collapse?

    groups: {('few'|'many', regulariser): [run_stats-like dicts, one per seed]}, the regulariser a weight
    decay or a (weight_decay, l2) pair, so classical L2 cells are candidates too (needs peak_icl,
    attn_label_at_peak, final_iwl). Rule (also written into report.md):
    - ratio of a cell = its mean-over-seeds peak ICL / the Many+wd=0 mean peak ICL; its seed range is
      [min seed peak / max baseline peak, max seed peak / min baseline peak] (both sides' seed spread);
    - no collapse: at its peak the cell's mean attn_match_label is >= attn_fraction x the baseline's (ICL
      by the same query->matching-label circuit), and its mean final IWL is >= iwl_fraction x the Few+wd=0
      mean final IWL (decay did not simply wipe out what the network can learn in weights);
    - SUPPORTED if some regularised Few cell (wd > 0 or l2 > 0) without collapse has its whole seed range
      >= threshold; else
      INCONCLUSIVE if the range of some cell without collapse straddles the threshold; else NOT SUPPORTED
      (every range below it, or the cells that reach it collapse). 'best' is the deciding cell: the
      highest mean ratio among those that qualify (for NOT SUPPORTED: among cells without collapse, or
      among all when every cell collapses).
    Raises ValueError naming a missing group."""
    groups = {(cls, as_reg(reg)): runs for (cls, reg), runs in groups.items()}
    for cls in ('many', 'few'):
        if not groups.get((cls, NONE)):
            raise ValueError(f"no finished runs for the {cls} wd=0 cells, needed for the verdict")
    base = groups[('many', NONE)]
    base_peaks = [r['peak_icl'] for r in base]
    base_mean = _mean(base_peaks)
    if base_mean <= 0:
        raise ValueError("the Many+wd=0 baseline has zero peak ICL")
    base_attn = _mean([r['attn_label_at_peak'] for r in base])
    few0_iwl = _mean([r['final_iwl'] for r in groups[('few', NONE)]])
    candidates = [_candidate(reg, runs, base, attn_fraction * base_attn, iwl_fraction * few0_iwl)
                  for (cls, reg), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], reg_order(kv[0][1])))
                  if cls == 'few' and reg != NONE and runs]
    for c in candidates:
        c['eligible'] = c['attn_ok'] and c['iwl_ok']
    out = {'baseline_peak': base_mean, 'baseline_attn_label': base_attn, 'few_wd0_final_iwl': few0_iwl,
           'few_wd0_ratio': _mean([r['peak_icl'] for r in groups[('few', NONE)]]) / base_mean,
           'threshold': threshold, 'candidates': candidates, 'best': None}
    if not candidates:
        raise ValueError("no finished Few cells with a regulariser (weight decay or l2 > 0)")
    eligible = [c for c in candidates if c['eligible']]
    above = [c for c in eligible if c['ratio_lo'] >= threshold]
    straddle = [c for c in eligible if c['ratio_lo'] < threshold <= c['ratio_hi']]
    if above:
        out['verdict'], pool = 'SUPPORTED', above
    elif straddle:
        out['verdict'], pool = 'INCONCLUSIVE', straddle
    else:
        out['verdict'], pool = 'NOT SUPPORTED', eligible or candidates
    best = max(pool, key=lambda c: c['ratio'])
    out['best'] = best
    rel = ('>=' if best['ratio_lo'] >= threshold else 'straddles' if best['ratio_hi'] >= threshold else '<')
    who = ('best Few cell without collapse' if best['eligible']
           else 'best Few cell (every regularised Few cell fails the collapse check)')
    out['reason'] = (f"{who}: "
                     f"{best['regularizer']}, its peak ICL is {best['ratio']:.3f} (seed range "
                     f"{best['ratio_lo']:.3f}-{best['ratio_hi']:.3f}) of the Many+wd=0 peak, {rel} {threshold:g}")
    collapsed = [c for c in candidates if not c['eligible'] and c['ratio_hi'] >= threshold]
    if collapsed and out['verdict'] != 'SUPPORTED':
        out['reason'] += ("; reaching the threshold but collapsed: "
                          + ", ".join(f"{c['regularizer']} ({'attention' if not c['attn_ok'] else 'IWL'})"
                                      for c in collapsed))
    return out


# ---- report ----------------------------------------------------------------------------------------

# config keys that may differ between the cells of one grid; any other difference is flagged in report.md
VARYING_KEYS = {'seed', 'weight_decay', 'l2', 'decay_modules', 'label_swap', 'n_train_classes', 'n_embd', 'n_head', 'out_dir', 'init_from', 'overwrite',
                'device', 'compile', 'compile_mode', 'dtype', 'log_interval', 'keep_checkpoints'}


def load_cells(root_dir):
    """Every cell folder in root_dir that has a cell.json: its description, metrics rows, summary (or None)."""
    from checkpoint import read_metrics
    cells = []
    for name in sorted(os.listdir(root_dir)) if os.path.isdir(root_dir) else []:
        cell_dir = os.path.join(root_dir, name)
        path = os.path.join(cell_dir, 'cell.json')
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            cell = json.load(f)
        summary_path = os.path.join(cell_dir, 'summary.json')
        cell['summary'] = json.load(open(summary_path)) if os.path.exists(summary_path) else None
        cell['rows'] = read_metrics(cell_dir)
        cell['dir'] = cell_dir
        cells.append(cell)
    return cells


def _curves(runs, key):
    """(iters, mean, lo, hi) over the iters that every run has reached."""
    common = sorted(set.intersection(*[{r['iter'] for r in run['rows']} for run in runs]))
    values = [[{r['iter']: r[key] for r in run['rows']}[it] for it in common] for run in runs]
    per_iter = list(zip(*values))
    return common, [_mean(v) for v in per_iter], [min(v) for v in per_iter], [max(v) for v in per_iter]


def _save(fig, path):
    tmp = f"{path}.{os.getpid()}.tmp.png"  # several shards may write the report at once
    fig.savefig(tmp, dpi=110, bbox_inches='tight')
    os.replace(tmp, path)


def cells_table(groups, class_names, label, shown):
    """report.md's per-cell-group table (mean over finished seeds, [min-max] over seeds), with the
    regularisers side by side (lr·wd·steps for decay, l2) and flags: 'no learning' when every seed's peak
    ICL is within 2 standard errors of chance, 'ends below chance' when the mean final ICL is more than
    2 standard errors under it (a bias toward one of the two context labels, not ICL)."""
    lines = ["## Cells (mean over finished seeds; [min-max] over seeds)", "",
             "| cell | seeds | peak ICL [min-max] | step of peak | final ICL | final IWL | ECE @peak | attn image @peak | "
             "attn label @peak | lr·wd·steps | l2 | flags |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (width, cls, reg), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], class_names.index(kv[0][1]),
                                                                         reg_order(kv[0][2]))):
        done = shown(runs)
        s = [r['stats'] for r in done]
        peaks = [x['peak_icl'] for x in s]
        exps = [r['exponent'] for r in done if r['exponent'] is not None]
        l2s = sorted({r['summary']['config'].get('l2', 0.0) for r in done if r['summary']})
        final = _mean([x['final_icl'] for x in s])
        flags = (['no learning'] if all(x['no_learning'] for x in s) else []) + \
            (['ends below chance'] if final < _mean([x['chance'] - 2 * x['icl_se'] for x in s]) else [])
        lines.append(
            f"| {label(width, cls, reg)} | {sum(1 for r in runs if r['summary'])}/{len(runs)} | {_mean(peaks):.3f} "
            f"[{min(peaks):.3f}-{max(peaks):.3f}] | {_mean([x['peak_iter'] for x in s]):.0f} "
            f"[{min(x['peak_iter'] for x in s)}-{max(x['peak_iter'] for x in s)}] | "
            f"{final:.3f} | {_mean([x['final_iwl'] for x in s]):.3f} | "
            f"{_mean([x['ece_at_peak'] for x in s]):.3f} | {_mean([x['attn_image_at_peak'] for x in s]):.2f} | "
            f"{_mean([x['attn_label_at_peak'] for x in s]):.2f} | {_fmt(_mean(exps) if exps else None, '.3g')} | "
            f"{', '.join(f'{v:g}' for v in l2s) or '-'} | {', '.join(flags) or '-'} |")
    return lines


def group_cells(cells):
    """{(width, classes, (weight_decay, l2)): cells (seeds)} with each cell's run_stats and decay exponent."""
    groups = {}
    for c in cells:
        c['stats'] = run_stats(c['rows'])
        c['exponent'] = (c['weight_decay'] * lr_sum(c['summary']['config'])) if c['summary'] else None
        groups.setdefault((c['width'], c['classes'], reg_of(c)), []).append(c)
    return groups


def shown(runs):
    """The seeds a figure or table shows: the finished ones (all of one length), the running ones only while
    none has finished."""
    return [r for r in runs if r['summary']] or runs


def label(width, cls, reg=None):
    return ' '.join(s for s in (cls.capitalize(), width, None if reg is None else reg_label(as_reg(reg))) if s)


def plot_group(path, runs, title, chance):
    """One cell group: ICL and IWL vs steps, mean over seeds with min-max band, peak and final ICL marked."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharex=True)
    for ax, key, name in [(axes[0], 'icl_acc', 'ICL (held-out classes)'), (axes[1], 'iwl_acc', 'IWL (seen classes)')]:
        it, mean, lo, hi = _curves(runs, key)
        ax.fill_between(it, lo, hi, alpha=0.25, color='C0', label=f'min-max over {len(runs)} seeds')
        ax.plot(it, mean, color='C0', label='mean')
        if key == 'icl_acc':  # the numbers of the report table: each seed's peak, the mean final
            peaks = [r['stats'] for r in runs]
            ax.plot([p['peak_iter'] for p in peaks], [p['peak_icl'] for p in peaks], 'v', color='C3', ms=8,
                    label=f"seed peaks: mean {_mean([p['peak_icl'] for p in peaks]):.3f} "
                          f"@ {_mean([p['peak_iter'] for p in peaks]):.0f}")
            ax.plot(it[-1], mean[-1], 'o', color='k', ms=7, label=f'final {mean[-1]:.3f}')
        ax.axhline(chance if key == 'icl_acc' else 0, color='gray', lw=0.8, ls=':')
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel('step')
        ax.legend(fontsize=7, loc='best')
    fig.suptitle(title, fontsize=11)
    _save(fig, path)
    plt.close(fig)


def plot_icl_vs_steps(path, groups, widths, class_names, regs, chance):
    """ICL (and IWL) vs steps for every regulariser, class settings side by side: transience shows here."""
    import matplotlib.pyplot as plt
    colors = plt.get_cmap('viridis')
    color_of = {reg: colors(i / max(1, len(regs) - 1) * 0.9) for i, reg in enumerate(regs)}
    columns = [(w, cls) for w in widths for cls in class_names]
    fig, axes = plt.subplots(2, len(columns), figsize=(4.6 * len(columns), 6.4), sharex=True, sharey=True,
                             squeeze=False)
    for j, (width, cls) in enumerate(columns):
        for i, (key, name) in enumerate([('icl_acc', 'ICL'), ('iwl_acc', 'IWL')]):
            ax = axes[i, j]
            for reg in regs:
                runs = groups.get((width, cls, reg))
                if not runs:
                    continue
                it, mean, lo, hi = _curves(shown(runs), key)
                ax.fill_between(it, lo, hi, alpha=0.12, color=color_of[reg])
                ax.plot(it, mean, color=color_of[reg], label=reg_label(reg))
            ax.set_title(f"{label(width, cls)}: {name}", fontsize=10)
            ax.axhline(chance if key == 'icl_acc' else 0, color='gray', lw=0.8, ls=':')
            if i == 1:
                ax.set_xlabel('step')
            if j == 0:
                ax.set_ylabel(f"{name} accuracy")
        axes[0, j].legend(fontsize=8, loc='best')  # per column: columns may show different regularisers
    fig.suptitle('mean over seeds, band = min-max', fontsize=10)
    _save(fig, path)
    plt.close(fig)


def plot_peak_bars(path, groups, widths, class_names, regs, chance, threshold):
    """Peak ICL vs regulariser (weight decay, or l2), a bar per class setting, error bars = seed min-max."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(widths), figsize=(max(6, 1.1 * len(regs) + 2) * len(widths), 3.8),
                             squeeze=False)
    for j, width in enumerate(widths):
        ax = axes[0, j]
        bar_w = 0.8 / len(class_names)
        for k, cls in enumerate(class_names):
            xs, heights, err_lo, err_hi = [], [], [], []
            for x, reg in enumerate(regs):
                runs = groups.get((width, cls, reg))
                if not runs:
                    continue
                peaks = [r['stats']['peak_icl'] for r in shown(runs)]
                xs.append(x + (k - (len(class_names) - 1) / 2) * bar_w)
                heights.append(_mean(peaks))
                err_lo.append(_mean(peaks) - min(peaks))
                err_hi.append(max(peaks) - _mean(peaks))
            bars = ax.bar(xs, heights, bar_w, yerr=[err_lo, err_hi], capsize=3, label=label('', cls), color=f"C{k}")
            ax.bar_label(bars, fmt='%.2f', fontsize=7, padding=4)
        base = groups.get((width, 'many', NONE))
        if base:
            ref = threshold * _mean([r['stats']['peak_icl'] for r in base])
            ax.axhline(ref, color='C3', ls='--', lw=1, label=f"{threshold:g} x Many wd=0 peak")
        ax.axhline(chance, color='gray', lw=0.8, ls=':', label=f'chance {chance:.3f}')
        plain = all(len(reg) <= 1 and not reg_value(reg, 'l2') for reg in regs)  # a weight-decay axis alone
        ax.set_xticks(range(len(regs)), [f"{reg_value(reg, 'weight_decay'):g}" if plain else reg_label(reg)
                                         for reg in regs], rotation=0 if plain else 30, ha='center' if plain else 'right')
        ax.set_xlabel('weight decay' if plain else 'regulariser')
        ax.set_ylabel('peak ICL accuracy (mean over seeds)')
        ax.set_ylim(0, 1.1)
        ax.set_title(f"peak ICL vs {'weight decay' if plain else 'regulariser'}"
                     f"{' (' + width + ')' if width else ''}", fontsize=10)
        ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.18), ncol=4, frameon=False)
    _save(fig, path)
    plt.close(fig)


def header_lines(root_dir, cells):
    """report.md's title, what is finished, what every cell shares (and a warning where they differ)."""
    finished = [c for c in cells if c['summary']]
    lines = [f"# Grid report: {root_dir}", "",
             f"{len(finished)} of {len(cells)} cells with metrics are finished"
             + (f" (still running or interrupted: {', '.join(c['name'] for c in cells if not c['summary'])})"
                if len(finished) < len(cells) else '') + ".", ""]
    if finished:
        configs = [c['summary']['config'] for c in finished]
        differing = sorted(k for k in configs[0] if k not in VARYING_KEYS and len({repr(cf.get(k)) for cf in configs}) > 1)
        cf = configs[0]
        lines += [f"Same in every finished cell: dataset {cf['dataset']}, data_seed {cf['data_seed']} (holdout classes, "
                  f"label vocabulary of {cf['n_labels']} ({cf['label_mode']}), eval episodes), {cf['max_iters']} steps x "
                  f"batch {cf['batch_size']} x {2 * cf['context_len'] + 1} tokens, lr {cf['learning_rate']:g} "
                  f"({cf['lr_schedule']}), {cf['n_layer']} layers."]
        if differing:
            lines += ["", "**Warning: these config keys differ between cells (they should not):** "
                      + ", ".join(f"{k} ({sorted({repr(c.get(k)) for c in configs})})" for k in differing)]
        lines += [""]
    return lines


RULE = ("Rule: ratio = mean-over-seeds peak ICL of a regularised Few cell (wd>0 or l2>0) / mean peak ICL of "
        "Many+wd=0 (same width); "
        "its seed range is [min Few seed peak / max Many seed peak, max Few seed peak / min Many seed peak]. "
        "A cell counts only *without collapse*: (i) at its peak, attn_match_label (query attention on the label "
        "after the matching context image, best layer) is >= 0.5 x the Many+wd=0 value at its peak, so its ICL runs "
        "on the same induction circuit and not on a shortcut; (ii) its final IWL is >= 0.5 x the Few+wd=0 final IWL, "
        "so decay shifted the ICL/IWL balance instead of erasing what the network can store in its weights.  "
        "SUPPORTED if some regularised Few cell without collapse has its whole seed range >= {t:g}; else "
        "INCONCLUSIVE if the range of some cell without collapse straddles {t:g}; else NOT SUPPORTED "
        "(all below, or the cells that reach it collapse).")


def verdict_lines(groups, widths, threshold):
    """(report.md lines, verdict dicts): one verdict per width, or why there is none yet."""
    lines, verdicts = [], []
    for width in widths:
        vgroups = {(cls, reg): [r['stats'] for r in runs if r['summary']]
                   for (w, cls, reg), runs in groups.items() if w == width}
        head = f"## Verdict{' (' + width + ')' if width else ''}"
        try:
            v = verdict(vgroups, threshold)
        except ValueError as e:
            lines += [head, "", f"No verdict yet: {e}.", ""]
            continue
        v['width'] = width
        verdicts.append(v)
        lines += [head, "", f"**{v['verdict']}**: {v['reason']}.", "",
                  f"Many+wd=0 baseline: peak ICL {v['baseline_peak']:.3f}, attn_match_label at peak "
                  f"{v['baseline_attn_label']:.2f}. Few+wd=0 reaches {v['few_wd0_ratio']:.3f} of it "
                  f"(final IWL {v['few_wd0_final_iwl']:.3f}).", "",
                  "| Few cell | peak ICL / Many wd=0 peak (seed range) | final ICL / Many wd=0 final | "
                  "attn_match_label @peak | attn ok | final IWL | IWL ok |",
                  "|---|---|---|---|---|---|---|"]
        for c in v['candidates']:
            lines.append(f"| {c['regularizer']} | {c['ratio']:.3f} ({c['ratio_lo']:.3f}-{c['ratio_hi']:.3f}) | "
                         f"{_fmt(c['final_ratio'])} | {c['attn_label']:.2f} | {'yes' if c['attn_ok'] else 'no'} | "
                         f"{c['final_iwl']:.3f} | {'yes' if c['iwl_ok'] else 'no'} |")
        lines.append("")
    return lines + [RULE.format(t=threshold), ""], verdicts


def runs_table(cells):
    lines = ["## Runs", "",
             "| run | last step | peak ICL | step of peak | final ICL | final IWL | ECE @peak | attn label @peak | log |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: c['name']):
        s = c['stats']
        lines.append(f"| {c['name']} | {s['final_iter']}{'' if c['summary'] else ' (running)'} | {s['peak_icl']:.3f} | "
                     f"{s['peak_iter']} | {s['final_icl']:.3f} | {s['final_iwl']:.3f} | {s['ece_at_peak']:.3f} | "
                     f"{s['attn_label_at_peak']:.2f} | {c['name']}/train.log |")
    return lines


def write_report(root_dir, threshold=0.9):
    """Figures and report.md from every cell in root_dir. Returns the verdict dicts (one per width)."""
    import matplotlib
    matplotlib.use('Agg')
    cells = [c for c in load_cells(root_dir) if c['rows']]
    if not cells:
        print(f"grid: no cell with metrics in {root_dir}: no report")
        return []
    fig_dir = os.path.join(root_dir, 'figures')
    os.makedirs(fig_dir, exist_ok=True)
    widths = sorted({c['width'] for c in cells})
    class_names = [k for k in ('few', 'many') if any(c['classes'] == k for c in cells)] + \
        sorted({c['classes'] for c in cells} - {'few', 'many'})
    regs = sorted({reg_of(c) for c in cells}, key=reg_order)
    groups = group_cells(cells)
    chance = _mean([c['stats']['chance'] for c in cells])  # measured on the ICL episodes (0.5 when balanced)
    group_figs = []
    for (width, cls, reg), runs in sorted(groups.items()):
        name = f"group_{cls}_{reg_name(reg)}" + (f"_{width}" if width else '') + '.png'
        plot_group(os.path.join(fig_dir, name), shown(runs), label(width, cls, reg), chance)
        group_figs.append(name)
    plot_icl_vs_steps(os.path.join(root_dir, 'icl_vs_steps.png'), groups, widths, class_names, regs, chance)
    plot_peak_bars(os.path.join(root_dir, 'peak_icl.png'), groups, widths, class_names, regs, chance, threshold)

    lines = header_lines(root_dir, cells)
    more, verdicts = verdict_lines(groups, widths, threshold)
    lines += more + cells_table(groups, class_names, label, shown)
    lines += ["", "seeds: finished/with metrics. lr·wd·steps = wd x (sum of the learning rate over all steps, "
              "from the config's schedule): decayed weights that get no gradient shrink by exp(-lr·wd·steps).", ""]
    lines += runs_table(cells)
    lines += ["", "## Figures", "", "![ICL and IWL vs steps](icl_vs_steps.png)", "",
              "![peak ICL vs regulariser](peak_icl.png)", ""]
    lines += [f"- [{name}](figures/{name})" for name in group_figs]
    for name, content in [('report.md', '\n'.join(lines) + '\n'), ('verdict.json', json.dumps(verdicts, indent=2))]:
        tmp = os.path.join(root_dir, f"{name}.{os.getpid()}.tmp")
        with open(tmp, 'w') as f:
            f.write(content)
        os.replace(tmp, os.path.join(root_dir, name))
    return verdicts


