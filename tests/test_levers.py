"""The levers: decay aimed at chosen modules (decay_modules), label swap in the sampler, their grid
syntax and report labels, and eval.py's mean ablation."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, scaled_error
from data import EpisodeSampler, make_synthetic
from model import ICLTransformer, ModelConfig, parse_decay_modules
from test_group import assert_close, group
from test_train import eval_cli, metrics, train


def tiny_model():
    torch.manual_seed(0)
    return ICLTransformer(ModelConfig(n_labels=16, item_shape=(8,), n_layer=2, n_head=2, n_embd=16))


# ---- decay_modules ---------------------------------------------------------------------------------

@pytest.mark.parametrize('modules, names', [
    ('encoder', ['encoder.proj.weight']),
    ('attn', [f'blocks.{i}.attn.{w}.weight' for i in range(2) for w in ('qkv', 'proj')]),
    ('mlp', [f'blocks.{i}.mlp.{j}.weight' for i in range(2) for j in (0, 2)]),
    ('head', ['head.weight']),
    ('mlp,head', [f'blocks.{i}.mlp.{j}.weight' for i in range(2) for j in (0, 2)] + ['head.weight']),
])
def test_decayed_group_holds_the_linear_weights_of_the_named_modules_only(modules, names):
    model = tiny_model()
    name_of = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = model.decayed_parameters(modules)
    assert sorted(name_of[id(p)] for p in decay) == sorted(names)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    everything, _ = model.decayed_parameters('all')
    assert {name_of[id(p)] for p in everything} == {name_of[id(p)] for p in model.decayed_parameters(
        'encoder,attn,mlp,head')[0]}  # 'all' is the four modules: today's group
    assert not any('ln' in name_of[id(p)] or 'bias' in name_of[id(p)] or 'embedding' in name_of[id(p)]
                   for p in everything)


def test_parse_decay_modules_orders_and_rejects():
    assert parse_decay_modules('head,mlp') == ('mlp', 'head')
    assert parse_decay_modules('mlp+head') == ('mlp', 'head')
    for bad in ('mlp,ffn', '', 'all,mlp'):
        with pytest.raises(ValueError, match='decay_modules'):
            parse_decay_modules(bad)


@pytest.mark.slow
def test_unknown_module_is_a_one_line_config_error_before_out_dir(tmp_path):
    proc = train(tmp_path / 'run', '--decay_modules=mlp,ffn', check=False)
    assert proc.returncode == 2 and "unknown module 'ffn'" in proc.stderr and 'Traceback' not in proc.stderr
    assert not os.path.exists(tmp_path / 'run' / 'metrics.jsonl')


@pytest.mark.slow
def test_decay_shrinks_only_the_chosen_modules(tmp_path):
    """wd on mlp: the MLP weights shrink against a wd=0 run from the same seed; attention stays closer."""
    train(tmp_path / 'a', '--max_iters=30', '--weight_decay=5', '--decay_modules=mlp', '--learning_rate=1e-2')
    summary = json.load(open(tmp_path / 'a' / 'summary.json'))
    assert summary['decay_modules'] == 'mlp' and summary['config']['decay_modules'] == 'mlp'
    state = torch.load(tmp_path / 'a' / 'ckpt.pt', weights_only=False)
    assert state['optimizer']['param_groups'][0]['weight_decay'] == 5
    assert len(state['optimizer']['param_groups'][0]['params']) == 2  # TINY: 1 layer, two MLP Linears


@pytest.mark.slow
def test_resume_refuses_a_change_of_decay_modules_or_label_swap(tmp_path):
    train(tmp_path, '--max_iters=20', '--decay_modules=mlp', '--weight_decay=0.1')
    for arg in ('--decay_modules=head', '--label_swap=0.2'):
        proc = train(tmp_path, '--max_iters=40', '--init_from=resume', '--decay_modules=mlp', '--weight_decay=0.1',
                     arg, check=False)
        assert proc.returncode == 2 and 'different config' in proc.stderr and arg[2:].split('=')[0] in proc.stderr


# ---- label swap ------------------------------------------------------------------------------------

def swap_sampler(p, seed=0, n_labels=32):
    data = make_synthetic(400, 10, n_labels, dim=8, exemplars_per_class=5, label_mode='shared', seed=0)
    return data, EpisodeSampler(data.train, data.class_labels, seed=seed, label_swap=p, n_labels=n_labels)


@pytest.mark.parametrize('p', [0.2, 0.6])
def test_swapped_fraction_is_p_and_a_swap_relabels_every_query_class_item(p):
    data, sampler = swap_sampler(p)
    swapped, total = 0, 0
    for _ in range(20):
        items, labels, classes = sampler.sample(256)
        true = data.class_labels[classes]
        query_class = classes == classes[:, -1:]
        changed = (labels != true).any(1)
        assert not (labels != true)[~query_class].any()          # other classes keep their labels
        for row in changed.nonzero().flatten().tolist():
            new = labels[row][query_class[row]]
            assert (new == new[0]).all() and new[0] != true[row, -1]  # one new label, at every query-class item
        swapped += changed.sum().item()
        total += len(changed)
    se = (p * (1 - p) / total) ** 0.5
    assert abs(swapped / total - p) < 4 * se


def test_no_swap_draws_nothing_and_eval_episodes_are_untouched():
    _, plain = swap_sampler(0.0)
    data = make_synthetic(400, 10, 32, dim=8, exemplars_per_class=5, label_mode='shared', seed=0)
    old = EpisodeSampler(data.train, data.class_labels, seed=0)   # no label_swap argument: the old stream
    for a, b in zip(plain.sample(64), old.sample(64)):
        assert torch.equal(a, b)
    from data import make_iwl_episodes  # eval episodes are built without a sampler: swap cannot reach them
    iwl = make_iwl_episodes(data.train, data.class_labels, 64)
    assert torch.equal(iwl.labels, data.class_labels[iwl.classes])


def test_swap_sampler_state_resumes_the_same_stream():
    _, a = swap_sampler(0.3, seed=5)
    a.sample(32)
    state = a.state_dict()
    first = a.sample(32)
    _, b = swap_sampler(0.3, seed=9)
    b.load_state_dict(state)
    for x, y in zip(first, b.sample(32)):
        assert torch.equal(x, y)


@pytest.mark.slow
def test_bad_label_swap_is_a_config_error(tmp_path):
    proc = train(tmp_path / 'run', '--label_swap=1.5', check=False)
    assert proc.returncode == 2 and 'label_swap=1.5 must be in [0, 1]' in proc.stderr


@pytest.mark.slow
def test_killed_swap_run_resumes_exactly(tmp_path):
    train(tmp_path / 'full', '--max_iters=60', '--label_swap=0.3')
    killed = train(tmp_path / 'cut', '--max_iters=60', '--label_swap=0.3', check=False,
                   env={'BURSTYICL_FAULT': 'train_step:30'})
    assert killed.returncode == -9
    train(tmp_path / 'cut', '--max_iters=60', '--label_swap=0.3', '--init_from=resume')
    assert metrics(tmp_path / 'cut') == metrics(tmp_path / 'full')


# ---- group.py members differ in decay_modules, l2 target and label swap ---------------------------

LEVER_MEMBERS = [['--seed=0', '--weight_decay=0.5', '--decay_modules=mlp'],
                 ['--seed=3', '--p_copy=0.5', '--label_swap=0.2', '--label_swap_to=all'],
                 ['--seed=1', '--weight_decay=0.5', '--decay_modules=attn,head', '--label_swap=0.3'],
                 ['--seed=2', '--l2=0.05', '--decay_modules=head']]


@pytest.mark.slow
def test_group_members_with_different_levers_match_their_solo_runs(tmp_path):
    dirs = [tmp_path / f'g{k}' for k in range(len(LEVER_MEMBERS))]
    group(dirs, '--max_iters=40', members=LEVER_MEMBERS)
    for k, member in enumerate(LEVER_MEMBERS):
        train(tmp_path / f's{k}', '--max_iters=40', *member)
        assert_close(metrics(dirs[k]), metrics(tmp_path / f's{k}'))
    # a member's checkpoint is a solo checkpoint: train.py resumes it with its own decay group
    proc = train(dirs[1], '--max_iters=60', '--init_from=resume', *LEVER_MEMBERS[1], check=False)
    assert proc.returncode == 0, proc.stderr[-1000:]


# ---- grid syntax and report labels ---------------------------------------------------------------

@pytest.fixture(scope='module')
def grid():
    sys.argv = ['grid.py']
    import importlib
    import grid as module
    return importlib.reload(module)


def test_grid_parses_levers_and_their_combinations(grid):
    regs = dict(grid.parse_regularizers('none,wd=1@mlp+head,swap=0.2,swap=0.2+wd=1@mlp,l2=1e-3@head,p_bursty=0.5'))
    assert regs == {'wd0': {}, 'wd1-mlp-head': {'weight_decay': 1.0, 'decay_modules': 'mlp,head'},
                    'swap0.2': {'label_swap': 0.2},
                    'swap0.2_wd1-mlp': {'label_swap': 0.2, 'weight_decay': 1.0, 'decay_modules': 'mlp'},
                    'l2_0.001-head': {'l2': 1e-3, 'decay_modules': 'head'}, 'p_bursty_0.5': {'p_bursty': 0.5}}
    cells = grid.enumerate_cells(['100'], list(grid.parse_regularizers('swap=0.2+wd=1@mlp')), [0], [], [], {}, [])
    assert cells[0]['args'] == ['--n_train_classes=100', '--weight_decay=1.0', '--label_swap=0.2',
                                '--decay_modules=mlp', '--seed=0']
    assert cells[0]['setting'] == {'label_swap': 0.2, 'weight_decay': 1.0, 'decay_modules': 'mlp'}


@pytest.mark.slow
@pytest.mark.parametrize('bad', ['wd=1@ffn', 'swap=1.5', 'swap=0', 'wd=1@mlp+l2=1@head', 'swap=0.1+head', 'foo=1'])
def test_bad_lever_entries_are_a_clear_error(tmp_path, bad):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), f'--grid_dir={tmp_path}',
                           f'--regularizers={bad}', '--dry_run'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'regularizers' in proc.stderr and 'Traceback' not in proc.stderr


def test_report_labels_and_orders_levers():
    from report import NONE, as_reg, reg_label, reg_name, reg_of, reg_order
    cell = {'weight_decay': 1.0, 'l2': 0.0, 'setting': {'weight_decay': 1.0, 'decay_modules': 'head,mlp',
                                                        'label_swap': 0.2}}
    reg = reg_of(cell)
    assert reg_label(reg) == 'swap=0.2+wd=1@mlp+head' and reg_name(reg) == 'swap0.2_wd1-mlp-head'
    assert as_reg({'weight_decay': 1.0, 'decay_modules': 'all'}) == as_reg(1.0)       # 'all' is plain decay
    assert as_reg({'decay_modules': 'mlp'}) == NONE                                     # nothing decays
    assert reg_of({'weight_decay': 0.1, 'l2': 0.0}) == as_reg((0.1, 0.0))               # cells from before settings
    regs = [as_reg(r) for r in ({'label_swap': 0.2}, {'weight_decay': 1.0, 'decay_modules': 'mlp'},
                                {'weight_decay': 1.0}, {}, {'l2': 1e-3})]
    assert [reg_label(r) for r in sorted(regs, key=reg_order)] == ['wd=0', 'wd=1', 'wd=1@mlp', 'l2=0.001',
                                                                     'swap=0.2']


# ---- eval.py --ablate ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp('abl')
    train(out, '--max_iters=40', '--n_layer=2')
    return out


@pytest.mark.slow
def test_ablation_cli_prints_a_row_per_part_and_writes_json(trained):
    proc = eval_cli(trained, '--ablate=all')
    result = json.load(open(trained / 'ablation.json'))
    parts = [r['part'] for r in result['rows']]
    assert parts == ['none', 'encoder', 'attn0', 'attn1', 'attn*', 'mlp0', 'mlp1', 'mlp*', 'head']
    logged = metrics(trained)[-1]
    assert result['rows'][0]['icl_acc'] == pytest.approx(logged['icl_acc'], abs=1e-6)   # 'none' is the plain eval
    assert 'mlp*' in proc.stdout


@pytest.mark.slow
def test_head_input_ablation_gives_one_answer_for_every_episode(trained):
    from data import build_eval_episodes
    from eval import ablation_table, load_run, reference_sequences, run_episodes, mean_ablated, part_means
    model, config, dataset, _ = load_run(str(trained))
    icl, iwl = build_eval_episodes(dataset, config)
    means = part_means(model, reference_sequences(dataset, config, n=128), ['head', 'mlp0'])
    with mean_ablated(model, {'head': means['head']}):
        logits, _ = run_episodes(model, iwl)
    # the head sees only the mean: one input row through one matmul, which may round rows by their block position
    # (<= 64 roundings: the sum over d=64) of the logits' scale
    assert scaled_error(logits, logits[:1].expand_as(logits)) <= 64
    plain, _ = run_episodes(model, iwl)
    with mean_ablated(model, {'mlp0': means['mlp0']}):
        knocked, _ = run_episodes(model, iwl)
    assert not torch.allclose(plain, knocked) and torch.equal(plain, run_episodes(model, iwl)[0])  # edits undone
    rows = ablation_table(model, icl, iwl, reference_sequences(dataset, config, n=128), config, ['mlp0'])
    assert [part for part, _ in rows] == ['none', 'mlp0']


@pytest.mark.slow
def test_unknown_ablation_part_is_a_clear_error(trained):
    proc = eval_cli(trained, '--ablate=mlp7', check=False)
    assert proc.returncode == 1 and "unknown part 'mlp7'" in proc.stderr and 'Traceback' not in proc.stderr


def test_generic_axes_cross_any_train_key_with_the_regularizers(grid):
    combos = grid.parse_axes('p_bursty=0.5,1.0;zipf_alpha=0,1')
    assert [name for name, _ in combos] == ['p_bursty_0.5_zipf_alpha_0', 'p_bursty_0.5_zipf_alpha_1',
                                            'p_bursty_1_zipf_alpha_0', 'p_bursty_1_zipf_alpha_1']
    crossed = grid.cross(grid.parse_regularizers('none,swap=0.2'), combos[:1])
    assert crossed == [('p_bursty_0.5_zipf_alpha_0', {'p_bursty': 0.5, 'zipf_alpha': 0.0}),
                       ('swap0.2_p_bursty_0.5_zipf_alpha_0', {'label_swap': 0.2, 'p_bursty': 0.5, 'zipf_alpha': 0.0})]
    from report import reg_label, as_reg
    assert reg_label(as_reg(crossed[1][1])) == 'swap=0.2+p_bursty=0.5+zipf_alpha=0'


@pytest.mark.slow
@pytest.mark.parametrize('bad, message', [('p_bursty=2', 'p_bursty=2.0 must be in [0, 1]'),
                                          ('zipf_alpha', 'key=v1,v2'), ('n_layers=1,2', 'no train.py key')])
def test_bad_axes_are_a_clear_error_before_any_cell(tmp_path, bad, message):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), f'--grid_dir={tmp_path / "g"}',
                           f'--axes={bad}', '--dry_run'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and not os.path.exists(tmp_path / 'g')


# ---- collapse and conflict probes -------------------------------------------------------

def test_conflict_episodes_put_context_and_memorised_answers_apart():
    from data import make_conflict_episodes
    data = make_synthetic(300, 10, 32, dim=8, exemplars_per_class=5, label_mode='shared', seed=0)
    episodes, memorised = make_conflict_episodes(data.train, data.class_labels, 256, seed=1)
    assert torch.equal(memorised, data.class_labels[episodes.classes[:, -1]])
    assert (memorised >= 2).all() and (episodes.labels[:, -1] < 2).all()      # the two answers always differ
    assert (episodes.classes[:, :8] == episodes.classes[:, 8:]).any(1).all()  # the query's class is in context
    assert episodes.labels[:, -1].float().mean().item() == 0.5                # balanced 0/1 answers


@pytest.mark.slow
def test_probe_metrics_in_every_eval_row(tmp_path):
    train(tmp_path, '--max_iters=20')
    row = metrics(tmp_path)[-1]
    for key in ('train_dist_acc', 'conflict_icl', 'conflict_iwl'):
        assert 0.0 <= row[key] <= 1.0
    assert row['conflict_icl'] + row['conflict_iwl'] <= 1.0


# ---- label_swap_to: which labels a swap draws from ---------------------------------------

def per_class_swap(rule, n_train=100, n_labels=1623, seed=0):
    from data import ClassBank, assign_labels
    labels = assign_labels(n_train, n_labels, 'per_class', 0)
    return labels, EpisodeSampler(ClassBank(torch.zeros(n_train, 20, 1)), labels, seed=seed, label_swap=1.0,
                                  n_labels=n_labels, label_swap_to=rule)


def test_train_rule_swaps_only_to_labels_of_training_classes():
    """Omniglot's shape: 100 training classes of 1623 per-class labels. Under 'train' (Bratulic's rule) every
    swapped label is one some training class owns, never the query's own; under 'all' most are not."""
    labels, sampler = per_class_swap('train')
    _, items_labels, classes = sampler.sample(4096)
    new, own = items_labels[:, -1], labels[classes[:, -1]]
    assert (new != own).all() and (new < 100).all()        # per_class: class k owns label k
    assert len(new.unique()) > 90                           # spread over the other owned labels
    _, everyone = per_class_swap('all')
    new_all = everyone.sample(4096)[1][:, -1]
    assert (new_all >= 100).float().mean() > 0.9             # 1523 of 1622 other labels belong to no class


