"""
The grid's analysis and report: pure functions on the metrics rows of cell folders (run_stats, verdict),
and report.md / verdict.json / figures written from them. grid.py runs the cells and calls write_report;
phase.py draws the class-count x regulariser phase diagram from the same run_stats. The statistics (class
bootstrap intervals, the chance-null peak, the smoothed peak and reach step, the chance-corrected ratio) are stats.py's.
"""
import json
import os

from tracking import TRACKING_KEYS

import stats


def wd_name(wd):
    return f"wd{wd:g}"


# A cell's regulariser is its setting of the REG_KEYS (and any other train.py key a grid's regularizers entry
# sets), as a canonical tuple of (key, value) pairs without the keys at their defaults: () is no regulariser.
REG_KEYS = ('weight_decay', 'l2', 'decay_modules', 'label_swap', 'label_swap_to')  # label order; others by name
REG_DEFAULTS = {'weight_decay': 0.0, 'l2': 0.0, 'decay_modules': 'all', 'label_swap': 0.0, 'label_swap_to': 'train'}
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
    if not items.get('label_swap'):
        items.pop('label_swap_to', None)  # which labels a swap draws from matters only when there is one
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
    """A cell's regulariser: its grid setting (cells from before settings have weight_decay and l2 only), with the
    regulariser keys newer than its run at the value they had then (checkpoint.saved_config: a swap run from
    before label_swap_to drew from every label and reads as swap_to=all)."""
    from checkpoint import saved_config
    setting = {'weight_decay': cell['weight_decay'], 'l2': cell.get('l2', 0.0), **cell.get('setting', {})}
    config = (cell.get('summary') or {}).get('config')
    if config:
        setting = {**{k: v for k, v in saved_config(config).items() if k in REG_KEYS and k not in config}, **setting}
    return as_reg(setting)


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


_SHORT = {'weight_decay': 'wd', 'label_swap': 'swap', 'label_swap_to': 'swap_to'}


def reg_label(reg):
    """'wd=0' (none), 'wd=0.1', 'l2=0.001', 'wd=1@mlp+head', 'swap=0.2+wd=1@mlp', 'p_bursty=0.5' (grid syntax)."""
    reg = as_reg(reg)
    if not reg:
        return 'wd=0'
    terms = _terms(reg, lambda k, v: f"{_SHORT.get(k, k)}={v:g}" if isinstance(v, float)
                   else f"{_SHORT.get(k, k)}={str(v).replace(',', '+')}",
                   lambda m: '@' + m.replace(',', '+'))
    swap = [t for t in terms if t.startswith('swap=')]
    return '+'.join(swap + [t for t in terms if not t.startswith('swap=')])


def reg_name(reg):
    """File-name form, as grid.py names cells: wd0.01, l2_0.001, wd1-mlp-head, swap0.2_wd1-mlp."""
    reg = as_reg(reg)
    if not reg:
        return wd_name(0.0)

    def value_form(key, value):
        text = f"{value:g}" if isinstance(value, float) else str(value).replace(',', '-')
        return {'weight_decay': 'wd', 'l2': 'l2_', 'label_swap': 'swap', 'label_swap_to': 'to_'}.get(key, key + '_') + text
    terms = _terms(reg, value_form, lambda m: '-' + m.replace(',', '-'))
    swap = [t for t in terms if t.startswith('swap')]
    return '_'.join(swap + [t for t in terms if not t.startswith('swap')])


def _fmt(value, spec='.3f'):
    return '-' if value is None else format(value, spec)


# ---- analysis: pure functions on metrics rows -----------------------------------------------------

_exponents = {}


def cached_decay_exponent(config):
    """model.decay_exponent (sum of lr * wd over the run, from the schedule functions train.py's optimizer steps by),
    cached: a paper-scale grid has 30 cells of 500k steps with a few schedules. Cells that differ only in where they
    write or their seed share it."""
    from checkpoint import saved_config
    from model import decay_exponent
    key = repr(sorted((k, v) for k, v in config.items() if k not in ('out_dir', 'seed', 'wandb_run_name')))
    if key not in _exponents:
        _exponents[key] = decay_exponent(saved_config(config))  # keys newer than the run at their old behaviour
    return _exponents[key]


PEAK_RULE = (f"Peak ICL = the best mean of {stats.WINDOW} consecutive evals (its step: the window's middle eval); "
             f"ICL 'reaches' x at the last eval of the first {stats.WINDOW} consecutive evals that average >= x. One "
             f"lucky eval makes neither; the raw maximum (the best single eval) is shown beside it.")


