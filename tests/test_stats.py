"""The report's statistics on synthetic rows: class bootstrap vs binomial intervals, the chance-null peak, the
smoothed peak, the chance-corrected ratio, IWL's chance in the tables, the collapse rule; and the per-class hits
that eval.evaluate logs for the bootstrap."""
import pytest

import stats
from report import cells_table, group_cells, label, run_stats, runs_table, shown, verdict, verdict_lines

CONFIG = {'learning_rate': 1e-3, 'warmup_iters': 0, 'max_iters': 300, 'lr_schedule': 'constant', 'min_lr': 0.0,
          'n_labels': 32}


def rows_of(accs, n=1024, chance=0.5, hits=None, attn=0.8, **extra):
    """metrics rows at iters 0, 100, ...; hits: per-row icl_hits_by_class (None: not logged)."""
    return [{'iter': 100 * i, 'icl_acc': a, 'iwl_acc': 0.5, 'ece': 0.1, 'attn_match_image': 0.2,
             'attn_match_label': attn, 'icl_chance': chance, 'icl_episodes': n,
             **({} if hits is None else {'icl_hits_by_class': hits[i]}), **extra} for i, a in enumerate(accs)]


def correlated_hits(n_classes=20, per_class=50):
    """Half the classes always right, half always wrong: 0.5 overall, but only n_classes independent units."""
    return [[c, per_class if c % 2 else 0, per_class] for c in range(n_classes)]


def test_class_bootstrap_is_wider_than_binomial_when_classes_are_correlated():
    hits = correlated_hits()
    m = {'acc': 0.5, 'hits': hits, 'n': 1000}
    lo, hi, method = stats.accuracy_ci([m])
    blo, bhi, bmethod = stats.accuracy_ci([{**m, 'hits': None}])
    assert (method, bmethod) == ('classes', 'episodes')
    assert lo < 0.5 < hi and blo < 0.5 < bhi
    assert hi - lo > 3 * (bhi - blo)                        # 20 classes, not 1000 independent episodes
    assert stats.accuracy_ci([m]) == (lo, hi, method)       # fixed seed: reproducible
    assert stats.accuracy_ci([{'acc': 0.5}]) == (None, None, None)


def test_independent_classes_give_about_the_binomial_interval():
    hits = [[c, 1 if c % 2 else 0, 1] for c in range(1000)]   # one episode per class
    lo, hi, _ = stats.accuracy_ci([{'acc': 0.5, 'hits': hits, 'n': 1000}])
    assert hi - lo == pytest.approx(2 * 1.96 * (0.25 / 1000) ** 0.5, rel=0.1)


def test_seeds_are_resampled_too():
    one = {'acc': 0.6, 'hits': None, 'n': 1024}
    lo1, hi1, _ = stats.accuracy_ci([one, one])
    lo2, hi2, _ = stats.accuracy_ci([one, {**one, 'acc': 0.9}])
    assert hi2 - lo2 > hi1 - lo1 and lo2 < 0.65 and hi2 > 0.85


def test_chance_null_peak_flags_a_noisy_peak_of_a_chance_run():
    null = stats.null_peak(20, 1024, 0.5)
    assert 0.53 < null < 0.56                                  # ~ 0.5 + 2.8 standard errors
    assert stats.null_peak(1, 1024, 0.5) == pytest.approx(0.5 + 1.645 * (0.25 / 1024) ** 0.5, abs=2e-3)
    chance_run = run_stats(rows_of([0.5] + [0.51] * 19 + [0.534]))       # 20 trained evals, peak 0.534
    assert chance_run['n_evals'] == 20 and chance_run['null_peak'] == pytest.approx(null)
    assert chance_run['no_learning']                           # the old 2-SE rule (0.531) called this learning
    assert not run_stats(rows_of([0.5] * 10 + [0.6] * 11))['no_learning']


def test_smoothed_peak_is_the_best_mean_of_three_consecutive_evals():
    rows = rows_of([0.5, 0.9, 0.5, 0.7, 0.72, 0.74])
    assert stats.smoothed_peak(rows[1:]) == (pytest.approx(0.72), 400)
    s = run_stats(rows)
    assert s['peak_icl'] == pytest.approx(0.72) and s['peak_iter'] == 400     # the peak is the robust one
    assert (s['raw_peak_icl'], s['raw_peak_iter']) == (0.9, 100)              # the lucky eval, kept beside it
    assert s['smoothed_peak'] == pytest.approx(0.72) and s['smoothed_iter'] == 400
    assert stats.smoothed_peak(rows[:2]) == (pytest.approx(0.7), 100)   # fewer rows than the window


def test_reaching_a_threshold_takes_three_consecutive_evals_not_one_lucky_one():
    rows = rows_of([0.5, 0.85, 0.6, 0.7, 0.8, 0.82, 0.84, 0.6])
    assert stats.reach_step(rows[1:], 0.8) == 600        # 0.80, 0.82, 0.84 average 0.82: reached at their last eval
    assert stats.reach_step(rows[1:], 0.85) is None      # the single 0.85 does not count
    from phase import first_step
    assert first_step(rows[1:], 0.85) == 100             # the raw rule would have said step 100


