"""
The report's statistics, pure functions on metrics rows: confidence intervals from a bootstrap over held-out
classes and seeds, the peak ICL a chance-level run would show, a smoothed peak, and the chance-corrected ratio.

Why not a binomial standard error: the ICL eval reuses a fixed set of episodes drawn from few held-out classes
(23 Omniglot characters), so episodes of one class are not independent; and 'peak ICL' is the best of ~20
noisy evals, so a run that learned nothing still peaks above chance.
"""
import math

import numpy as np

N_BOOT = 2000
BOOT_SEED = 0
LEVEL = 0.95


def measure(row, n_episodes=None):
    """What the bootstrap needs of one eval row: its ICL accuracy, per-class hits and episode count."""
    return {'acc': row['icl_acc'], 'hits': row.get('icl_hits_by_class'),
            'n': row.get('icl_episodes', n_episodes)}


def method_of(measures):
    """'classes' when every row has per-class hits, 'episodes' (binomial fallback) when every row has an
    episode count, else None (no interval possible)."""
    if measures and all(m and m.get('hits') for m in measures):
        return 'classes'
    if measures and all(m and m.get('n') for m in measures):
        return 'episodes'
    return None


def class_draw(measures, n_boot=N_BOOT, seed=BOOT_SEED):
    """(class ids, [n_boot, K] multinomial resampling counts) over the classes in the rows. The same classes and
    seed give the same draw, so Few and Many cells (same held-out episodes) are resampled together."""
    ids = sorted({c for m in measures for c, _, _ in m['hits']})
    rng = np.random.default_rng([seed, 0])
    return ids, rng.multinomial(len(ids), [1 / len(ids)] * len(ids), size=n_boot).astype(float)


def _seed_replicates(m, draw, rng, n_boot):
    """[n_boot] resampled accuracies of one row: over its classes (draw) or, without one, its episodes."""
    if draw is None:
        return rng.binomial(m['n'], min(max(m['acc'], 0.0), 1.0), n_boot) / m['n']
    ids, weights = draw
    index = {c: i for i, c in enumerate(ids)}
    hits, n = np.zeros(len(ids)), np.zeros(len(ids))
    for c, h, k in m['hits']:
        hits[index[c]], n[index[c]] = h, k
    with np.errstate(invalid='ignore', divide='ignore'):
        return (weights @ hits) / (weights @ n)


def replicates(measures, draw, n_boot=N_BOOT, seed=BOOT_SEED, stream=0):
    """[n_boot] bootstrap replicates of the mean over seeds (one measure per seed): seeds resampled with
    replacement, and within each seed its classes (draw) or episodes (draw None)."""
    rng = np.random.default_rng([seed, 1, stream])
    per_seed = np.stack([_seed_replicates(m, draw, rng, n_boot) for m in measures])   # [S, B]
    pick = rng.integers(0, len(measures), size=(n_boot, len(measures)))               # [B, S]
    return per_seed[pick, np.arange(n_boot)[:, None]].mean(1)


def interval(samples, level=LEVEL):
    """Percentile interval (lo, hi) of bootstrap replicates, ignoring undefined ones."""
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def accuracy_ci(measures, n_boot=N_BOOT, seed=BOOT_SEED):
    """(lo, hi, method) of the mean-over-seeds accuracy; (None, None, None) when the rows cannot say."""
    method = method_of(measures)
    if method is None:
        return None, None, None
    draw = class_draw(measures, n_boot, seed) if method == 'classes' else None
    return (*interval(replicates(measures, draw, n_boot, seed)), method)


def corrected_ratio(peak, base_peak, chance, base_chance=None):
    """(peak - chance) / (base_peak - chance): the share of the baseline's gain over chance; None if the
    baseline is not above chance."""
    base_chance = chance if base_chance is None else base_chance
    gain = base_peak - base_chance
    return (peak - chance) / gain if gain > 0 else None


