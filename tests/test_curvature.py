"""The curvature edit (curvature.py and its --edit CLI): K-FAC factors, kept set and rebuilt weight against a direct
computation on a small Linear, rho = 1 as the identity, determinism, bad spellings, the CLI's json."""
import itertools
import json
import os
import runpy
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import EPS64, ROOT, scaled_error
from checkpoint import save_checkpoint, saved_config, train_defaults
from curvature import (curvature_sequences, curvature_sweep, edit_weight, edited, eigenbasis, kept_mask, kfac_factors,
                       parse_edit, resolve_sets, training_batches)
from data import build_dataset
from eval import load_run
from model import build_model

TINY = dict(n_train_classes=40, n_holdout_classes=10, n_labels=16, item_dim=8, n_layer=2, n_embd=8, n_head=2,
            n_eval_episodes=64, batch_size=16)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """A saved run at initialisation (no training: the edit's algebra does not care), loaded as eval.py loads one."""
    out = tmp_path_factory.mktemp('curv')
    config = saved_config({**train_defaults(), **TINY, 'out_dir': str(out)})
    torch.manual_seed(0)
    model = build_model(config, build_dataset(config))
    save_checkpoint(str(out), {'model': model.state_dict(), 'iter_num': 0, 'config': config})
    return out


def direct_factors(model, items, labels, name, seed, positions='expand'):
    """A and G of one Linear by hand: record its input and the gradient at its output per sequence, sample each
    query label from the softmax with the same generator, then 'expand': A = mean over sequences and positions of
    a a^T, G = mean over sequences of the sum over positions of g g^T; 'reduce': the outer products of each
    sequence's position-mean of a and position-sum of g, averaged over sequences."""
    module = dict(model.named_modules())[name]
    store = {}

    def hook(m, args, out):
        store['a'] = args[0].detach()
        out.retain_grad()
        store['out'] = out
    handle = module.register_forward_hook(hook)
    model.eval()
    logits = model(items, labels)['logits']
    handle.remove()
    y = torch.multinomial(logits.softmax(-1), 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)
    F.cross_entropy(logits, y, reduction='sum').backward()
    B = labels.shape[0]
    a = store['a'].double().reshape(B, -1, store['a'].shape[-1])
    g = store['out'].grad.double().reshape(B, -1, store['out'].shape[-1])
    if positions == 'expand':
        A = sum(a[n, t][:, None] * a[n, t][None] for n in range(B) for t in range(a.shape[1])) / (B * a.shape[1])
        G = sum(g[n, t][:, None] * g[n, t][None] for n in range(B) for t in range(g.shape[1])) / B
    else:
        A = sum(a[n].mean(0)[:, None] * a[n].mean(0)[None] for n in range(B)) / B
        G = sum(g[n].sum(0)[:, None] * g[n].sum(0)[None] for n in range(B)) / B
    model.zero_grad(set_to_none=True)
    return A, G


