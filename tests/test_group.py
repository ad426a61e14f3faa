"""group.py: K cells as one stacked model give each member its solo train.py run's numbers and files."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from test_train import TINY, metrics, train

# a Few-like and two Many-like members: different seeds, decays, l2 and class counts
MEMBERS = [['--seed=0'], ['--seed=1', '--weight_decay=0.1'], ['--seed=2', '--n_train_classes=40', '--l2=0.01']]
TOLERANCE = 1e-5   # measured: <= 5e-7 (vmap'd matmuls sum in another order than the solo model's)


def group(out_dirs, *extra, check=True, env=None, members=MEMBERS):
    argv = []
    for out_dir, member in zip(out_dirs, members):
        argv += [*TINY, *member, *extra, f'--out_dir={out_dir}', '::']
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'group.py'), *argv[:-1]], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"group.py failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def assert_close(rows, reference):
    assert [r['iter'] for r in rows] == [r['iter'] for r in reference]
    for row, ref in zip(rows, reference):
        assert row.keys() == ref.keys()
        for key, value in ref.items():
            if isinstance(value, list) and value and isinstance(value[0], list):
                assert row[key] == value, key   # counts (e.g. hits per class): exact
            elif isinstance(value, list):
                assert row[key] == pytest.approx(value, abs=TOLERANCE), key
            elif isinstance(value, float):
                assert row[key] == pytest.approx(value, abs=TOLERANCE), key
            else:
                assert row[key] == value, key


@pytest.fixture(scope='module')
def solo_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('solo')
    dirs = [root / f'm{k}' for k in range(len(MEMBERS))]
    for out_dir, member in zip(dirs, MEMBERS):
        train(out_dir, '--max_iters=60', *member)
    return dirs


@pytest.fixture(scope='module')
def group_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('group')
    dirs = [root / f'm{k}' for k in range(len(MEMBERS))]
    group(dirs, '--max_iters=60')
    return dirs


@pytest.mark.slow
def test_each_member_matches_its_solo_run(solo_runs, group_runs):
    for solo, member in zip(solo_runs, group_runs):
        assert_close(metrics(member), metrics(solo))
        s, m = (json.load(open(os.path.join(d, 'summary.json'))) for d in (solo, member))
        assert m['config'] == {**s['config'], 'out_dir': m['config']['out_dir']}
        assert m['peak_icl_iter'] == s['peak_icl_iter'] and m['exposure'] == s['exposure']
        assert json.load(open(os.path.join(member, 'exposure.json'))) == json.load(open(os.path.join(solo, 'exposure.json')))


@pytest.mark.slow
def test_sigkilled_group_resumes_to_the_same_numbers(solo_runs, group_runs, tmp_path):
    dirs = [tmp_path / f'm{k}' for k in range(len(MEMBERS))]
    killed = group(dirs, '--max_iters=60', check=False, env={'BURSTYICL_FAULT': 'train_step:30'})
    assert killed.returncode == -9, killed.stderr[-500:]
    group(dirs, '--max_iters=60', '--init_from=resume')
    for member, uninterrupted, solo in zip(dirs, group_runs, solo_runs):
        assert metrics(member) == metrics(uninterrupted)     # same code path: bit for bit
        assert_close(metrics(member), metrics(solo))


@pytest.mark.slow
def test_solo_train_py_resumes_a_member_checkpoint(solo_runs, tmp_path):
    """A member's ckpt.pt (model, solo-format AdamW state, sampler) is a train.py checkpoint."""
    dirs = [tmp_path / f'm{k}' for k in range(len(MEMBERS))]
    group(dirs, '--max_iters=40')
    train(dirs[1], '--max_iters=60', '--init_from=resume', *MEMBERS[1])
    assert_close(metrics(dirs[1]), metrics(solo_runs[1]))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'eval.py'), f'--out_dir={dirs[1]}'],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert json.loads(proc.stdout.strip().splitlines()[-1])['icl_acc'] == metrics(dirs[1])[-1]['icl_acc']


def test_members_may_differ_only_in_member_keys(tmp_path):
    proc = group([tmp_path / 'a', tmp_path / 'b'], '--max_iters=20', check=False,
                 members=[['--seed=0'], ['--seed=1', '--n_layer=2']])
    assert proc.returncode == 2 and 'members differ in n_layer' in proc.stderr and 'Traceback' not in proc.stderr
    assert not os.path.exists(tmp_path / 'a' / 'metrics.jsonl')


@pytest.mark.slow
def test_members_at_different_steps_are_refused(tmp_path):
    train(tmp_path / 'a', '--max_iters=20')
    proc = group([tmp_path / 'a', tmp_path / 'b'], '--max_iters=40', '--init_from=resume', check=False,
                 members=[['--seed=0'], ['--seed=1']])
    assert proc.returncode == 2 and 'members are at different steps' in proc.stderr