def test_swap_rules_are_the_same_draw_when_training_classes_own_every_label():
    """The synthetic default (32 shared labels, all owned): 'train' and 'all' give the same stream bit for bit, so
    synthetic results do not depend on the rule."""
    data = make_synthetic(400, 10, 32, dim=8, exemplars_per_class=5, label_mode='shared', seed=0)
    a, b = (EpisodeSampler(data.train, data.class_labels, seed=3, label_swap=0.5, n_labels=32, label_swap_to=r)
            for r in ('train', 'all'))
    for x, y in zip(a.sample(256), b.sample(256)):
        assert torch.equal(x, y)


@pytest.mark.slow
def test_a_run_from_before_label_swap_to_resumes_as_the_all_rule(tmp_path):
    """A checkpoint whose config has no label_swap_to (a run of the old code) resumes with 'all', the rule it ran
    with: asking for 'train' is a different experiment; a key newer than the run takes its default otherwise."""
    train(tmp_path, '--max_iters=20', '--label_swap=0.3')
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    del ckpt['config']['label_swap_to'], ckpt['config']['p_copy']   # as saved before these keys existed
    torch.save(ckpt, tmp_path / 'ckpt.pt')
    proc = train(tmp_path, '--max_iters=40', '--init_from=resume', '--label_swap=0.3', check=False)
    assert proc.returncode == 2 and "label_swap_to ('all' there, 'train' now)" in proc.stderr
    train(tmp_path, '--max_iters=40', '--init_from=resume', '--label_swap=0.3', '--label_swap_to=all')
    assert metrics(tmp_path)[-1]['iter'] == 40


