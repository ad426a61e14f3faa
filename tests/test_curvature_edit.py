"""The curvature edit as a training lever (curvature_every, curvature_rho, curvature_modules, curvature_start,
curvature_sequences): its schedule, its checks, the edit it makes against a direct call of curvature.py on the
sequences it says it draws, and a run through train.py, resumed and as a group member."""
import pytest
import torch

from conftest import ROOT  # noqa: F401  (puts the repository on sys.path)
from test_forget import assert_members_equal_their_solo_runs, config, small_model_and_data
from test_train import metrics, train
from interventions import check_curvature, curvature_due, curvature_edit


def test_schedule_counts_completed_steps_from_curvature_start():
    assert [it for it in range(0, 501) if curvature_due(it, config(curvature_every=100))] == [100, 200, 300, 400, 500]
    late = config(curvature_every=100, curvature_start=250)
    assert [it for it in range(0, 501) if curvature_due(it, late)] == [300, 400, 500]
    assert not any(curvature_due(it, config()) for it in range(0, 501))


@pytest.mark.parametrize('bad, key', [({'curvature_every': -1}, 'curvature_every'),
                                      ({'curvature_every': 2.5}, 'curvature_every'),
                                      ({'curvature_start': 100}, 'curvature_start'),
                                      ({'curvature_rho': 0.0}, 'curvature_rho'), ({'curvature_rho': 1.5}, 'curvature_rho'),
                                      ({'curvature_sequences': 0}, 'curvature_sequences'),
                                      ({'curvature_modules': 'mlp,mpl'}, "'mpl'"),
                                      ({'curvature_modules': ''}, 'empty')])
def test_bad_curvature_keys_name_the_problem(bad, key):
    with pytest.raises(ValueError, match=key):
        check_curvature(config(**bad))


def test_the_edit_is_curvature_py_on_its_own_fresh_sequences_and_leaves_the_training_stream():
    from curvature import curvature_bases, edited, kfac_factors, linear_names
    from data import EpisodeSampler
    c, data, model, _ = small_model_and_data()
    c = {**c, 'curvature_every': 10, 'curvature_rho': 0.7, 'curvature_modules': 'mlp,head', 'curvature_sequences': 40,
         'batch_size': 16}
    rng = torch.get_rng_state()
    weights, removed = curvature_edit(model, c, data, 30)
    assert torch.equal(torch.get_rng_state(), rng)
    names = linear_names(model, ('mlp', 'head'))
    assert sorted(weights) == sorted(f'{n}.weight' for n in names) and 0 < removed < 1
    # the same edit, by hand: 40 sequences from a sampler seeded by (seed, step), 16 at a time (16, 16, 8)
    seed = c['seed'] * 1_000_003 + 30
    sampler = EpisodeSampler.from_config(data.train, data.class_labels, c, 'cpu', seed=seed, n_labels=data.n_labels)
    batches = [sampler.sample(n)[:2] for n in (16, 16, 8)]
    bases = curvature_bases(kfac_factors(model, batches, names, 16, seed))
    with edited(model, bases, names, 0.7) as stats:
        for n in names:
            assert torch.equal(weights[f'{n}.weight'], dict(model.named_modules())[n].weight), n
    assert removed == pytest.approx(sum(s['mass_removed'] for s in stats.values()) / len(stats))
    again, _ = curvature_edit(model, c, data, 30)
    assert all(torch.equal(again[n], w) for n, w in weights.items())                       # deterministic
    other, _ = curvature_edit(model, c, data, 40)
    assert not torch.equal(other['head.weight'], weights['head.weight'])                   # fresh sequences each edit
    assert curvature_edit(model, {**c, 'curvature_rho': 1.0}, data, 30)[0] == {}          # rho = 1: no edit


@pytest.mark.slow
def test_curvature_run_edits_on_schedule_and_resumes_identically(tmp_path):
    args = ['--max_iters=60', '--curvature_every=15', '--curvature_start=20', '--curvature_rho=0.5',
            '--curvature_sequences=64', '--curvature_modules=mlp,head']
    proc = train(tmp_path / 'whole', *args)
    assert [line.split(' at iter ')[1].split(':')[0] for line in proc.stdout.splitlines()
            if line.startswith('curvature edit')] == ['30', '45']
    train(tmp_path / 'cut', *args, check=False, env={'BURSTYICL_FAULT': 'train_step:32'})
    train(tmp_path / 'cut', *args, '--init_from=resume')
    assert metrics(tmp_path / 'cut') == metrics(tmp_path / 'whole')   # (that the edit acts: tests/test_keys.py)


@pytest.mark.slow
def test_group_members_edit_as_their_solo_runs(tmp_path):
    assert_members_equal_their_solo_runs(
        tmp_path, ['--max_iters=40', '--curvature_every=10', '--curvature_sequences=64'],
        [['--seed=0', '--curvature_rho=0.5'], ['--seed=1', '--n_train_classes=40', '--curvature_modules=attn']])


def test_a_mistyped_curvature_key_stops_the_run_before_out_dir(tmp_path):
    proc = train(tmp_path / 'run', '--max_iters=2', '--curvature_evry=10', check=False)
    assert proc.returncode != 0 and 'curvature_evry' in proc.stderr + proc.stdout
    assert not (tmp_path / 'run').exists()
