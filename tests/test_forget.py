"""Forgetting (forget_every, forget_until, forget_modules): the schedule, what is re-drawn, its fresh AdamW state,
and a run through train.py, resumed and as a group member."""
import json
import os

import pytest
import torch

from conftest import ROOT  # noqa: F401  (puts the repository on sys.path)
from test_train import TINY, metrics, train
from interventions import check_forgetting, forget, forget_due, forgotten_names, fresh_state, parse_forget_modules


def config(**kw):
    from checkpoint import train_defaults
    return {**train_defaults(), **kw}


def test_schedule_counts_completed_steps_and_stops_at_forget_until():
    whole = config(forget_every=100)
    assert [it for it in range(0, 501) if forget_due(it, whole)] == [100, 200, 300, 400, 500]
    temporary = config(forget_every=100, forget_until=300)
    assert [it for it in range(0, 501) if forget_due(it, temporary)] == [100, 200]
    assert not any(forget_due(it, config()) for it in range(0, 501))


@pytest.mark.parametrize('bad, key', [({'forget_every': -1}, 'forget_every'), ({'forget_every': 1.5}, 'forget_every'),
                                      ({'forget_until': 100}, 'forget_until'),
                                      ({'forget_every': 10, 'forget_modules': 'encoder,attn'}, "'attn'"),
                                      ({'forget_every': 10, 'forget_modules': ''}, 'empty')])
def test_bad_forgetting_keys_name_the_problem(bad, key):
    with pytest.raises(ValueError, match=key):
        check_forgetting(config(**bad))


def small_model_and_data():
    from data import build_run_data
    from model import build_model
    c = config(n_train_classes=20, n_holdout_classes=4, n_layer=2, n_embd=16, n_head=2, item_dim=8,
               n_eval_episodes=8)
    torch.manual_seed(0)
    data, sampler, *_ = build_run_data(c, 'cpu')
    return c, data, build_model(c, data), sampler.sample(4)[:2]


def test_only_the_chosen_modules_are_redrawn_deterministically_and_lose_their_adam_state():
    c, data, model, batch = small_model_and_data()
    keys = model.state_dict().keys()
    names = forgotten_names(keys, parse_forget_modules('label_embedding,head,mlp'))
    assert set(names) == {'label_embedding.weight', 'head.weight', 'head.bias', 'blocks.0.mlp.0.weight',
                          'blocks.0.mlp.0.bias', 'blocks.0.mlp.2.weight', 'blocks.0.mlp.2.bias', 'blocks.1.mlp.0.weight',
                          'blocks.1.mlp.0.bias', 'blocks.1.mlp.2.weight', 'blocks.1.mlp.2.bias'}
    assert all(n.startswith('encoder.') for n in forgotten_names(keys, ('encoder',)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(*batch)['logits'].sum().backward()
    optimizer.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    fresh = fresh_state(c, data, 300, names)
    assert torch.equal(torch.get_rng_state(), rng)                   # the training stream is left alone
    assert all(torch.equal(fresh[n], fresh_state(c, data, 300, names)[n]) for n in names)   # deterministic
    assert not torch.equal(fresh['head.weight'], fresh_state(c, data, 400, names)['head.weight'])
    assert not torch.equal(fresh['head.weight'], fresh_state({**c, 'seed': 1}, data, 300, names)['head.weight'])
    params = dict(model.named_parameters())
    forget(model.state_dict(keep_vars=True), fresh, optimizer.state, params)
    after = model.state_dict()
    for name in keys:
        expected = fresh[name] if name in names else before[name]
        assert torch.equal(after[name], expected), name
        if name in params:
            assert (params[name] in optimizer.state) == (name not in names), name


@pytest.mark.slow
def test_forgetting_run_resumes_identically_and_changes_the_run(tmp_path):
    args = ['--max_iters=60', '--forget_every=15', '--forget_until=50', '--forget_modules=label_embedding,head']
    train(tmp_path / 'whole', *args)
    train(tmp_path / 'cut', *args, check=False, env={'BURSTYICL_FAULT': 'train_step:32'})
    train(tmp_path / 'cut', *args, '--init_from=resume')
    assert metrics(tmp_path / 'cut') == metrics(tmp_path / 'whole')
    train(tmp_path / 'plain', '--max_iters=60')
    assert metrics(tmp_path / 'plain')[-1]['iwl_acc'] != metrics(tmp_path / 'whole')[-1]['iwl_acc'] or \
        metrics(tmp_path / 'plain')[-1]['train_loss'] != metrics(tmp_path / 'whole')[-1]['train_loss']
    summary = json.load(open(os.path.join(tmp_path / 'whole', 'summary.json')))
    assert summary['config']['forget_every'] == 15 and summary['config']['forget_until'] == 50


def assert_members_equal_their_solo_runs(tmp_path, common, members):
    """A group of len(members) (each with the common arguments and its own) gives each member its solo run's metrics."""
    from test_group import assert_close, group
    solos = [tmp_path / f's{k}' for k in range(len(members))]
    for out_dir, member in zip(solos, members):
        train(out_dir, *common, *member)
    dirs = [tmp_path / f'g{k}' for k in range(len(members))]
    group(dirs, *common, members=members)
    for member, solo in zip(dirs, solos):
        assert_close(metrics(member), metrics(solo))


@pytest.mark.slow
def test_group_members_forget_as_their_solo_runs(tmp_path):
    assert_members_equal_their_solo_runs(tmp_path, ['--max_iters=40', '--forget_every=10', '--forget_modules=encoder,head'],
                                         [['--seed=0'], ['--seed=1', '--n_train_classes=40']])


def test_members_may_not_differ_in_their_forgetting_schedule(tmp_path):
    from test_group import group
    proc = group([tmp_path / 'a', tmp_path / 'b'], '--max_iters=2', check=False,
                 members=[['--forget_every=10'], ['--forget_every=20']])
    assert proc.returncode == 2 and 'forget_every' in proc.stderr, proc.stderr[-500:]