def test_reports_name_the_all_rule_for_runs_from_before_the_key():
    from report import reg_label, reg_of
    old = {'weight_decay': 0.0, 'setting': {'label_swap': 0.8}, 'summary': {'config': {'label_swap': 0.8}}}
    new = {**old, 'summary': {'config': {'label_swap': 0.8, 'label_swap_to': 'train'}}}
    assert reg_label(reg_of(old)) == 'swap=0.8+swap_to=all'
    assert reg_label(reg_of(new)) == 'swap=0.8'
    assert reg_label(reg_of({'weight_decay': 0.1, 'summary': {'config': {}}})) == 'wd=0.1'  # no swap: no rule


# ---- p_copy: instance copies (the worked sampler example; Bratulic's sequence_with_copy) ----------

def copy_sampler(p_copy, exemplars=20, seed=0, **kw):
    data = make_synthetic(50, 10, 16, dim=8, exemplars_per_class=exemplars, label_mode='shared', seed=0)
    return EpisodeSampler(data.train, data.class_labels, seed=seed, p_copy=p_copy, **kw)


@pytest.mark.parametrize('exemplars', [20, 0])   # 0: fresh noise per draw (a copy keeps its noise too)
def test_copy_sequences_repeat_the_query_and_one_item_per_class(exemplars):
    items, labels, classes = copy_sampler(1.0, exemplars, p_bursty=1.0).sample(512)
    same_class = classes[:, :, None] == classes[:, None, :]
    same_item = (items[:, :, None] == items[:, None, :]).all(-1)
    assert torch.equal(same_class, same_item)                       # a class is one item in its sequence
    query_class = classes[:, :-1] == classes[:, -1:]
    assert query_class.sum(1).min() >= 3                            # 3 shots of the query's class ...
    assert (items[:, :-1][query_class] == items[:, -1:].expand_as(items)[:, :-1][query_class]).all()  # ... = the query


