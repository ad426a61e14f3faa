"""A group (train.py <args> :: <args>): K cells as one stacked model give each member its solo run's numbers and files."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, scaled_error
from test_train import TINY, eval_cli, metrics, printed_row, run_script, train

# a Few-like and two Many-like members: different seeds, decays, l2 and class counts
MEMBERS = [['--seed=0'], ['--seed=1', '--weight_decay=0.1'], ['--seed=2', '--n_train_classes=40', '--l2=0.01']]
# A member sums in another order than its solo run (vmap'd matmuls). Error model of a short run: each of its T <= 60
# steps at lr 2e-3 moves a weight by <= lr x (Adam's update, <= 1) x n roundings, n = the 16 x 17 tokens summed into a
# weight's gradient: 60 x 2e-3 x 272 = 33 roundings of a metric's scale (1 for a probability or share, else its own
# size: the loss, the weight norm); 64 leaves room for the eval's own sums, which member and solo take alike.
RUN_ROUNDINGS = 64


def group(out_dirs, *extra, check=True, env=None, members=MEMBERS):
    argv = []
    for out_dir, member in zip(out_dirs, members):
        argv += [*TINY, *member, *extra, f'--out_dir={out_dir}', '::']
    return run_script('train.py', *argv[:-1], check=check, timeout=300, env=env)


def assert_close(rows, reference):
    """Two runs' metrics rows agree: counts exactly, floats within RUN_ROUNDINGS of their scale."""
    assert [r['iter'] for r in rows] == [r['iter'] for r in reference]
    for row, ref in zip(rows, reference):
        assert row.keys() == ref.keys()
        for key, value in ref.items():
            if isinstance(value, list) and value and isinstance(value[0], list):
                assert row[key] == value, key   # counts (e.g. hits per class): exact
            elif isinstance(value, float) or (isinstance(value, list) and value):
                scale = max(1.0, *(abs(v) for v in (value if isinstance(value, list) else [value])))
                assert scaled_error(row[key], value, scale=scale) <= RUN_ROUNDINGS, (key, row[key], value)
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
    assert printed_row(eval_cli(dirs[1]))['icl_acc'] == metrics(dirs[1])[-1]['icl_acc']


@pytest.mark.slow
def test_members_at_different_steps_are_refused(tmp_path):
    train(tmp_path / 'a', '--max_iters=20')
    proc = group([tmp_path / 'a', tmp_path / 'b'], '--max_iters=40', '--init_from=resume', check=False,
                 members=[['--seed=0'], ['--seed=1']])
    assert proc.returncode == 2 and 'members are at different steps' in proc.stderr


# ---- a key is applied by the group, or refused ------------------------------------------------------

def test_members_may_not_differ_in_a_key_the_group_applies_once(tmp_path):
    proc = group([tmp_path / 'a', tmp_path / 'b'], '--max_iters=20', check=False,
                 members=[['--seed=0'], ['--seed=1', '--n_layer=2', '--batch_size=8']])
    assert proc.returncode == 2 and 'members differ in n_layer (1, 2); batch_size (16, 8)' in proc.stderr, proc.stderr
    assert 'applies once for all its members' in proc.stderr and 'Traceback' not in proc.stderr
    assert not os.path.exists(tmp_path / 'a' / 'metrics.jsonl')


def insert_lines(text, edits):
    """text with lines inserted after the first line holding each anchor: edits [(anchor, lines), ...]."""
    for anchor, lines in edits:
        assert anchor in text, anchor
        end = text.index('\n', text.index(anchor)) + 1
        text = text[:end] + lines + text[end:]
    return text


def patched_repo(tmp_path, patches):
    """A copy of the project's scripts with lines inserted after anchors: {file: [(anchor, lines), ...]}."""
    import shutil
    repo = tmp_path / 'repo'
    shutil.copytree(ROOT, repo, ignore=lambda d, names: [n for n in names if n.startswith(('out', '.git', 'tests',
                                                                                        'assets', '__pycache__'))])
    for name, edits in patches.items():
        (repo / name).write_text(insert_lines((repo / name).read_text(), edits))
    return repo


def run_in(repo, script, argv):
    return subprocess.run([sys.executable, str(repo / script), *argv], capture_output=True, text=True, timeout=300,
                          cwd=repo, env={**os.environ, 'OMP_NUM_THREADS': '1'})


def member_argv(members):
    argv = []
    for member in members:
        argv += [*TINY, '--max_iters=40', *member, '::']
    return argv[:-1]


@pytest.mark.parametrize('script', ['group', 'train.py'])
def test_a_key_nothing_reads_stops_a_group_and_a_solo_run_naming_the_key(tmp_path, script):
    """A train.py global nothing reads (say one applied only in one loop) stops a group and a solo run alike, naming
    it, before any out_dir is made, even when every member sets it alike: it would train without it. So a key
    nothing reads fails the fast tier; one only some runs read is named in training.READ_ON_SOME_PATHS."""
    repo = patched_repo(tmp_path, {'train.py': [('l2 = ', 'my_scale = 1.0\n')]})
    argv = (member_argv([['--seed=0', '--my_scale=2.0', f'--out_dir={tmp_path}/a'],
                         ['--seed=1', '--my_scale=2.0', f'--out_dir={tmp_path}/b']]) if script == 'group'
            else [*TINY, '--max_iters=40', '--my_scale=2.0', f'--out_dir={tmp_path}/a'])
    proc = run_in(repo, 'train.py', argv)
    assert proc.returncode == 2 and 'nothing reads my_scale' in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr and not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


def stacked_image_models():
    """Two small ResNet-encoder models, their stacked group and a batch of 14x14 images and labels per member."""
    import torch
    from group import StackedModel
    from model import ICLTransformer, ModelConfig
    torch.manual_seed(0)
    cfg = ModelConfig(n_labels=10, item_shape=(14, 14), encoder='resnet', n_layer=1, n_head=2, n_embd=16)
    models = [ICLTransformer(cfg), ICLTransformer(cfg)]
    items = torch.randint(0, 256, (2, 3, 9, 14, 14), dtype=torch.uint8)
    return models, StackedModel(models), items, torch.randint(0, 10, (2, 3, 9))


def test_a_stacked_image_model_trains_and_matches_its_solo_models():
    """The ResNet encoder (channels_last on its own) runs under the group's vmap, and each member's logits and
    gradients equal its solo model's: an Omniglot group steps like its solo runs."""
    models, stacked, items, labels = stacked_image_models()
    logits = stacked(items, labels)['logits']
    logits.sum().backward()
    for k, model in enumerate(models):
        solo = model(items[k], labels[k])['logits']
        solo.sum().backward()
        # the stacked encoder's plain-layout convolutions and the solo one's channels_last ones sum in other orders:
        # a logit is off by <= 64 roundings per op (the widest sum: 64 channels), over <= 16 ops deep (stem, 4 groups
        # of bottlenecks, one block), of the logits' scale
        assert scaled_error(logits[k], solo) <= 16 * 64
        for name, p in model.named_parameters():
            # a weight's gradient sums over the member's 3 x 9 images x 49 stem positions (1323 terms) in another
            # order: <= 1323 roundings of the tensor's largest gradient, not of each element (an elementwise rtol
            # 1e-4 failed at one thread)
            assert scaled_error(stacked.params[name].grad[k], p.grad) <= 3 * 9 * 49, name