def test_the_peaks_interval_pools_the_hits_of_its_three_evals():
    hits = [[[0, 8, 10], [1, 2, 10]], [[0, 10, 10], [1, 4, 10]], [[0, 9, 10], [1, 3, 10]], [[0, 1, 10], [1, 1, 10]]]
    rows = rows_of([0.5, 0.5, 0.7, 0.6], n=20, hits=[[[0, 5, 10], [1, 5, 10]]] + hits[:3])
    m = run_stats(rows)['peak_measure']
    assert m['hits'] == [[0, 27, 30], [1, 9, 30]] and m['n'] == 60
    assert m['acc'] == pytest.approx(0.6)


def test_corrected_ratio_and_its_class_interval():
    assert stats.corrected_ratio(0.55, 0.95, 0.5) == pytest.approx(0.05 / 0.45)
    assert stats.corrected_ratio(0.6, 0.5, 0.5) is None
    hits = correlated_hits()
    few, many = {'acc': 0.5, 'hits': hits, 'n': 1000}, {'acc': 1.0, 'hits': [[c, 50, 50] for c in range(20)], 'n': 1000}
    lo, hi, method = stats.ratio_ci([few], [many], 0.5, 0.5)
    assert method == 'classes' and lo < 0 < hi


def groups(few_peak, few_attn=0.8, few_iwl=0.03, train=None):
    """verdict groups from run_stats of synthetic rows: Many+wd=0 peaks at 0.95, Few+wd=0 at chance; train: the
    Few cell's train_dist_acc (the baselines' then 1.0), None: rows without it."""
    def extra(value):
        return {} if train is None else {'train_dist_acc': value}
    many = run_stats(rows_of([0.5, 0.95, 0.95, 0.95], **extra(1.0)), CONFIG)
    few0 = run_stats(rows_of([0.5, 0.52, 0.5, 0.5], attn=0.2, **extra(1.0)), CONFIG)
    few = run_stats(rows_of([0.5, few_peak, few_peak, few_peak], attn=few_attn, **extra(train)), CONFIG)
    few['final_iwl'] = few_iwl
    return {('many', 0.0): [many], ('few', 0.0): [few0], ('few', 1.0): [few]}


def test_verdict_decides_on_the_corrected_ratio():
    v = verdict(groups(0.90))                                 # raw 0.947, but 0.889 of Many's gain over chance
    c = v['best']
    assert c['ratio'] == pytest.approx(0.90 / 0.95) and c['corrected'] == pytest.approx(0.40 / 0.45)
    assert v['verdict'] == 'INCONCLUSIVE' and c['ci_method'] == 'episodes'    # rows without per-class hits
    assert c['corrected_lo'] < 0.9 < c['corrected_hi']
    assert 'above chance is 0.889' in v['reason'] and 'raw peak ratio 0.947' in v['reason']
    assert verdict(groups(0.99))['verdict'] == 'SUPPORTED'


def test_the_rule_as_posed_is_the_raw_peak_ratio_and_comes_first():
    v = verdict(groups(0.90))                                 # raw 0.947 >= 0.9, corrected 0.889: the rules part
    assert v['posed']['verdict'] == 'MET' and v['posed']['ratio'] == pytest.approx(0.90 / 0.95)
    assert v['best']['posed'] == 'MET' and v['best']['seeds_at_posed'] == 1
    assert verdict(groups(0.84))['posed']['verdict'] == 'NOT MET'                 # 0.884 < 0.9
    assert verdict(groups(0.99, few_attn=0.2))['posed']['verdict'] == 'NOT MET'   # collapsed: no pass either way
    lines, _ = verdict_lines({('', cls, reg): [{'stats': s, 'summary': {'finished': True}}] for (cls, reg), (s,) in groups(0.90).items()},
                             [''], 0.9)
    text = '\n'.join(lines)
    assert text.index('**Rule as posed**') < text.index('**Chance-corrected rule**')
    assert '**MET**' in text and '**INCONCLUSIVE**' in text


def test_low_iwl_with_intact_attention_is_no_collapse():
    v = verdict(groups(0.99, few_attn=0.8, few_iwl=0.03))
    c = v['best']
    assert v['verdict'] == 'SUPPORTED' and c['eligible'] and c['collapse_judged_on'] == 'attention only'
    assert c['iwl_chance'] == pytest.approx(1 / 32) and 'iwl_ok' not in c
    assert not verdict(groups(0.99, few_attn=0.2))['best']['eligible']            # attention gone: collapsed
    judged = verdict(groups(0.99, train=0.3))['best']                             # 0.3 < 0.5 x Few wd=0's 1.0
    assert judged['collapse_judged_on'] == 'attention and training-distribution accuracy'
    assert judged['train_dist_ok'] is False and not judged['eligible']
    assert verdict(groups(0.99, train=0.9))['best']['eligible']