def test_copies_only_in_a_fraction_p_copy_of_the_bursty_sequences():
    items, labels, classes = copy_sampler(0.5, p_bursty=0.5).sample(4096)
    query_class = classes[:, :-1] == classes[:, -1:]
    copied = ((items[:, :-1] == items[:, -1:]).all(-1) & query_class).any(1)
    bursty = query_class.sum(1) >= 3
    assert not copied[~bursty].any()                                   # i.i.d. sequences never copy
    assert abs(copied[bursty].float().mean().item() - 0.5) < 0.05
    with_fresh_exemplars = bursty & ~copied                            # the others: distinct exemplars per class
    same_item = (items[:, :-1, None] == items[:, None, :-1]).all(-1).sum((1, 2)) - (items.shape[1] - 1)
    assert (same_item[with_fresh_exemplars] == 0).all()


def test_no_copy_draws_nothing():
    a, b = copy_sampler(0.0), copy_sampler(0.0)
    b.p_copy = 0.0
    data = make_synthetic(50, 10, 16, dim=8, exemplars_per_class=20, label_mode='shared', seed=0)
    old = EpisodeSampler(data.train, data.class_labels, seed=0)   # no p_copy argument: the stream of before
    for x, y in zip(a.sample(64), old.sample(64)):
        assert torch.equal(x, y)