def run_stats(rows, config=None):
    """One seed's numbers from its metrics rows (after step 0: the untrained model's value is no peak). The peak is
    PEAK_RULE's: the best mean of 3 consecutive evals, with the attention / calibration / training-distribution
    accuracy at the window's middle eval and the window's pooled per-class hits as its measure; the raw maximum
    (best single eval) and its step beside it; final ICL and IWL; the chance levels (ICL: best constant answer of
    its episodes; IWL: 1 / n_labels of config, None without one); 95% intervals of peak and final ICL
    (stats.accuracy_ci: over held-out classes, or episodes for rows from before per-class hits); flags 'no
    learning' (the raw maximum is at most the 95th percentile of a chance-level run's best of as many evals,
    stats.null_peak) and 'below chance' (the final ICL's interval lies under chance)."""
    trained = [r for r in rows if r['iter'] > 0] or rows
    raw = max(trained, key=lambda r: r['icl_acc'])  # max() keeps the first of equal values
    smooth, smooth_iter = stats.smoothed_peak(trained)
    window = stats.peak_window(trained)
    peak = window[len(window) // 2]
    final = rows[-1]
    chance = rows[0].get('icl_chance', 0.5)
    n = rows[0].get('icl_episodes')
    se = (chance * (1 - chance) / n) ** 0.5 if n else 0.0
    null = stats.null_peak(len(trained), n, chance) if n else chance + 2 * se
    peak_m, final_m = stats.window_measure(window, n), stats.measure(final, n)
    peak_lo, peak_hi, method = stats.accuracy_ci([peak_m])
    final_lo, final_hi, _ = stats.accuracy_ci([final_m])
    return {'peak_icl': smooth, 'peak_iter': smooth_iter, 'raw_peak_icl': raw['icl_acc'], 'raw_peak_iter': raw['iter'],
            'ece_at_peak': peak['ece'],
            'attn_image_at_peak': peak['attn_match_image'], 'attn_label_at_peak': peak['attn_match_label'],
            'train_dist_at_peak': peak.get('train_dist_acc'), 'final_train_dist': final.get('train_dist_acc'),
            'smoothed_peak': smooth, 'smoothed_iter': smooth_iter, 'n_evals': len(trained), 'null_peak': null,
            'final_icl': final['icl_acc'], 'final_iwl': final['iwl_acc'], 'final_iter': final['iter'],
            'iwl_chance': iwl_chance(config), 'chance': chance, 'icl_se': se,
            'peak_ci': None if peak_lo is None else [peak_lo, peak_hi],
            'final_ci': None if final_lo is None else [final_lo, final_hi], 'ci_method': method,
            'peak_measure': peak_m, 'final_measure': final_m,
            'no_learning': raw['icl_acc'] <= null,
            'below_chance': final_hi < chance if final_hi is not None else final['icl_acc'] < chance - 2 * se}


def iwl_chance(config):
    """IWL's chance level: one of the config's n_labels labels at random (None without a config)."""
    return 1 / config['n_labels'] if config and config.get('n_labels') else None


def fmt_iwl(iwl, chance, spec='.3f'):
    """An IWL number with its chance beside it: '0.820 (chance 1/1623)'."""
    return f"{iwl:{spec}}" + ('' if chance is None else f" (chance 1/{round(1 / chance)})")


def _mean(values):
    return sum(values) / len(values)


def _chance(runs):
    return _mean([r.get('chance', 0.5) for r in runs])


def _measures(runs):
    return [r.get('peak_measure') for r in runs]


def _collapse(runs, few0, min_attn, train_fraction):
    """The collapse checks of one cell: attention circuit at the peak, and (when every seed of the cell and some
    Few+wd=0 seed have it) accuracy on held-out training-distribution sequences at the peak against Few+wd=0's
    final one. IWL is not judged:
    suppressing memorisation is the mechanism under test."""
    attn = _mean([r['attn_label_at_peak'] for r in runs])
    train = [r.get('train_dist_at_peak') for r in runs]
    ref = [v for v in (r.get('final_train_dist') for r in few0) if v is not None]  # Few+wd=0 seeds that have it
    judged = bool(ref) and all(v is not None for v in train)
    train_acc = _mean(train) if judged else None
    train_ok = train_acc >= train_fraction * _mean(ref) if judged else None
    return {'attn_label': attn, 'attn_ok': attn >= min_attn, 'train_dist_acc': train_acc, 'train_dist_ok': train_ok,
            'collapse_judged_on': 'attention and training-distribution accuracy' if judged else 'attention only'}


def _candidate(reg, runs, base, few0, min_attn, train_fraction, n_levers=1):
    """One regularised Few cell against the Many+wd=0 baseline runs: raw and chance-corrected ratios (seed
    range, class bootstrap interval; and the family interval, Bonferroni-widened over the n_levers tried), IWL
    beside its chance, and the collapse checks."""
    peaks, base_peaks = [r['peak_icl'] for r in runs], [r['peak_icl'] for r in base]
    chance, base_chance = _chance(runs), _chance(base)
    iwl, few0_iwl = _mean([r['final_iwl'] for r in runs]), _mean([r['final_iwl'] for r in few0])
    finals = [r['final_icl'] for r in runs if 'final_icl' in r]
    base_finals = [r['final_icl'] for r in base if 'final_icl' in r]

    def corr(few, many):
        return stats.corrected_ratio(few, many, chance, base_chance)
    seed_lo, seed_hi = corr(min(peaks), max(base_peaks)), corr(max(peaks), min(base_peaks))
    seed_hi = float('inf') if seed_hi is None else seed_hi  # a baseline seed at chance: any ratio is possible
    ci_lo, ci_hi, method = stats.ratio_ci(_measures(runs), _measures(base), chance, base_chance)
    lo, hi = (seed_lo, seed_hi) if ci_lo is None else (min(seed_lo, ci_lo), max(seed_hi, ci_hi))
    family_level = 1 - (1 - stats.LEVEL) / n_levers
    if n_levers > 1:  # one lever: its family interval is its 95% one (no second bootstrap)
        f_lo, f_hi, _ = stats.ratio_ci(_measures(runs), _measures(base), chance, base_chance, level=family_level)
        f_lo, f_hi = (seed_lo, seed_hi) if f_lo is None else (min(seed_lo, f_lo), max(seed_hi, f_hi))
    else:
        f_lo, f_hi = lo, hi
    raw, base_raw = [r.get('raw_peak_icl', r['peak_icl']) for r in runs], [r.get('raw_peak_icl', r['peak_icl']) for r in base]
    return {**{k: reg_value(reg, k) for k in REG_KEYS}, 'regularizer': reg_label(reg), 'n_seeds': len(runs),
            'ratio': _mean(peaks) / _mean(base_peaks), 'raw_max_ratio': _mean(raw) / _mean(base_raw),
            'seeds_at_posed': sum(p >= POSED_THRESHOLD * _mean(base_peaks) for p in peaks),
            'final_ratio': _mean(finals) / _mean(base_finals) if finals and base_finals and _mean(base_finals) > 0 else None,
            'ratio_lo': min(peaks) / max(base_peaks), 'ratio_hi': max(peaks) / max(min(base_peaks), 1e-12),
            'corrected': corr(_mean(peaks), _mean(base_peaks)), 'corrected_seed_range': [seed_lo, seed_hi],
            'corrected_ci': None if ci_lo is None else [ci_lo, ci_hi], 'ci_method': method,
            'corrected_lo': lo, 'corrected_hi': hi, 'family_level': family_level, 'family_lo': f_lo,
            'family_hi': f_hi, 'chance': chance,
            'final_iwl': iwl, 'iwl_chance': runs[0].get('iwl_chance'),
            'iwl_vs_few_wd0': iwl / few0_iwl if few0_iwl > 0 else None,
            **_collapse(runs, few0, min_attn, train_fraction)}


POSED_THRESHOLD = 0.9


def verdict(groups, threshold=0.9, attn_fraction=0.5, train_fraction=0.5, family=0):
    """Does some regularised Few cell reach `threshold` of Many+wd=0's (no regulariser) peak ICL without collapse?
    Two rules, both returned. The posed one ('posed': MET / NOT MET): the raw ratio of mean peaks, Few / Many,
    >= threshold, without collapse (point estimate; seed range and seeds at the bar beside it). The chance-corrected
    one ('verdict': SUPPORTED / INCONCLUSIVE / NOT SUPPORTED), stricter, on the share of Many's gain over chance:

    groups: {('few'|'many', regulariser): [run_stats-like dicts, one per seed]} (needs peak_icl,
    attn_label_at_peak, final_iwl; uses chance, peak_measure, train_dist_at_peak, final_train_dist when there).
    Rule (also written into report.md):
    - corrected ratio of a cell = (its mean-over-seeds peak ICL - chance) / (Many+wd=0 mean peak ICL - chance):
      the share of the baseline's gain over chance (a raw ratio of 0.55 at chance 0.5 is no ICL at all; the raw
      ratio, peak / peak, is reported beside it); its interval is the hull of the seed range
      [(min seed peak - chance) / (max baseline peak - chance), (max seed peak ...) / (min baseline peak ...)]
      and the 95% bootstrap interval (held-out classes resampled on both sides together, seeds on each side);
    - no collapse: at its peak the cell's mean attn_match_label is >= attn_fraction x the baseline's (ICL by the
      same query->matching-label circuit), and, when the rows have train_dist_acc, its accuracy on held-out
      training-distribution sequences at the peak is >= train_fraction x Few+wd=0's final one (the network still
      solves its training task, by ICL or in weights). IWL is reported, not judged: a penalty that suppresses
      memorisation is the mechanism under test, so a low IWL is no collapse;
    - each regularised Few cell (lever) gets its own verdict on its own 95% interval: SUPPORTED if it has no
      collapse and its whole interval is >= threshold; INCONCLUSIVE if it has no collapse and its interval
      straddles the threshold; else NOT SUPPORTED;
    - the grid's verdict ("some lever") is the same rule on the family intervals: each lever's interval widened
      to the Bonferroni level 1 - 0.05 / (number of levers tried), so picking the best of N is paid for. 'best'
      is the deciding cell: the highest mean corrected ratio among those that qualify (for NOT SUPPORTED: among
      cells without collapse, or among all when every cell collapses). family > the grid's levers: widened over that
      many instead (the levers tried on this scale across grids: scripts/family.py).
    Raises ValueError naming a missing group."""
    groups = {(cls, as_reg(reg)): runs for (cls, reg), runs in groups.items()}
    for cls in ('many', 'few'):
        if not groups.get((cls, NONE)):
            raise ValueError(f"no finished runs for the {cls} wd=0 cells, needed for the verdict")
    base, few0 = groups[('many', NONE)], groups[('few', NONE)]
    base_mean = _mean([r['peak_icl'] for r in base])
    if base_mean <= 0:
        raise ValueError("the Many+wd=0 baseline has zero peak ICL")
    if stats.corrected_ratio(base_mean, base_mean, _chance(base)) is None:
        raise ValueError(f"the Many+wd=0 baseline's peak ICL {base_mean:.3f} is not above chance {_chance(base):.3f}")
    base_attn = _mean([r['attn_label_at_peak'] for r in base])
    levers = [(reg, runs) for (cls, reg), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], reg_order(kv[0][1])))
              if cls == 'few' and reg != NONE and runs]
    n_family = max(family, len(levers))
    candidates = [_candidate(reg, runs, base, few0, attn_fraction * base_attn, train_fraction, n_family)
                  for reg, runs in levers]
    for c in candidates:
        c['eligible'] = c['attn_ok'] and c['train_dist_ok'] is not False
        c['verdict'] = _decide([c], threshold)['verdict']  # this lever alone, on its own 95% interval
    few0_peak = _mean([r['peak_icl'] for r in few0])
    out = {'baseline_peak': base_mean, 'baseline_attn_label': base_attn, 'baseline_chance': _chance(base),
           'few_wd0_final_iwl': _mean([r['final_iwl'] for r in few0]), 'iwl_chance': few0[0].get('iwl_chance'),
           'few_wd0_ratio': few0_peak / base_mean,
           'few_wd0_corrected': stats.corrected_ratio(few0_peak, base_mean, _chance(few0), _chance(base)),
           'threshold': threshold, 'decided_on': 'corrected ratio', 'candidates': candidates, 'best': None,
           'n_levers': n_family}
    if not candidates:
        raise ValueError("no finished Few cells with a regulariser (weight decay or l2 > 0)")
    for c in candidates:
        c['posed'] = 'MET' if c['eligible'] and c['ratio'] >= threshold else 'NOT MET'
    return {**out, 'posed': _decide_posed(candidates, threshold), **_decide(candidates, threshold, 'family')}