def test_each_lever_has_its_own_verdict_and_the_best_of_n_pays_with_a_wider_interval():
    from report import verdict
    rng = __import__('numpy').random.default_rng(0)

    def runs(peak, n=3):
        return [{'peak_icl': peak + d, 'attn_label_at_peak': 0.8, 'final_iwl': 0.1, 'chance': 0.5,
                 'peak_measure': {'acc': peak + d, 'n': 512,
                                  'hits': [(c, int(round((peak + d) * 64 + rng.integers(-3, 4))), 64) for c in range(8)]}}
                for d in (-0.01, 0.0, 0.01)[:n]]
    groups = {('many', ()): runs(0.95), ('few', ()): runs(0.52),
              ('few', (('label_swap', 0.8),)): runs(0.91), ('few', (('label_swap', 0.4),)): runs(0.60),
              ('few', (('weight_decay', 1.0),)): runs(0.55)}
    v = verdict(groups)
    assert v['n_levers'] == 3
    by = {c['regularizer']: c for c in v['candidates']}
    assert by['swap=0.4']['verdict'] == by['wd=1']['verdict'] == 'NOT SUPPORTED'
    best = by['swap=0.8']
    assert best['family_lo'] <= best['corrected_lo'] and best['family_hi'] >= best['corrected_hi']
    assert best['family_level'] == 1 - 0.05 / 3
    assert v['best'] is best and 'over 3 levers (Bonferroni, 98.3%)' in v['reason']


def cell(name, cls, wd, accs, iwl, hits=None):
    rows = rows_of(accs, hits=hits)
    for r in rows:
        r['iwl_acc'] = iwl
    return {'name': name, 'classes': cls, 'weight_decay': wd, 'seed': 0, 'width': '', 'rows': rows,
            'summary': {'config': CONFIG}}


def test_tables_show_iwl_chance_intervals_and_the_episode_fallback():
    hits = [correlated_hits()] * 4
    cells = [cell('many_wd0_s0', 'many', 0.0, [0.5, 0.9, 0.95, 0.95], 0.03),
             cell('few_wd0_s0', 'few', 0.0, [0.5, 0.52, 0.51, 0.5], 1.0),
             cell('few_wd1_s0', 'few', 1.0, [0.5, 0.5, 0.5, 0.5], 0.2, hits=hits)]
    g = group_cells(cells)
    text = '\n'.join(cells_table(g, ['few', 'many'], label, shown) + runs_table(cells)
                     + verdict_lines(g, [''], 0.9)[0])
    assert '1.000 (chance 1/32)' in text and '0.030 (chance 1/32)' in text and '0.200 (chance 1/32)' in text
    few0 = [line for line in text.splitlines() if line.startswith('| Few wd=0 |')][0]
    assert '†' in few0 and 'no learning' in few0             # rows from before per-class hits: episode bootstrap
    few1 = [line for line in text.splitlines() if line.startswith('| Few wd=1 |')][0]
    assert '†' not in few1
    assert '| wd=1 | NOT MET | 0.536 (0.536-0.536) | 0/1 | 0.526 | NOT SUPPORTED | 1 | 0.000 [' in text  # both rules
    assert "1 lever tried at Few: the grid's verdict is its own, on its 95% interval." in text
    assert '*Chance-corrected*' in text and 'IWL is reported, not judged' in text
    assert 'Collapse judged on attention alone for wd=1' in text


def test_evaluate_logs_hits_per_query_class():
    import torch
    from data import make_icl_episodes, make_iwl_episodes, make_synthetic
    from eval import evaluate, hits_by_class
    from model import ICLTransformer, ModelConfig
    assert hits_by_class(torch.tensor([True, False, True, True]), torch.tensor([3, 3, 0, 7])) == \
        [[0, 1, 1], [3, 1, 2], [7, 1, 1]]
    ds = make_synthetic(20, 6, 32, dim=16, seed=0)
    icl = make_icl_episodes(ds.holdout, 64, seed=0)
    iwl = make_iwl_episodes(ds.train, ds.class_labels, 64, seed=0)
    torch.manual_seed(0)
    m = evaluate(ICLTransformer(ModelConfig(n_labels=32, item_shape=(16,), n_layer=1, n_head=2, n_embd=16)),
                 icl, iwl)
    table = m['icl_hits_by_class']
    assert sum(n for _, _, n in table) == 64 and all(n > 0 for _, _, n in table)
    assert sum(h for _, h, _ in table) == round(m['icl_acc'] * 64)
    assert {c for c, _, _ in table} == set(icl.classes[:, -1].tolist())


def test_train_dist_reference_uses_the_few_seeds_that_have_it():
    """Few+wd=0 seeds run before the probe existed do not switch the check off: the others are the reference."""
    g = groups(0.99, train=0.3)
    old_seed = run_stats(rows_of([0.5, 0.52, 0.5], attn=0.2), CONFIG)          # no train_dist_acc in its rows
    g[('few', 0.0)] = g[('few', 0.0)] + [old_seed]
    best = verdict(g)['best']
    assert best['collapse_judged_on'] == 'attention and training-distribution accuracy'
    assert best['train_dist_ok'] is False
    g[('few', 0.0)] = [old_seed]                                                # none has it: attention alone
    assert verdict(g)['best']['collapse_judged_on'] == 'attention only'
