"""Real faults: SIGKILL at exact points (mid-step, mid-checkpoint, mid-append), corrupt checkpoints.
After each, --init_from=resume must give the same metrics.jsonl as an uninterrupted run."""

import pytest

from checkpoint import load_checkpoint
from test_train import metrics, train

pytestmark = pytest.mark.slow   # every test here trains, kills and resumes


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('ref')
    train(out, '--max_iters=60')
    return out


@pytest.mark.parametrize('fault', [
    'train_step:30',          # between backward and optimizer.step of step 30
    'checkpoint_written:2',   # new checkpoint in ckpt.pt.tmp, not yet renamed
    'checkpoint_rotated:3',   # old ckpt.pt moved to ckpt_prev.pt, new one not yet in place
    'metrics_append:3',       # half a JSON line written to metrics.jsonl
])
def test_sigkill_at_any_point_then_resume_matches_uninterrupted(reference_run, tmp_path, fault):
    killed = train(tmp_path, '--max_iters=60', check=False, env={'BURSTYICL_FAULT': fault})
    assert killed.returncode == -9, killed.stderr[-500:]
    state = load_checkpoint(str(tmp_path))          # a usable checkpoint always survives
    assert state['iter_num'] < 60
    train(tmp_path, '--max_iters=60', '--init_from=resume')
    assert metrics(tmp_path) == metrics(reference_run)


def test_corrupt_checkpoint_falls_back_to_previous(reference_run, tmp_path):
    train(tmp_path, '--max_iters=40')
    path = tmp_path / 'ckpt.pt'
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])   # truncated by a full disk, say
    proc = train(tmp_path, '--max_iters=60', '--init_from=resume')
    assert f'checkpoint {path} is unreadable' in proc.stdout
    assert 'resumed from iter 20' in proc.stdout
    assert metrics(tmp_path) == metrics(reference_run)


def test_no_usable_checkpoint_is_a_clear_error(tmp_path):
    train(tmp_path, '--max_iters=20')
    for name in ('ckpt.pt', 'ckpt_prev.pt'):
        if (tmp_path / name).exists():
            (tmp_path / name).write_bytes(b'garbage')
    before = (tmp_path / 'metrics.jsonl').read_text()
    proc = train(tmp_path, '--max_iters=40', '--init_from=resume', check=False)
    assert proc.returncode == 2
    assert 'cannot resume: no usable checkpoint' in proc.stderr and 'ckpt.pt' in proc.stderr
    assert (tmp_path / 'metrics.jsonl').read_text() == before
