"""bench.py: its per-sequence comparison sampler follows the project's sequence rules (so the speed
ratio compares like with like), and a tiny --quick run prints the table and one JSON line.
No timing is asserted."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from data import ClassBank, EpisodeSampler


@pytest.fixture(scope='module')
def bench():
    """bench.py as a module (its globals and configurator run; no section runs without __main__)."""
    argv = sys.argv
    sys.argv = ['bench.py', '--sections=']
    try:
        spec = importlib.util.spec_from_file_location('bench_under_test', os.path.join(ROOT, 'bench.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.argv = argv
    return module


def identity_bank(n_classes, n_exemplars, offset=0):
    """Vector items that spell out (class, exemplar), so a sequence can be checked item by item."""
    c, e = torch.meshgrid(torch.arange(n_classes), torch.arange(n_exemplars), indexing='ij')
    return ClassBank(torch.stack([c + offset, e], -1).float())


def query_count(classes):
    """How often the query's class appears in the context, per sequence."""
    return (classes[:, :-1] == classes[:, -1:]).sum(1)


@pytest.mark.parametrize('p_bursty', [1.0, 0.9, 0.0])
def test_comparison_sampler_follows_sequence_rules(bench, p_bursty):
    train, holdout = identity_bank(30, 12), identity_bank(5, 12, offset=1000)
    labels = torch.arange(30) % 7
    reference = bench.PerSequenceSampler(train, labels, p_bursty=p_bursty, seed=1)
    items, item_labels, classes = reference.sample(600)
    assert items.shape == (600, 9, 2) and item_labels.shape == (600, 9) and classes.shape == (600, 9)
    # items, classes and labels agree; no holdout item ever appears
    assert torch.equal(items[..., 0].long(), classes)
    assert torch.equal(item_labels, labels[classes])
    holdout_items = {tuple(x) for x in holdout.exemplars.reshape(-1, 2).tolist()}
    assert items[..., 0].max() < 30 and not holdout_items & {tuple(x) for x in items.reshape(-1, 2).tolist()}
    # exemplars distinct within each sequence
    keys = classes * 100 + items[..., 1].long()
    assert all(len(set(row.tolist())) == 9 for row in keys)
    counts = query_count(classes)
    if p_bursty == 1.0:
        assert (counts >= 3).all()
        # the second bursty class: some other class also appears >= 3 times in the context
        for row, q in zip(classes[:, :-1], classes[:, -1]):
            others = row[row != q]
            assert torch.bincount(others).max() >= 3
    # the same share of 'query class >= 3 times' as the project's sampler (fair comparison)
    project = EpisodeSampler(train, labels, p_bursty=p_bursty, seed=1)
    project_counts = query_count(project.sample(600)[2])
    assert abs((counts >= 3).float().mean() - (project_counts >= 3).float().mean()) < 0.06
    assert abs(counts.float().mean() - project_counts.float().mean()) < 0.25


def run_bench(*args, timeout=120):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'bench.py'), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'})


@pytest.mark.slow
def test_quick_run_prints_table_and_json(tmp_path):
    json_out = tmp_path / 'bench.json'
    proc = run_bench('--quick', '--device=cpu', '--sections=sampler,train', '--image_classes=10',
                     '--image_size=28', '--sampler_batches=8', '--min_time=0.05', '--cells=default',
                     '--train_combos=eager-fp32', '--warmup_steps=1', '--train_steps=2', f'--json_out={json_out}')
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith('section') and 'value' in line for line in lines)  # the table header
    result = json.loads(lines[-1])
    assert result['quick'] is True and result['device'] == 'cpu'
    assert result['sampler']['images/B8/episode_sampler_cpu'] > 0
    assert result['sampler']['vectors/B8/per_sequence_cpu'] > 0
    assert result['train']['default/eager-fp32']['ms_per_step'] > 0
    assert json.loads(json_out.read_text()) == result


@pytest.mark.slow
def test_unknown_section_is_a_clear_error():
    proc = run_bench('--sections=sampler,bogus', timeout=60)
    assert proc.returncode == 2
    assert 'bogus' in proc.stderr and 'sections' in proc.stderr