def test_edit_matches_a_direct_computation_on_a_small_linear(run_dir):
    model, config, dataset, _ = load_run(str(run_dir))
    seqs = curvature_sequences(dataset, config, 24)
    name = 'blocks.0.mlp.0'   # 8 -> 32: 256 components
    A, G = direct_factors(model, seqs.items, seqs.labels, name, seed=3)
    A_k, G_k = kfac_factors(model, seqs, [name], batch_size=10, seed=3)[name]   # batches of 10, 10, 4
    # Error model: the recorded inputs a and output gradients g are float32, from a forward and backward whose sums
    # another batch size may order otherwise (MKL and oneDNN block by it): each dot product of <= 32 terms is off by
    # <= 32 roundings, through <= 6 such ops deep; A = E[a a^T] takes that from both sides, and every |A_ij| and its
    # error is bounded by max_i A_ii. So A and G agree within 2 * 6 * 32 roundings of their largest entry.
    bound = 2 * 6 * 32
    assert scaled_error(A_k, A) <= bound and scaled_error(G_k, G) <= bound, (scaled_error(A_k, A), scaled_error(G_k, G))
    first_20 = direct_factors(model, seqs.items[:20], seqs.labels[:20], name, seed=3)   # the bound sees a real error:
    assert scaled_error(first_20[0], A) > 10 * bound                                  # one batch of 4 of 24 dropped
    for other in ('blocks.1.attn.qkv', 'head'):   # all positions; the last block's query only, through the head
        for positions in ('expand', 'reduce'):
            want = direct_factors(model, seqs.items, seqs.labels, other, 3, positions)
            got = kfac_factors(model, seqs, [other], seed=3, positions=positions)[other]
            assert all(scaled_error(x, y) <= bound for x, y in zip(got, want)), (other, positions)
    lam_A, U_A = np.linalg.eigh(A.numpy())
    lam_G, U_G = np.linalg.eigh(G.numpy())
    W = dict(model.named_modules())[name].weight.detach().double().numpy()
    pairs = sorted(itertools.product(range(len(lam_G)), range(len(lam_A))),
                   key=lambda p: -max(lam_G[p[0]], 0) * max(lam_A[p[1]], 0))
    total = max(lam_G.clip(0).sum(), 0) * lam_A.clip(0).sum()
    ours = {name: (*eigenbasis(G), *eigenbasis(A))}
    for rho in (0.3, 0.9, 0.99):
        kept, mass = [], 0.0
        for i, j in pairs:                     # the smallest set of largest products reaching rho of the mass
            if mass >= rho * total:
                break
            kept.append((i, j))
            mass += max(lam_G[i], 0) * max(lam_A[j], 0)
        rebuilt = sum((U_G[:, i] @ W @ U_A[:, j]) * np.outer(U_G[:, i], U_A[:, j]) for i, j in kept)
        lam_g, U_g, lam_a, U_a = ours[name]
        mask = kept_mask(lam_g, lam_a, rho)
        assert mask.sum().item() == len(kept)
        # float64 both ways (torch's and numpy's eigh of the same factors): a sum of <= 256 rank-one terms against two
        # products of 32x32 and 8x8 bases, each off by <= 256 roundings of W's scale
        assert scaled_error(edit_weight(torch.from_numpy(W), U_g, U_a, mask), rebuilt, EPS64) <= 2 * 256
        with edited(model, ours, [name], rho) as stats:
            # the same, rounded once to the float32 weight: <= 1 rounding of its scale (half of one per element)
            assert scaled_error(dict(model.named_modules())[name].weight.detach(), rebuilt) <= 1
        assert stats[name]['mass_removed'] == pytest.approx(1 - mass / total, abs=1e-9)
        assert stats[name]['mass_removed'] <= 1 - rho + 1e-12
    assert np.array_equal(dict(model.named_modules())[name].weight.detach().double().numpy(), W)   # restored


def test_kept_mask_is_the_smallest_prefix_of_largest_products():
    g = torch.Generator().manual_seed(0)
    lam_G, lam_A = torch.rand(5, generator=g).double(), torch.rand(7, generator=g).double()
    product = torch.outer(lam_G, lam_A)
    for rho in (1e-3, 0.25, 0.5, 0.9):
        mask = kept_mask(lam_G, lam_A, rho)
        assert product[mask].sum() >= rho * product.sum()
        assert product[mask].min() >= product[~mask].max()                       # the largest ones
        assert product[mask].sum() - product[mask].min() < rho * product.sum()   # none of them spare
    assert kept_mask(lam_G, lam_A, 1.0).all() and kept_mask(torch.zeros(3), lam_A, 0.5).all()
    with pytest.raises(ValueError, match='rho=0'):
        kept_mask(lam_G, lam_A, 0)


def test_rho_one_is_the_identity_and_the_sweep_is_deterministic(run_dir):
    model, config, dataset, _ = load_run(str(run_dir))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rhos, sets = parse_edit('curvature:1,0.5@all,mlp+head')
    first = curvature_sweep(model, dataset, config, rhos, sets, n_sequences=64, batch_size=32)
    for s in first['sets']:
        one, half = s['rows']
        assert {k: one[k] for k in first['baseline']} == first['baseline']        # rho = 1: the unedited eval
        assert one['mass_removed'] == 0 and one['components_kept'] == 1
        assert 0 < half['mass_removed'] <= 0.5 and half['components_kept'] < 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # every weight restored
    again = curvature_sweep(model, dataset, config, rhos, sets, n_sequences=64, batch_size=32)
    assert json.dumps(again) == json.dumps(first)
    seqs = curvature_sequences(dataset, config, 32)
    names = resolve_sets(model, sets)[0][1]
    one, two = (kfac_factors(model, seqs, names, seed=1) for _ in range(2))
    assert all(torch.equal(one[n][0], two[n][0]) and torch.equal(one[n][1], two[n][1]) for n in names)
    assert names == ['encoder.proj', 'blocks.0.attn.qkv', 'blocks.0.attn.proj', 'blocks.0.mlp.0', 'blocks.0.mlp.2',
                     'blocks.1.attn.qkv', 'blocks.1.attn.proj', 'blocks.1.mlp.0', 'blocks.1.mlp.2', 'head']