def test_from_config_takes_every_sampler_key():
    from training import train_defaults
    data = make_synthetic(50, 10, 16, dim=8, exemplars_per_class=5, label_mode='shared', seed=0)
    config = {**train_defaults(), 'p_copy': 0.25, 'p_bursty': 0.7, 'label_swap': 0.1, 'seed': 4, 'device': 'auto'}
    s = EpisodeSampler.from_config(data.train, data.class_labels, config, 'cpu')
    assert (s.p_copy, s.p_bursty, s.label_swap) == (0.25, 0.7, 0.1)
    assert EpisodeSampler.from_config(data.train, data.class_labels, config, 'cpu', label_swap=0.0).label_swap == 0.0


def test_a_sampler_argument_named_unlike_its_key_is_an_error_naming_both():
    """A rule whose argument is not named like its train.py global would never get its value: from_config (and so
    every run's start-up check) refuses it."""
    from training import train_defaults

    class Noisy(EpisodeSampler):
        def __init__(self, bank, class_labels, context_noise=0.0, **rest):
            super().__init__(bank, class_labels, **rest)
    data = make_synthetic(50, 10, 16, dim=8, exemplars_per_class=5, label_mode='shared', seed=0)
    with pytest.raises(ValueError, match="argument 'context_noise' is no train.py key \\(is it 'p_context_noise'"):
        Noisy.from_config(data.train, data.class_labels, {**train_defaults(), 'p_context_noise': 0.5}, 'cpu')


