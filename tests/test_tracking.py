"""wandb tracking (tracking.py), offline: a run's wandb history holds exactly its metrics.jsonl rows, a resumed
run continues its wandb run, a grid's cells share a group (group.py members log as their own runs), and a
missing wandb package is one config error line. CI installs wandb; without it those tests are skipped."""
import glob
import importlib.util
import json
import os
import struct
import subprocess
import sys

import pytest

from conftest import ROOT
from test_grid import grid  # noqa: F401 (fixture)
from test_train import TINY, metrics, train
from tracking import logged_in

needs_wandb = pytest.mark.skipif(importlib.util.find_spec('wandb') is None,
                                 reason='wandb is not installed (pip install wandb; CI installs it)')


def offline_env(tmp_path):
    """Offline, with everything wandb writes under tmp_path (runs in tmp_path/wandb/offline-run-*)."""
    return {'WANDB_MODE': 'offline', 'WANDB_DIR': str(tmp_path), 'WANDB_CONFIG_DIR': str(tmp_path / 'config'),
            'WANDB_CACHE_DIR': str(tmp_path / 'cache'), 'WANDB_DATA_DIR': str(tmp_path / 'data')}


def read_wandb_file(path):
    """The records of an offline run's .wandb file: a LevelDB-style log (7-byte ':W&B' header, 32 KiB blocks,
    records split into chunks with a 7-byte crc/length/type header) of wandb's protobuf Records."""
    from wandb.proto import wandb_internal_pb2
    data = open(path, 'rb').read()
    assert data[:4] == b':W&B', path
    records, pos, chunks = [], 7, b''
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:   # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
        if kind == 0:                 # zero padding up to the end of a block
            pos += 32768 - pos % 32768
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):            # FULL or LAST chunk: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b''
    return records


def offline_runs(wandb_dir):
    """{display name: [(run record, history rows), ...]} of every offline run under wandb_dir, oldest first."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(wandb_dir, 'wandb', 'offline-run-*', 'run-*.wandb'))):
        records = read_wandb_file(path)
        run = next(r.run for r in records if r.WhichOneof('record_type') == 'run')
        history = [{key: json.loads(item.value_json) for item in r.history.item
                    for key in [item.key or '.'.join(item.nested_key)] if not key.startswith('_')}
                   for r in records if r.WhichOneof('record_type') == 'history']
        runs.setdefault(run.display_name, []).append((run, history))
    return runs


def checkpoint_wandb_id(out_dir):
    import torch
    return torch.load(os.path.join(out_dir, 'ckpt.pt'), weights_only=False)['wandb_id']


@pytest.mark.slow
@needs_wandb
def test_history_is_the_metrics_rows_and_a_resumed_run_continues_it(tmp_path):
    out = tmp_path / 'run'
    first = train(out, '--max_iters=40', '--wandb_log=True', env=offline_env(tmp_path))
    [(run, history)] = offline_runs(tmp_path)['run']     # named after out_dir's folder
    assert history == metrics(out, drop=())              # every row, every key, at step = iter
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert run.project == 'burstyicl' and config['n_layer'] == 1 and config['out_dir'] == str(out)
    assert checkpoint_wandb_id(out) == run.run_id
    assert 'upload it with: wandb sync ' + str(tmp_path / 'wandb' / 'offline-run-') in first.stdout

    train(out, '--max_iters=60', '--init_from=resume', '--wandb_log=True', env=offline_env(tmp_path))
    [(_, _), (resumed, later)] = offline_runs(tmp_path)['run']
    assert resumed.run_id == run.run_id                  # the same wandb run, continued
    assert later == [r for r in metrics(out, drop=()) if r['iter'] > 40]
    assert checkpoint_wandb_id(out) == run.run_id


@pytest.mark.slow
@needs_wandb
def test_grid_cells_share_a_group_and_group_members_log_as_their_own_runs(tmp_path):
    tiny = ('--n_holdout_classes=20 --item_dim=8 --n_layer=1 --n_embd=16 --n_head=2 --batch_size=16 '
            '--n_eval_episodes=32 --warmup_iters=5 --log_interval=10 --eval_interval=10 --max_iters=20')
    grid_dir = tmp_path / 'my_grid'
    cmd = [sys.executable, os.path.join(ROOT, 'grid.py'), f'--grid_dir={grid_dir}', '--classes=few',
           '--weight_decays=0,1e-2', '--seeds=0', '--jobs=1', '--threads=1', '--group_size=2',
           f'--synthetic_args={tiny}', '--train_args=--wandb_log=True']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'MPLBACKEND': 'Agg', **offline_env(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'one group' in proc.stdout
    runs = offline_runs(tmp_path)
    assert sorted(runs) == ['few_wd0.01_s0', 'few_wd0_s0']
    for name, [(run, history)] in runs.items():
        assert run.run_group == 'my_grid'
        assert history == metrics(grid_dir / name, drop=())
        assert '--wandb_group=my_grid' in (grid_dir / name / 'cmd.txt').read_text()
    assert runs['few_wd0_s0'][0][0].run_id != runs['few_wd0.01_s0'][0][0].run_id


def test_grid_passes_a_wandb_group_only_to_cells_that_log(tmp_path, grid):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), f'--grid_dir={tmp_path / "g"}', '--seeds=0',
                           '--weight_decays=0', '--dry_run', '--train_args=--wandb_log=True'],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count('--wandb_group=g') == 2     # few and many, in the group named after the grid folder
    assert not grid.logs_to_wandb(['--seed=0', '--wandb_log=False']) and not grid.logs_to_wandb(['--seed=0'])
    assert grid.logs_to_wandb(['config/few.py', '--wandb_log=True'])
    assert not grid.logs_to_wandb(['--wandb_log=maybe'])   # train.py refuses it; the cell's log says so


def test_missing_wandb_is_one_config_error_before_out_dir(tmp_path):
    fake = tmp_path / 'site' / 'wandb'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text("raise ImportError('No module named wandb')\n")   # as if not installed
    env = {'PYTHONPATH': str(tmp_path / 'site')}
    proc = train(tmp_path / 'run', '--wandb_log=True', check=False, env=env)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip() == ('config error: wandb_log=True but the wandb package is not installed: '
                                   'pip install wandb (or --wandb_log=False)')
    assert not (tmp_path / 'run').exists()


def test_offline_unless_there_is_an_api_key(tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path))
    assert not logged_in({})
    assert logged_in({'WANDB_API_KEY': 'x' * 40})
    (tmp_path / '.netrc').write_text('machine api.wandb.ai\n  login user\n  password secret\n')
    (tmp_path / '.netrc').chmod(0o600)
    assert logged_in({})
    assert not logged_in({'WANDB_BASE_URL': 'https://wandb.example.org'})