def _decide_posed(candidates, threshold):
    """The rule as posed: some lever's raw peak ratio (mean Few peak / mean Many+wd=0 peak) >= threshold without
    collapse. A point estimate: its seed range and the seeds that reach the bar alone are shown beside it."""
    met = [c for c in candidates if c['posed'] == 'MET']
    pool = met or [c for c in candidates if c['eligible']] or candidates
    best = max(pool, key=lambda c: c['ratio'])
    reason = (f"{'best lever' if met else 'best lever without collapse' if best['eligible'] else 'best lever (every lever fails the collapse check)'}: "
              f"{best['regularizer']}, mean peak ICL {best['ratio']:.3f} of Many+wd=0's (seed range "
              f"{best['ratio_lo']:.3f}-{best['ratio_hi']:.3f}; {best['seeds_at_posed']}/{best['n_seeds']} seeds at the bar; "
              f"raw maxima {best['raw_max_ratio']:.3f}), {'>=' if best['ratio'] >= threshold else '<'} {threshold:g}")
    return {'verdict': 'MET' if met else 'NOT MET', 'best': best['regularizer'], 'ratio': best['ratio'],
            'reason': reason, 'met_by': [c['regularizer'] for c in met]}


def _decide(candidates, threshold, interval='corrected'):
    """verdict, best and reason from the candidates' corrected-ratio intervals ('corrected': each one's 95%;
    'family': Bonferroni-widened over the candidates) and collapse checks."""
    lo, hi = f'{interval}_lo', f'{interval}_hi'
    eligible = [c for c in candidates if c['eligible']]
    above = [c for c in eligible if c[lo] >= threshold]
    straddle = [c for c in eligible if c[lo] < threshold <= c[hi]]
    if above:
        result, pool = 'SUPPORTED', above
    elif straddle:
        result, pool = 'INCONCLUSIVE', straddle
    else:
        result, pool = 'NOT SUPPORTED', eligible or candidates
    best = max(pool, key=lambda c: c['corrected'])
    rel = ('>=' if best[lo] >= threshold else 'straddles' if best[hi] >= threshold else '<')
    who = ('best Few cell without collapse' if best['eligible']
           else 'best Few cell (every regularised Few cell fails the collapse check)')
    n_family = round((1 - 0.95) / (1 - best['family_level']))  # the levers its interval was widened over
    which = (f"interval over {n_family} levers (Bonferroni, {100 * best['family_level']:.1f}%)"
             if interval == 'family' and n_family > 1 else 'interval')
    reason = (f"{who}: {best['regularizer']}, its peak ICL above chance is {best['corrected']:.3f} ({which} "
              f"[{best[lo]:.3f}, {best[hi]:.3f}]; raw peak ratio {best['ratio']:.3f}) of the "
              f"Many+wd=0 one, {rel} {threshold:g}; collapse judged on {best['collapse_judged_on']}")
    collapsed = [c for c in candidates if not c['eligible'] and c[hi] >= threshold]
    if collapsed and result != 'SUPPORTED':
        reason += ("; reaching the threshold but collapsed: "
                   + ", ".join(f"{c['regularizer']} ({'attention' if not c['attn_ok'] else 'training-distribution accuracy'})"
                               for c in collapsed))
    return {'verdict': result, 'best': best, 'reason': reason}


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