def test_probes_draw_without_the_training_only_rules():
    """The training-distribution probe and sample_attention.py's bursty episodes come from a clean sampler
    (EpisodeSampler.TRAINING_ONLY): a run's label swap and copies do not reach them."""
    from data import build_dataset, build_probe_episodes
    from sample_attention import fixed_episodes
    from training import train_defaults
    plain = {**train_defaults(), 'n_train_classes': 50, 'n_holdout_classes': 10, 'n_eval_episodes': 32}
    noisy = {**plain, 'label_swap': 0.5, 'label_swap_to': 'all', 'p_copy': 0.5}
    import inspect
    for key in EpisodeSampler.TRAINING_ONLY:   # a misspelt entry would leave its rule on in the probes
        assert key in inspect.signature(EpisodeSampler.__init__).parameters and key in plain, key
    data = build_dataset(plain)
    for a, b in [(build_probe_episodes(data, plain)['train'], build_probe_episodes(data, noisy)['train']),
                 (fixed_episodes(data, plain, 0, 8, seed=1)[0][1], fixed_episodes(data, noisy, 0, 8, seed=1)[0][1])]:
        assert torch.equal(a.items, b.items) and torch.equal(a.labels, b.labels)


def test_p_copy_is_a_grid_axis(grid):
    combos = grid.parse_axes('p_copy=0,0.5')
    assert [name for name, _ in combos] == ['p_copy_0', 'p_copy_0.5'] and combos[1][1] == {'p_copy': 0.5}