@pytest.mark.parametrize('text, problem', [
    ('curvature:0.5@ffn', "unknown module 'ffn'"),
    ('curvature:1.5', r'rho=1.5 is outside \(0, 1\]'),
    ('curvature:0', r'rho=0 is outside \(0, 1\]'),
    ('curvature:abc', "rho 'abc' is not a number"),
    ('curvature:', 'no rho given'),
    ('svd:0.5', "must be 'curvature:<rho list>"),
])
def test_a_bad_spelling_is_a_value_error_naming_the_problem(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_edit(text)


def test_expected_labels_give_the_softmax_covariance_at_the_head(run_dir):
    """At the head the output gradient for label k is p - e_k, so the exact expectation over the softmax is
    G = mean over sequences of diag(p) - p p^T; training_batches draws the same batches every time."""
    model, config, dataset, _ = load_run(str(run_dir))
    seqs = curvature_sequences(dataset, config, 20)
    with torch.no_grad():
        p = model(seqs.items, seqs.labels)['logits'].double().softmax(-1)
    want = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    A, G = kfac_factors(model, seqs, ['head'], batch_size=8, labels='expected')['head']
    # p is float32 in kfac_factors (1 rounding), and enters G = sum_k p_k (p - e_k)(p - e_k)^T four times (twice in
    # the sqrt(p_k) weight, once in each factor), each entry bounded by max G: <= 8 roundings of G's largest entry
    assert scaled_error(G, want) <= 8
    batches = training_batches(dataset, config, 20, batch_size=8)
    assert all(torch.equal(x, y) for x, y in zip(kfac_factors(model, batches, ['head'], labels='expected')['head'],
                                                 kfac_factors(model, training_batches(dataset, config, 20, 8), ['head'],
                                                              labels='expected')['head']))
    with pytest.raises(ValueError, match='no sequences'):
        kfac_factors(model, [], ['head'])


def test_bad_factor_options_name_themselves(run_dir):
    model, config, dataset, _ = load_run(str(run_dir))
    seqs = curvature_sequences(dataset, config, 4)
    for kw, problem in ((dict(positions='sum'), 'positions'), (dict(labels='gold'), 'labels')):
        with pytest.raises(ValueError, match=problem):
            kfac_factors(model, seqs, ['head'], **kw)
    with pytest.raises(ValueError, match="'blocks.0.ln_1' is no Linear"):
        kfac_factors(model, seqs, ['blocks.0.ln_1'])


def test_parse_edit_reads_sets_and_defaults_to_the_mlp():
    assert parse_edit('curvature:1,0.9') == ([1.0, 0.9], [('mlp', ('mlp',))])
    assert parse_edit('curvature:0.5@head+mlp,attn') == ([0.5], [('head+mlp', ('mlp', 'head')), ('attn', ('attn',))])


def eval_cli(monkeypatch, capsys, *args):
    """curvature.py run as a script in this process (no second torch import): (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, 'argv', ['curvature.py', *args])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(os.path.join(ROOT, 'curvature.py'), run_name='__main__')
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def test_cli_writes_its_json_and_figure_and_refuses_a_bad_spelling(run_dir, tmp_path, monkeypatch, capsys):
    args = [f'--out_dir={run_dir}', '--curvature_sequences=64', f'--edit_out={tmp_path}']
    code, out, err = eval_cli(monkeypatch, capsys, *args, '--edit=curvature:1,0.5@mlp,head')
    assert code == 0, err[-2000:]
    result = json.load(open(tmp_path / 'curvature.json'))
    assert [s['name'] for s in result['sets']] == ['mlp', 'head'] and result['iter'] == 0
    assert [r['rho'] for r in result['sets'][1]['rows']] == [1.0, 0.5]
    for key in ('icl_acc', 'iwl_acc', 'train_dist_acc', 'attn_match_image', 'attn_match_label', 'mass_removed'):
        assert key in result['sets'][0]['rows'][1], key
    assert os.path.getsize(tmp_path / 'curvature.png') > 0 and 'head' in out
    code, out, err = eval_cli(monkeypatch, capsys, *args, '--edit=curvature:0.5@ffn')
    assert code == 1 and "unknown module 'ffn'" in err and 'Traceback' not in err