def ci_text(ci, method, spec='.3f'):
    """[lo, hi] -> '[0.490, 0.550]', with '†' when it resamples episodes (rows without per-class hits); None -> '-'."""
    if ci is None:
        return '-'
    return f"[{ci[0]:{spec}}, {ci[1]:{spec}}]" + ('†' if method == 'episodes' else '')


CI_NOTE = ("95% CI: percentile bootstrap ({n} resamples, seed {seed}) of the mean over seeds, resampling seeds and "
           "the held-out query classes (icl_hits_by_class); † = the rows have no per-class hits (run before they "
           "were logged), so it resamples episodes as if independent (binomial): too narrow when classes differ. "
           "Chance-null peak: the 95th percentile of the best of this many evals of a run at chance, each "
           "Binomial(episodes, chance) / episodes (exact); 'no learning' when every seed's raw maximum is at most it. "
           "The peak's interval pools the hits of its 3 evals. " + PEAK_RULE + " IWL's chance is 1 / n_labels.").format(
               n=stats.N_BOOT, seed=stats.BOOT_SEED)


def group_numbers(s):
    """A cell group's pooled numbers from its seeds' run_stats: 95% intervals of the mean peak and final ICL
    ([lo, hi] or None, and their method), means of the smoothed, raw-maximum and chance-null peaks, IWL chance, chance flags."""
    peak_lo, peak_hi, method = stats.accuracy_ci([x.get('peak_measure') for x in s])
    final_lo, final_hi, final_method = stats.accuracy_ci([x.get('final_measure') for x in s])
    final, chance = _mean([x['final_icl'] for x in s]), _mean([x['chance'] for x in s])
    below = final_hi < chance if final_hi is not None else final < _mean([x['chance'] - 2 * x['icl_se'] for x in s])
    return {'peak_ci': None if peak_lo is None else [peak_lo, peak_hi], 'ci_method': method,
            'final_ci': None if final_lo is None else [final_lo, final_hi], 'final_ci_method': final_method,
            'smoothed_peak': _mean([x['smoothed_peak'] for x in s]),
            'raw_peak': _mean([x.get('raw_peak_icl', x['peak_icl']) for x in s]), 'null_peak': _mean([x['null_peak'] for x in s]),
            'iwl_chance': s[0].get('iwl_chance'), 'final_icl': final,
            'no_learning': all(x['no_learning'] for x in s), 'below_chance': below}


def group_flags(g):
    return (['no learning'] if g['no_learning'] else []) + (['ends below chance'] if g['below_chance'] else [])