def ratio_ci(measures, base_measures, chance, base_chance, n_boot=N_BOOT, seed=BOOT_SEED, level=LEVEL):
    """(lo, hi, method) of the corrected ratio of two cells' mean-over-seeds accuracies: classes resampled
    together on both sides (the same held-out episodes), seeds independently; `level` < LEVEL's tail share per
    side widens it (Bonferroni over several levers: level = 1 - (1 - LEVEL) / n_levers)."""
    method = method_of(measures + base_measures)
    if method is None:
        return None, None, None
    draw = class_draw(measures + base_measures, n_boot, seed) if method == 'classes' else None
    few, many = replicates(measures, draw, n_boot, seed, 1), replicates(base_measures, draw, n_boot, seed, 2)
    gain = many - base_chance
    with np.errstate(invalid='ignore', divide='ignore'):
        ratio = np.where(gain > 0, (few - chance) / gain, np.nan)
    if np.isnan(ratio).mean() > 1 - level:
        return None, None, method
    return (*interval(ratio, level), method)


def _binom_cdf(n, p):
    """[P(X <= k) for k = 0..n], X ~ Binomial(n, p), from log-pmfs (exact enough for n in the thousands)."""
    logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
            + (n - k) * math.log1p(-p) for k in range(n + 1)]
    top = max(logs)
    pmf = np.exp(np.array(logs) - top)
    return np.cumsum(pmf / pmf.sum())


def null_peak(n_evals, n_episodes, chance, q=LEVEL):
    """The q-quantile of the best of n_evals evals of a chance-level run, each Binomial(n_episodes, chance)
    / n_episodes (exact): a peak at or under it is no evidence of learning."""
    if not 0 < chance < 1:
        return chance
    cdf_max = _binom_cdf(n_episodes, chance) ** max(n_evals, 1)
    return int(np.searchsorted(cdf_max, q)) / n_episodes


WINDOW = 3  # the reach and peak rule: an eval counts as ICL only inside WINDOW consecutive evals that average to it


def smoothed_peak(rows, window=WINDOW):
    """(best mean ICL over `window` consecutive evals, the iter of the window's middle eval): a peak that
    one lucky eval cannot make. Fewer rows than the window: their mean."""
    best = peak_window(rows, window)
    return sum(r['icl_acc'] for r in best) / len(best), best[len(best) // 2]['iter']


def peak_window(rows, window=WINDOW):
    """The `window` consecutive rows whose mean ICL is the smoothed peak (all rows when there are fewer)."""
    accs = [r['icl_acc'] for r in rows]
    w = min(window, len(accs))
    best = max(range(len(accs) - w + 1), key=lambda i: sum(accs[i:i + w]))
    return rows[best:best + w]


def window_measure(rows, n_episodes=None):
    """measure() of several evals pooled: their hits per class summed (or their mean accuracy and total episodes),
    so the smoothed peak gets a bootstrap interval as a single eval's accuracy does."""
    ms = [measure(r, n_episodes) for r in rows]
    hits = None
    if all(m['hits'] for m in ms):
        pooled = {}
        for m in ms:
            for c, h, k in m['hits']:
                ph, pk = pooled.get(c, (0, 0))
                pooled[c] = (ph + h, pk + k)
        hits = [[c, h, k] for c, (h, k) in sorted(pooled.items())]
    n = sum(m['n'] for m in ms) if all(m['n'] for m in ms) else None
    return {'acc': sum(m['acc'] for m in ms) / len(ms), 'hits': hits, 'n': n}


def reach_step(rows, threshold, window=WINDOW):
    """The first step by which ICL has reached `threshold` robustly: the last eval of the first `window`
    consecutive evals whose mean is >= threshold (None if none); one lucky eval does not count."""
    accs = [r['icl_acc'] for r in rows]
    for i in range(len(accs) - window + 1):
        if sum(accs[i:i + window]) / window >= threshold:
            return rows[i + window - 1]['iter']
    return None
