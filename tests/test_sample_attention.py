"""sample_attention.py: matching positions, heatmap/summary files, and masses equal to train.py's log."""
import json
import os
import subprocess
import sys

import pytest
import torch

from checkpoint import read_metrics
from conftest import ROOT, scaled_error
from data import build_eval_episodes
from eval import attention_masses, load_run, run_episodes
from sample_attention import (draw_item, fixed_episodes, label_reads_image, matching_positions, measure,
                              path_heads, plot_episode)

TINY = ['--n_train_classes=200', '--n_holdout_classes=20', '--n_labels=32', '--item_dim=8', '--n_layer=2',
        '--n_embd=16', '--n_head=2', '--batch_size=16', '--n_eval_episodes=64', '--max_iters=40',
        '--eval_interval=20', '--keep_checkpoints=20,40']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}


def script(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *args], capture_output=True, text=True,
                          timeout=180, cwd=ROOT, env=ENV)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('attn_run')
    proc = script('train.py', f'--out_dir={out}', *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return str(out)


def test_matching_positions_on_crafted_classes():
    # T=8: query class 5 sits at context slots 0, 2, 3, 6 -> image tokens 0, 4, 6, 12, labels 1, 5, 7, 13
    classes = torch.tensor([[5, 3, 5, 5, 3, 3, 5, 3, 5],
                            [1, 2, 3, 4, 5, 6, 7, 8, 9],     # query class absent from the context
                            [7, 7, 7, 7, 7, 7, 7, 7, 7]])    # every slot matches
    image_pos, label_pos = matching_positions(classes, 8)
    assert image_pos.shape == label_pos.shape == (3, 17)
    assert image_pos[0].nonzero().flatten().tolist() == [0, 4, 6, 12]
    assert label_pos[0].nonzero().flatten().tolist() == [1, 5, 7, 13]
    assert not image_pos[1].any() and not label_pos[1].any()
    assert image_pos[2].nonzero().flatten().tolist() == list(range(0, 16, 2))
    assert label_pos[2].nonzero().flatten().tolist() == list(range(1, 16, 2))
    assert not image_pos[:, 16].any() and not label_pos[:, 16].any()   # the query itself is never marked
    # T=2: x0 y0 x1 y1 xq, query matches slot 1 only
    image_pos, label_pos = matching_positions(torch.tensor([[0, 4, 4]]), 2)
    assert image_pos[0].tolist() == [False, False, True, False, False]
    assert label_pos[0].tolist() == [False, False, False, True, False]


def test_highlighted_positions_sum_to_eval_attention_masses():
    """The positions the heatmaps highlight are exactly the ones eval.attention_masses sums over."""
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(3, (10, 9), generator=g)
    attentions = [torch.randn(10, 2, 17, 17, generator=g).softmax(-1) for _ in range(3)]
    image_pos, label_pos = matching_positions(classes, 8)
    image_mass, label_mass = attention_masses(attentions, classes)
    for layer, a in enumerate(attentions):
        q = a[:, :, 16]
        # the same sums of 17 positions and a mean of 10 episodes, perhaps in another order: <= 27 roundings of a
        # mass (a share of attention: scale 1)
        assert scaled_error((q * image_pos[:, None]).sum(-1).mean(0), image_mass[layer], scale=1.0) <= 27
        assert scaled_error((q * label_pos[:, None]).sum(-1).mean(0), label_mass[layer], scale=1.0) <= 27
    # and the path picks the argmax head
    image_mass[1, 0], label_mass[2, 1] = 5.0, 6.0
    heads = path_heads(image_mass, label_mass, label_reads_image(attentions, 8))
    assert heads['image_matching'] == (1, 0, 5.0) and heads['label_copying'] == (2, 1, 6.0)


def test_label_reads_image_on_a_crafted_previous_token_head():
    T = 8
    prev = torch.zeros(1, 1, 17, 17)
    prev[0, 0, torch.arange(17), (torch.arange(17) - 1).clamp(min=0)] = 1.0   # every token reads the one before
    assert label_reads_image([prev], T).item() == 1.0
    assert label_reads_image([torch.eye(17)[None, None]], T).item() == 0.0


@pytest.mark.slow
def test_masses_over_the_full_icl_set_equal_metrics_jsonl(run_dir):
    rows = {r['iter']: r for r in read_metrics(run_dir)}
    assert sorted(rows) == [0, 20, 40]
    for it in (20, 40):
        model, config, dataset, checkpoint = load_run(run_dir, f'ckpt_{it}.pt')
        assert checkpoint['iter_num'] == it
        icl, iwl = build_eval_episodes(dataset, config)
        m = measure(model, icl, iwl, config)
        for key in ('icl_acc', 'attn_match_image', 'attn_match_label', 'attn_match_image_by_layer',
                    'attn_match_label_by_layer'):
            assert m[key] == rows[it][key], (it, key, m[key], rows[it][key])
        assert m['image_mass'].shape == (2, 2)
        assert m['image_mass'].mean(1).tolist() == rows[it]['attn_match_image_by_layer']


@pytest.mark.slow
def test_fixed_episodes_are_the_eval_episodes_and_attention_rows_sum_to_one(run_dir):
    model, config, dataset, _ = load_run(run_dir, 'ckpt_40.pt')
    icl, _ = build_eval_episodes(dataset, config)
    episodes = fixed_episodes(dataset, config, 3, 2, seed=7)
    again = fixed_episodes(dataset, config, 3, 2, seed=7)
    assert [n for n, _ in episodes] == ['icl00', 'icl01', 'icl02', 'bursty00', 'bursty01']
    for i in range(3):
        assert torch.equal(episodes[i][1].items[0], icl.items[i])
        assert torch.equal(episodes[i][1].classes[0], icl.classes[i])
    for (_, a), (_, b) in zip(episodes, again):
        assert torch.equal(a.items, b.items) and torch.equal(a.labels, b.labels)
    for _, ep in episodes[3:]:   # training-style bursty: the query's class appears bursty_shots times
        assert (ep.classes[0, :8] == ep.classes[0, 8]).sum() >= config['bursty_shots']
        assert torch.equal(ep.labels[0], dataset.class_labels[ep.classes[0]])
    for _, ep in episodes:
        _, attentions = run_episodes(model, ep, return_attention=True)
        for a in attentions:
            assert scaled_error(a.sum(-1), torch.ones(1, 2, 17)) <= 2 * 17   # softmax's sum and division, 17 keys
            assert (a.triu(1) == 0).all()   # causal
    with pytest.raises(ValueError, match='n_icl'):
        fixed_episodes(dataset, config, 65, 0, seed=0)


@pytest.mark.slow
def test_script_writes_heatmaps_summary_and_logged_masses(run_dir):
    out = os.path.join(run_dir, 'attn')
    proc = script('sample_attention.py', f'--out_dir={run_dir}', '--ckpt_iter=20', '--n_icl=2', '--n_bursty=1',
                  f'--attention_dir={out}', '--layer=0')
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ('iter20_summary.png', 'iter20_icl00_query.png', 'iter20_icl01_query.png',
                 'iter20_bursty00_query.png', 'iter20_icl00_layer0.png', 'iter20_bursty00_layer0.png',
                 'over_training.png', 'heads_over_training.png'):
        path = os.path.join(out, name)
        assert os.path.getsize(path) > 5000, name
        with open(path, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n', name
    report = json.load(open(os.path.join(out, 'iter20_masses.json')))
    row = {r['iter']: r for r in read_metrics(run_dir)}[20]
    assert report['max_abs_diff_vs_metrics_jsonl'] == 0
    assert report['attn_match_image'] == row['attn_match_image']
    assert report['attn_match_label'] == row['attn_match_label']
    assert sorted(report['over_training']) == ['20', '40']
    assert report['over_training']['40']['attn_match_label'] == \
        {r['iter']: r for r in read_metrics(run_dir)}[40]['attn_match_label']
    assert f"attn_match_image {row['attn_match_image']:.4f}" in proc.stdout
    assert '-> equal' in proc.stdout
    assert 'query copies the matching label' in proc.stdout


@pytest.mark.slow
def test_script_errors_name_the_key(run_dir):
    proc = script('sample_attention.py', f'--out_dir={run_dir}', '--ckpt_iter=999')
    assert proc.returncode == 1
    assert 'ckpt_999.pt' in proc.stderr and 'ckpt_20.pt' in proc.stderr
    proc = script('sample_attention.py', f'--out_dir={run_dir}', '--layer=2', '--full_eval=False')
    assert proc.returncode == 1 and 'layer=2' in proc.stderr


def test_strip_draws_image_items(tmp_path):
    """Omniglot items are [H, W] uint8 images: the strip shows them as pictures."""
    g = torch.Generator().manual_seed(0)
    items = torch.randint(0, 256, (9, 14, 14), generator=g, dtype=torch.uint8)
    classes = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 1])
    labels = classes.clone()
    rows = torch.rand(2, 3, 17, generator=g).softmax(-1)
    path = tmp_path / 'img.png'
    plot_episode(str(path), items, labels, classes, rows, 8, 'images')
    assert path.stat().st_size > 5000
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match='cannot draw'):
        draw_item(ax, torch.zeros(2, 2, 2, 2))
    plt.close(fig)