def cells_table(groups, class_names, label, shown):
    """report.md's per-cell-group table (mean over finished seeds, [min-max] over seeds, 95% bootstrap
    intervals over classes and seeds), with the regularisers side by side (lr·wd·steps for decay, l2) and flags:
    'no learning' when every seed's peak ICL is at most the chance-null peak, 'ends below chance' when the
    final ICL's interval lies under chance (a bias toward one of the two context labels, not ICL)."""
    lines = ["## Cells (mean over finished seeds; [min-max] over seeds; 95% CI over classes and seeds)", "",
             "| cell | seeds | peak ICL [min-max] | peak 95% CI | raw maximum | chance-null peak | step of peak | "
             "final ICL [95% CI] | final IWL (chance) | ECE @peak | attn image @peak | attn label @peak | lr·wd·steps | "
             "l2 | flags |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (width, cls, reg), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], class_names.index(kv[0][1]),
                                                                         reg_order(kv[0][2]))):
        done = shown(runs)
        s = [r['stats'] for r in done]
        g = group_numbers(s)
        peaks = [x['peak_icl'] for x in s]
        exps = [r['exponent'] for r in done if r['exponent'] is not None]
        l2s = sorted({r['summary']['config'].get('l2', 0.0) for r in done if r['summary']})
        lines.append(
            f"| {label(width, cls, reg)} | {sum(1 for r in runs if r['summary'])}/{len(runs)} | {_mean(peaks):.3f} "
            f"[{min(peaks):.3f}-{max(peaks):.3f}] | {ci_text(g['peak_ci'], g['ci_method'])} | "
            f"{g['raw_peak']:.3f} | {g['null_peak']:.3f} | "
            f"{_mean([x['peak_iter'] for x in s]):.0f} [{min(x['peak_iter'] for x in s)}-{max(x['peak_iter'] for x in s)}] | "
            f"{g['final_icl']:.3f} {ci_text(g['final_ci'], g['final_ci_method'])} | "
            f"{fmt_iwl(_mean([x['final_iwl'] for x in s]), g['iwl_chance'])} | "
            f"{_mean([x['ece_at_peak'] for x in s]):.3f} | {_mean([x['attn_image_at_peak'] for x in s]):.2f} | "
            f"{_mean([x['attn_label_at_peak'] for x in s]):.2f} | {_fmt(_mean(exps) if exps else None, '.3g')} | "
            f"{', '.join(f'{v:g}' for v in l2s) or '-'} | {', '.join(group_flags(g)) or '-'} |")
    return lines + ["", CI_NOTE]


def group_cells(cells):
    """{(width, classes, (weight_decay, l2)): cells (seeds)} with each cell's run_stats and decay exponent."""
    groups = {}
    for c in cells:
        c['stats'] = run_stats(c['rows'], c['summary']['config'] if c['summary'] else None)
        c['exponent'] = (cached_decay_exponent({**c['summary']['config'], 'weight_decay': c['weight_decay']})
                         if c['summary'] else None)
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


def plot_icl_vs_steps(path, groups, widths, class_names, regs, chance,
                      keys=(('icl_acc', 'ICL'), ('iwl_acc', 'IWL')),
                      title='mean over seeds, band = min-max; ICL: v = mean peak (3-eval) at its mean step, o = final'):
    """ICL (and IWL) vs steps for every regulariser, class settings side by side: transience shows here. With
    other keys, any metric per eval (the query's attention on the matching image and on its label)."""
    import matplotlib.pyplot as plt
    colors = plt.get_cmap('viridis')
    color_of = {reg: colors(i / max(1, len(regs) - 1) * 0.9) for i, reg in enumerate(regs)}
    columns = [(w, cls) for w in widths for cls in class_names]
    fig, axes = plt.subplots(len(keys), len(columns), figsize=(4.6 * len(columns), 3.2 * len(keys)), sharex=True,
                             sharey=True, squeeze=False)
    for j, (width, cls) in enumerate(columns):
        for i, (key, name) in enumerate(keys):
            ax = axes[i, j]
            for reg in regs:
                runs = groups.get((width, cls, reg))
                if not runs:
                    continue
                it, mean, lo, hi = _curves(shown(runs), key)
                ax.fill_between(it, lo, hi, alpha=0.12, color=color_of[reg])
                ax.plot(it, mean, color=color_of[reg], label=reg_label(reg))
                if key == 'icl_acc':  # the report's numbers: mean peak at its mean step (v), mean final (o)
                    peaks = [r['stats'] for r in shown(runs)]
                    ax.plot(_mean([p['peak_iter'] for p in peaks]), _mean([p['peak_icl'] for p in peaks]), 'v',
                            color=color_of[reg], ms=7, mec='k', mew=0.5)
                    ax.plot(it[-1], mean[-1], 'o', color=color_of[reg], ms=5, mec='k', mew=0.5)
            ax.set_title(f"{label(width, cls)}: {name}", fontsize=10)
            ax.axhline(chance if key == 'icl_acc' else 0, color='gray', lw=0.8, ls=':')
            if i == len(keys) - 1:
                ax.set_xlabel('step')
            if j == 0:
                ax.set_ylabel(name if key.startswith('attn') else f"{name} accuracy")
        axes[0, j].legend(fontsize=8, loc='best')  # per column: columns may show different regularisers
    fig.suptitle(title, fontsize=10)
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
        if base:  # the verdicts' lines: threshold x Many's peak (as posed), threshold x its gain over chance
            base_peak = _mean([r['stats']['peak_icl'] for r in shown(base)])
            ax.axhline(threshold * base_peak, color='C2', ls='-.', lw=1, label=f"{threshold:g} x Many wd=0 peak (as posed)")
            ax.axhline(chance + threshold * (base_peak - chance), color='C3', ls='--', lw=1,
                       label=f"chance + {threshold:g} x Many wd=0 gain (corrected)")
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


DOSE_KEYS = (('peak_icl', 'peak ICL (held-out classes)'), ('final_iwl', 'final IWL (seen classes)'),
             ('final_train_dist', 'final training-distribution accuracy'), ('final_train_loss', 'final training loss'),
             ('final_weight_norm', 'final decayed-weight norm'))


def dose_points(groups, width, cls):
    """[(decay exponent, weight decay, {key: [one value per finished seed]})] of a uniform-decay axis (no l2, all
    modules), by exponent: what plot_dose_response and dose_lines show."""
    points = []
    for (w, c, reg), runs in groups.items():
        done = [r for r in runs if r['summary']]
        if w != width or c != cls or not done or set(dict(reg)) - {'weight_decay'}:
            continue
        values = {'peak_icl': [r['stats']['peak_icl'] for r in done], 'final_iwl': [r['stats']['final_iwl'] for r in done],
                  'final_train_dist': [r['rows'][-1].get('train_dist_acc') for r in done],
                  'final_train_loss': [r['rows'][-1].get('train_loss') for r in done],
                  'final_weight_norm': [r['rows'][-1].get('weight_norm') for r in done]}
        points.append((_mean([r['exponent'] for r in done]), reg_value(reg, 'weight_decay'), values))
    return sorted(points, key=lambda p: p[0])


def plot_dose_response(path, groups, widths, class_names):
    """Against the decay exponent lr*wd*steps (symlog: 0 included): peak ICL, final IWL, training-distribution
    accuracy, training loss and the decayed weights' norm, Few and Many, mean over seeds with the seed range."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(widths), len(DOSE_KEYS), figsize=(3.3 * len(DOSE_KEYS), 3.0 * len(widths)),
                             squeeze=False)
    for i, width in enumerate(widths):
        for k, cls in enumerate(class_names):
            points = dose_points(groups, width, cls)
            xs = [x for x, _, _ in points]
            for j, (key, name) in enumerate(DOSE_KEYS):
                ax = axes[i, j]
                vals = [[v for v in p[key] if v is not None] for _, _, p in points]
                keep = [n for n, v in enumerate(vals) if v]
                if not keep:
                    continue
                mean = [_mean(vals[n]) for n in keep]
                ax.errorbar([xs[n] for n in keep], mean, yerr=[[m - min(vals[n]) for m, n in zip(mean, keep)],
                                                               [max(vals[n]) - m for m, n in zip(mean, keep)]],
                            marker='o', ms=4, capsize=3, color=f"C{k}", label=label(width, cls))
                ax.set_xscale('symlog', linthresh=0.1)
                ax.set_title(name, fontsize=9)
                if key in ('final_train_loss', 'final_weight_norm'):
                    ax.set_yscale('log')
                else:
                    ax.set_ylim(-0.02, 1.05)
                if i == len(widths) - 1:
                    ax.set_xlabel('decay exponent lr·wd·steps')
        axes[i, 0].legend(fontsize=8)
    fig.suptitle('dose-response of uniform AdamW decay: mean over seeds, bars = seed range', fontsize=10, y=1.04)
    _save(fig, path)
    plt.close(fig)


def dose_lines(groups, widths, class_names, verdicts):
    """report.md's dose-response table: per decay exponent, Few's and Many's numbers and Few's verdict under both
    rules (as posed / chance-corrected, each lever on its own 95% interval)."""
    lines = ["## Dose-response (uniform decay, by decay exponent)", "",
             "Mean over seeds. Few's verdicts: the rule as posed, then the chance-corrected rule on the lever's own 95% "
             "interval (the grid's verdict above widens it over all levers).", "",
             "| width | exponent lr·wd·steps | wd | " + " | ".join(f"{c.capitalize()} {k}" for c in class_names for k in
                                                       ('peak ICL', 'final IWL', 'train-dist acc', 'train loss', 'weight norm'))
             + " | Few posed | Few corrected |", "|---" * (5 * len(class_names) + 5) + "|"]
    for width in widths:
        by_class = {cls: {wd: (x, p) for x, wd, p in dose_points(groups, width, cls)} for cls in class_names}
        v = next((v for v in verdicts if v.get('width', '') == width), None)
        cands = {round(c['weight_decay'], 12): c for c in (v or {}).get('candidates', [])}
        decays = sorted({(x, wd) for pts in by_class.values() for wd, (x, _) in pts.items()})
        for x, wd in decays:
            cells = []
            for cls in class_names:
                p = by_class[cls].get(wd, (None, None))[1]
                for key, _ in DOSE_KEYS:
                    vals = [] if p is None else [v for v in p[key] if v is not None]
                    cells.append(_fmt(_mean(vals) if vals else None, '.3g' if key.endswith(('loss', 'norm')) else '.3f'))
            c = cands.get(round(wd, 12)) if wd else None
            posed = f"{c['posed']} ({c['ratio']:.3f})" if c else '-'
            corrected = f"{c['verdict']} ({c['corrected']:.3f})" if c else '-'
            lines.append(f"| {width or '-'} | {x:.3g} | {_fmt(wd, 'g')} | " + " | ".join(cells)
                         + f" | {posed} | {corrected} |")
    return lines + [""]


def numerics_line(summaries):
    """What the cells' numbers depend on beyond their config (training.numerics): the code commit and the tracked files
    that differed from it, torch version, device, CPU threads, and the CPU kernel path and model. 'not recorded' where
    a cell predates a key. A cell run in parts (resumed, or continued to a longer budget) counts each part's numerics
    where its checkpoint recorded them (training.numerics_segments)."""
    runs = [s.get('numerics_segments') or [s] for s in summaries]   # each cell's parts (a cell from before: itself)
    parts = [p for run in runs for p in run if p.get('numerics') != 'not recorded']
    in_parts = sum(len(run) > 1 for run in runs)
    unrecorded = sum(any(p.get('numerics') == 'not recorded' for p in run) for run in runs)

    def values(key):
        return ', '.join(sorted({str(s.get(key) or 'not recorded') for s in parts}))

    def changes(s):
        if 'code_changes' not in s:
            return 'not recorded'
        return 'unknown' if s['code_changes'] is None else ' '.join(s['code_changes']) or 'none'
    return (f"Numerics: code {values('git_commit')} (tracked files changed: "
            f"{'; '.join(sorted({changes(s) for s in parts}))}); torch {values('torch_version')}, device "
            f"{values('device')}, CPU threads per cell {values('threads')}, CPU capability {values('cpu_capability')} "
            f"({values('cpu_model')}). A cell rerun where all of these match, the CPU model included, repeats its "
            f"numbers bit for bit; on another CPU, capability, thread count or torch version its floats differ in the "
            f"last digits from the first steps, and over thousands of steps a run that is still learning drifts like "
            f"another seed."
            + (f" {in_parts} of {len(summaries)} cells were resumed under other numerics than they started with, or "
               f"from a checkpoint older than this record ({unrecorded}, whose earlier parts are not recorded); each "
               f"recorded part counts above." if in_parts else ''))


def header_lines(root_dir, cells):
    """report.md's title, what is finished, what every cell shares (and a warning where they differ)."""
    finished = [c for c in cells if c['summary']]
    lines = [f"# Grid report: {os.path.basename(os.path.normpath(root_dir))}", "",
             f"{len(finished)} of {len(cells)} cells with metrics are finished"
             + (f" (still running or interrupted: {', '.join(c['name'] for c in cells if not c['summary'])})"
                if len(finished) < len(cells) else '') + ".", ""]
    if finished:
        configs = [c['summary']['config'] for c in finished]
        axis_keys = {k for c in finished for k in c.get('setting', {})}  # a grid's own axes (--regularizers, --axes)
        differing = sorted(k for k in configs[0] if k not in VARYING_KEYS | axis_keys | set(TRACKING_KEYS)
                           and len({repr(cf.get(k)) for cf in configs}) > 1)
        cf = configs[0]
        lines += [f"Same in every finished cell: dataset {cf['dataset']}, data_seed {cf['data_seed']} (holdout classes, "
                  f"label vocabulary of {cf['n_labels']} ({cf['label_mode']}), eval episodes), {cf['max_iters']} steps x "
                  f"batch {cf['batch_size']} x {2 * cf['context_len'] + 1} tokens, lr {cf['learning_rate']:g} "
                  f"({cf['lr_schedule']}), {cf['n_layer']} layers."]
        lines += ["", numerics_line([c['summary'] for c in finished])]
        if differing:
            lines += ["", "**Warning: these config keys differ between cells (they should not):** "
                      + ", ".join(f"{k} ({sorted({repr(c.get(k)) for c in configs})})" for k in differing)]
        lines += [""]
    return lines


RULE = ("Rules. " + PEAK_RULE + " *As posed*: a regularised Few cell (lever) MEETS the bar when its "
        "mean-over-seeds peak ICL is >= {t:g} x the Many+wd=0 mean peak ICL (same width) and it has no collapse; a point "
        "estimate, with its seed range [(min Few seed peak) / (max Many seed peak), (max ...) / (min ...)] and the seeds "
        "whose own peak reaches the bar beside it. *Chance-corrected* (stricter: at chance 0.5 a raw ratio of 0.55 is no "
        "ICL at all): the corrected ratio = (mean Few peak - chance) / (mean Many+wd=0 peak - chance), the share of the "
        "baseline's gain over chance; its interval is the hull of the seed range and the 95% bootstrap interval (held-out "
        "classes resampled on both sides together, seeds on each side). Each lever alone: SUPPORTED if it has no collapse "
        "and its whole interval is >= {t:g}; INCONCLUSIVE if it has no collapse and its interval straddles {t:g}; else NOT "
        "SUPPORTED. The grid's corrected verdict (some lever) is the same rule on the family intervals, each widened to "
        "the Bonferroni level 1 - 0.05 / (levers tried), so that the best of several levers is not a free pick. "
        "*Collapse* (both rules): (i) at its peak, attn_match_label (query attention on the label after the matching "
        "context image, best layer) is >= 0.5 x the Many+wd=0 value at its peak, so its ICL runs on the same induction "
        "circuit and not on a shortcut; (ii) when the rows have train_dist_acc, its accuracy on held-out "
        "training-distribution sequences at its peak is >= 0.5 x the Few+wd=0 final one, so the network still solves its "
        "training task; without train_dist_acc collapse is judged on attention alone. IWL is reported, not judged: a "
        "penalty that suppresses memorisation is the mechanism under test.")


def _candidate_row(c):
    seed_lo, seed_hi = c['corrected_seed_range']
    return (f"| {c['regularizer']} | {c.get('posed', '-')} | {c['ratio']:.3f} ({c['ratio_lo']:.3f}-{c['ratio_hi']:.3f}) | "
            f"{c['seeds_at_posed']}/{c['n_seeds']} | {c['raw_max_ratio']:.3f} | {c.get('verdict', '-')} | {c['n_seeds']} | "
            f"{c['corrected']:.3f} [{c['corrected_lo']:.3f}, {c['corrected_hi']:.3f}] | "
            f"{ci_text((c['family_lo'], c['family_hi']), None) if 'family_lo' in c else '-'} | "
            f"[{seed_lo:.3f}, {seed_hi:.3f}] | {ci_text(c['corrected_ci'], c['ci_method'])} | {_fmt(c['final_ratio'])} | "
            f"{c['attn_label']:.2f} | {'yes' if c['attn_ok'] else 'no'} | {_fmt(c['train_dist_acc'])} | "
            f"{'-' if c['train_dist_ok'] is None else 'yes' if c['train_dist_ok'] else 'no'} | "
            f"{fmt_iwl(c['final_iwl'], c['iwl_chance'])} | {_fmt(c['iwl_vs_few_wd0'], '.2f')} |")


def verdict_lines(groups, widths, threshold, family=0):
    """(report.md lines, verdict dicts): one verdict per width, or why there is none yet (family: verdict's)."""
    lines, verdicts = [], []
    for width in widths:
        vgroups = {(cls, reg): [r['stats'] for r in runs if r['summary']]
                   for (w, cls, reg), runs in groups.items() if w == width}
        head = f"## Verdict{' (' + width + ')' if width else ''}"
        try:
            v = verdict(vgroups, threshold, family=family)
        except ValueError as e:
            lines += [head, "", f"No verdict yet: {e}.", ""]
            continue
        v['width'] = width
        verdicts.append(v)
        alone = [c['regularizer'] for c in v['candidates'] if c['collapse_judged_on'] == 'attention only']
        lines += [head, "", f"**Rule as posed** (mean peak ICL of a Few lever >= {threshold:g} x Many+wd=0's, no "
                  f"collapse): **{v['posed']['verdict']}** ({v['posed']['reason']}).", "",
                  f"**Chance-corrected rule** (its interval of the share of Many's gain over chance >= {threshold:g}): "
                  f"**{v['verdict']}**: {v['reason']}.", "",
                  f"Many+wd=0 baseline: peak ICL {v['baseline_peak']:.3f} (chance {v['baseline_chance']:.3f}), "
                  f"attn_match_label at peak {v['baseline_attn_label']:.2f}. Few+wd=0 reaches {v['few_wd0_corrected']:.3f} "
                  f"of its gain over chance (raw {v['few_wd0_ratio']:.3f}; final IWL "
                  f"{fmt_iwl(v['few_wd0_final_iwl'], v['iwl_chance'])}).", ""]
        if alone:
            lines += [f"Collapse judged on attention alone for {', '.join(alone)}: their rows have no train_dist_acc.", ""]
        lines += [(f"{v['n_levers']} levers tried at Few{' (on this scale, across grids)' if family else ''}; each has "
                   f"its own verdict on its own 95% interval, and the "
                   f"grid's verdict above is the best of them on its interval widened to "
                   f"{100 * (1 - 0.05 / v['n_levers']):.1f}% (Bonferroni over the {v['n_levers']})." if v['n_levers'] > 1
                   else "1 lever tried at Few: the grid's verdict is its own, on its 95% interval."), "",
                  "| Few cell | posed rule | peak ratio (seed range) | seeds at the bar | raw-maximum ratio | "
                  "corrected rule | seeds | corrected ratio (interval) | family interval | seed range | 95% CI | "
                  "final ICL / Many wd=0 final | attn_match_label @peak | attn ok | "
                  "train-dist acc @peak | train-dist ok | final IWL (chance) | IWL / Few wd=0 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [_candidate_row(c) for c in v['candidates']] + [""]
    return lines + [RULE.format(t=threshold), ""], verdicts


def runs_table(cells):
    lines = ["## Runs", "",
             "| run | last step | peak ICL | step of peak | final ICL | final IWL (chance) | ECE @peak | attn label @peak | "
             "peak 95% CI | raw maximum (step) | chance-null peak | log |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: c['name']):
        s = c['stats']
        lines.append(f"| {c['name']} | {s['final_iter']}{'' if c['summary'] else ' (running)'} | {s['peak_icl']:.3f} | "
                     f"{s['peak_iter']} | {s['final_icl']:.3f} | {fmt_iwl(s['final_iwl'], s['iwl_chance'])} | "
                     f"{s['ece_at_peak']:.3f} | {s['attn_label_at_peak']:.2f} | "
                     f"{ci_text(s['peak_ci'], s['ci_method'])} | {s['raw_peak_icl']:.3f} ({s['raw_peak_iter']}) | "
                     f"{s['null_peak']:.3f}{' (no learning)' if s['no_learning'] else ''} | {c['name']}/train.log |")
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
    plot_icl_vs_steps(os.path.join(root_dir, 'attention.png'), groups, widths, class_names, regs, chance,
                      keys=(('attn_match_image', 'query -> matching image'), ('attn_match_label', 'query -> its label')),
                      title="the query's attention on the matching context images and on their labels (best layer): "
                            "mean over seeds, band = min-max")

    lines = header_lines(root_dir, cells)
    more, verdicts = verdict_lines(groups, widths, threshold)
    lines += more
    dose = len({wd for w in widths for cls in class_names for _, wd, _ in dose_points(groups, w, cls)}) >= 3
    if dose:  # a decay axis of three or more strengths: the dose-response figure and table
        plot_dose_response(os.path.join(root_dir, 'dose_response.png'), groups, widths, class_names)
        lines += dose_lines(groups, widths, class_names, verdicts) + ["![dose-response](dose_response.png)", ""]
    lines += cells_table(groups, class_names, label, shown)
    lines += ["", "seeds: finished/with metrics. lr·wd·steps = wd x (sum of the learning rate over all steps, "
              "from the config's schedule): decayed weights that get no gradient shrink by exp(-lr·wd·steps).", ""]
    lines += runs_table(cells)
    lines += ["", "## Figures", "", "![ICL and IWL vs steps](icl_vs_steps.png)", "",
              "![peak ICL vs regulariser](peak_icl.png)", "",
              "![the query's attention on the matching image and its label vs steps](attention.png)", ""]
    lines += [f"- [{name}](figures/{name})" for name in group_figs]
    for name, content in [('report.md', '\n'.join(lines) + '\n'), ('verdict.json', json.dumps(verdicts, indent=2))]:
        tmp = os.path.join(root_dir, f"{name}.{os.getpid()}.tmp")
        with open(tmp, 'w') as f:
            f.write(content)
        os.replace(tmp, os.path.join(root_dir, name))
    return verdicts


