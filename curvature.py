"""
A curvature map of a saved run: which weight components hold memorisation, by the loss curvature they carry.

Following Merullo et al. 2025 ("From memorization to reasoning in the spectrum of loss curvature"): the Fisher block
of a Linear weight W [out, in] is approximated by K-FAC as G (x) A, with A = E[a a^T] over the layer's inputs and
G = E[g g^T] over the gradients at its outputs, the loss taken on labels *sampled from the model's own prediction*
(the true Fisher, not the empirical one). Its eigenvectors are u_i v_j^T (u_i of G, v_j of A) with curvature
lambda_G,i * lambda_A,j; a weight's curvature mass is the sum of all of them, trace(G) * trace(A). The edit keeps,
per weight, the highest-curvature components until their cumulative curvature reaches a fraction rho of the
mass (the smallest such set, largest products first) and drops the rest:

    W' = U_G ((U_G^T W U_A) * mask) U_A^T

Shared mechanisms are used by many sequences and sit at high curvature; what one class alone needs (its
memorised label) averages out to low curvature, so a small mass share removed should take IWL and leave ICL.

In this model only the query position's loss is trained (step.query_loss), so per sequence one label is
sampled from the softmax at the query and that loss backpropagated; a and g are taken at every position a Linear
sees (the last block sees the query alone in its proj and MLP, as in training). Positions are weighted as K-FAC
for weights shared over a sequence does in its 'expand' form (Eschenhagen et al. 2023), the form the paper's code
uses for its per-token factors: A is the mean of a a^T over sequences and positions, G the mean over sequences of
the per-sequence sum over positions of g g^T. The alternative 'reduce' (A of the position-mean of a, G of the
position-sum of g) is an option. Either way a constant factor per weight does not change which components are
kept (the mass is taken per weight).

How many sequences, and which labels: the tail of the spectrum, where the edit cuts, converges slowly. At 1600
classes a class is the query of one sequence in 1600, so a few thousand sequences leave most low-curvature
directions to noise and cut far more memorisation than the converged estimate (Many at 12k, MLPs, rho = 0.99:
IWL 0.10 at 4096 sequences, 0.85 at 65536, 0.88 at 262144); the default is 65536. And a confident model's sampled
label is nearly always its answer, whose gradient is ~0, so one sample per sequence leaves G to rare draws: a
heavy-tailed estimate that for a saturated model (Few, training loss 2e-4) jumps with the number of sequences
(IWL at rho = 0.99: 1.00 at 4096, 0.13 at 65536). labels='expected' (the exact expectation over the softmax, one
backward per label) removes that noise (Few: 1.00 at 4096 and at 16384) at n_labels times the cost: the choice
for confident models and small label sets; the paper's single sample stays the default.

Left alone: biases, LayerNorms, the label embedding, and any Conv (the ResNet encoder has no Linear: 'encoder'
names the synthetic encoder's Linear only). Deviations from the paper's code, each said where it happens: the
eigenvalues are computed in float64 and clamped at 0 (rounding makes some slightly negative), rho = 1 is no edit
at all (W exactly), a weight with zero curvature mass is left unedited.

    python curvature.py --out_dir=out --edit=curvature:1,0.99,0.9,0.5@mlp,head,attn,all

The same edit as a training lever: train.py's curvature_every / curvature_rho / curvature_modules / curvature_start /
curvature_sequences (interventions.curvature_edit: one sampled label per sequence over fresh training sequences).
"""
import json
import os
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

MODULES = ('encoder', 'attn', 'mlp', 'head')   # what a module set may name ('all' = every Linear of the model)
POSITIONS = ('expand', 'reduce')
LABELS = ('sampled', 'expected', 'true')


def linear_names(model, modules):
    """Names of the nn.Linear modules whose weights belong to `modules` (a tuple of MODULES), in model order;
    ValueError when a module has no Linear (the ResNet encoder)."""
    found = [(name, model.module_of(f"{name}.weight")) for name, module in model.named_modules()
             if isinstance(module, nn.Linear)]
    empty = [m for m in modules if not any(part == m for _, part in found)]
    if empty:
        raise ValueError(f"modules: {empty[0]!r} has no Linear weight in this model (the ResNet encoder's are Convs)")
    return [name for name, part in found if part in modules]


def parse_edit(text):
    """'curvature:<rho list>[@<module sets>]' -> (rhos, [(set name, modules tuple), ...]). A module set joins
    MODULES with '+' ('mlp+head'); sets are separated by ','; 'all' is every Linear. Without '@': mlp (the
    paper edits MLP weights). ValueError naming the edit and the problem otherwise."""
    kind, sep, rest = text.partition(':')
    if kind != 'curvature' or not sep:
        raise ValueError(f"edit={text!r} must be 'curvature:<rho list>[@<module sets>]', "
                         f"e.g. 'curvature:1,0.9,0.5@mlp,head,mlp+head,all'")
    rho_text, _, set_text = rest.partition('@')
    rhos = []
    for r in [s.strip() for s in rho_text.split(',') if s.strip()]:
        try:
            rho = float(r)
        except ValueError:
            raise ValueError(f"edit={text!r}: rho {r!r} is not a number") from None
        if not 0 < rho <= 1:
            raise ValueError(f"edit={text!r}: rho={r} is outside (0, 1] (the fraction of curvature mass kept)")
        rhos.append(rho)
    if not rhos:
        raise ValueError(f"edit={text!r}: no rho given (a comma list in (0, 1], e.g. 1,0.9,0.5)")
    sets = []
    for name in [s.strip() for s in (set_text or 'mlp').split(',') if s.strip()]:
        if name == 'all':
            sets.append(('all', MODULES))
            continue
        parts = [p.strip() for p in name.split('+')]
        unknown = [p for p in parts if p not in MODULES]
        if unknown:
            raise ValueError(f"edit={text!r}: unknown module {unknown[0]!r}; modules: {', '.join(MODULES)} "
                             f"(joined by '+'), or 'all'")
        sets.append((name, tuple(m for m in MODULES if m in parts)))
    if not sets:
        raise ValueError(f"edit={text!r}: no module set after '@'")
    return rhos, sets


def resolve_sets(model, sets):
    """[(set name, [Linear names])]: 'all' is every Linear the model has (no error for a Conv encoder)."""
    present = {model.module_of(f"{n}.weight") for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return [(name, linear_names(model, tuple(m for m in modules if m in present) if name == 'all' else modules))
            for name, modules in sets]


def kfac_factors(model, episodes, names, batch_size=256, seed=0, positions='expand', labels='sampled'):
    """{name: (A [in, in], G [out, out])} in float64 for the named Linears, over `episodes` (an Episodes, taken
    batch_size at a time, or an iterable of (items, labels) batches: training_batches) in the model's eval mode.
    labels='sampled' draws each sequence's query label from the model's softmax with a generator seeded by `seed`
    (the paper's Monte Carlo Fisher); 'expected' takes the exact expectation over that softmax instead,
    sum_k p_k g_k g_k^T with one backward per label (n_labels times the cost: the limit of many samples per
    sequence, where one sample leaves a confident model's G to its few surprising draws); 'true' uses the
    episodes' labels (the empirical Fisher). positions: 'expand' or 'reduce' (the module docstring). No parameter
    gradient is made."""
    if positions not in POSITIONS:
        raise ValueError(f"positions={positions!r} must be one of {', '.join(POSITIONS)}")
    if labels not in LABELS:
        raise ValueError(f"labels={labels!r} must be one of {', '.join(LABELS)}")
    modules = dict(model.named_modules())
    missing = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if missing:
        raise ValueError(f"names: {missing[0]!r} is no Linear of this model")
    if hasattr(episodes, 'items'):
        episodes = [(episodes.items[i:i + batch_size], episodes.labels[i:i + batch_size])
                    for i in range(0, len(episodes), batch_size)]
    N = 0
    sums = {n: [0.0, 0.0] for n in names}
    seen = {}

    def recorder(name):
        def hook(module, args, out):
            if name in seen:
                raise RuntimeError(f"{name} ran twice in one forward: K-FAC here assumes one call per sequence batch")
            seen[name] = (args[0].detach(), out)
        return hook

    from data import make_generator   # looked up per call: the fake-CUDA tests stand a CPU one in for it
    generator = None
    was_training = model.training
    model.eval()
    hooks = [modules[n].register_forward_hook(recorder(n)) for n in names]
    try:
        for items, targets in episodes:
            B = targets.shape[0]
            N += B
            generator = generator or make_generator(targets.device).manual_seed(seed)
            seen.clear()
            with torch.enable_grad():
                logits = model(items, targets)['logits'].float()
                outs = [seen[n][1] for n in names]
                if labels == 'expected':   # d CE(k) / d logits = p - e_k, weighted by sqrt(p_k) so G sums p_k g g^T
                    p = logits.detach().softmax(-1)
                    eye = torch.eye(p.shape[1], device=p.device, dtype=p.dtype)
                    per_label = [torch.autograd.grad(logits, outs, (p - eye[k]) * p[:, k:k + 1].sqrt(),
                                                     retain_graph=True) for k in range(p.shape[1])]
                else:
                    if labels == 'sampled':
                        with torch.no_grad():
                            y = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
                    else:
                        y = targets[:, -1]
                    loss = F.cross_entropy(logits, y, reduction='sum')   # each sequence's gradient is its own
                    per_label = [torch.autograd.grad(loss, outs)]
            for i, n in enumerate(names):
                a = seen[n][0].double().reshape(B, -1, seen[n][0].shape[-1])   # [B, positions, in]
                sums[n][0] += (torch.einsum('bti,btj->ij', a, a) / a.shape[1] if positions == 'expand'
                               else a.mean(1).T @ a.mean(1))
                for grads in per_label:
                    g = grads[i].double().reshape(B, -1, grads[i].shape[-1])    # [B, positions, out]
                    sums[n][1] += (torch.einsum('bti,btj->ij', g, g) if positions == 'expand'
                                   else g.sum(1).T @ g.sum(1))
    finally:
        for h in hooks:
            h.remove()
        seen.clear()
        model.train(was_training)
    if N == 0:
        raise ValueError("episodes: no sequences to take the K-FAC factors over")
    return {n: (sums[n][0] / N, sums[n][1] / N) for n in names}


def eigenbasis(factor):
    """(eigenvalues descending, clamped at 0; eigenvectors as columns), in float64 on the CPU (edited() moves
    the vectors to the weight's device)."""
    values, vectors = torch.linalg.eigh(factor.double().cpu())
    order = torch.argsort(values, descending=True, stable=True)
    return values[order].clamp_min(0), vectors[:, order]


def kept_mask(lam_G, lam_A, rho):
    """[len(lam_G), len(lam_A)] bool: the components (i, j) of largest curvature lam_G[i] * lam_A[j], taken in
    descending order until their cumulative sum first reaches rho of the total (the paper's smallest set that
    carries rho of the mass). rho = 1 or a zero total keeps everything."""
    if not 0 < rho <= 1:
        raise ValueError(f"rho={rho} must be in (0, 1]")
    product = torch.outer(lam_G.double(), lam_A.double())
    total = product.sum()
    if rho == 1 or total <= 0:
        return torch.ones_like(product, dtype=torch.bool)
    values, order = torch.sort(product.flatten(), descending=True, stable=True)
    cumulative = torch.cumsum(values, 0)
    k = int(torch.searchsorted(cumulative, rho * total).item()) + 1      # first prefix whose sum >= rho * total
    keep = torch.zeros(product.numel(), dtype=torch.bool)
    keep[order[:min(k, product.numel())]] = True
    return keep.view_as(product)


def edit_weight(W, U_G, U_A, mask):
    """U_G ((U_G^T W U_A) * mask) U_A^T, computed in float64 and returned in W's dtype."""
    W64 = W.double()
    C = U_G.T @ W64 @ U_A
    return (U_G @ (C * mask) @ U_A.T).to(W.dtype)


def curvature_bases(factors):
    """{name: (lam_G, U_G, lam_A, U_A)} from kfac_factors' {name: (A, G)}."""
    out = {}
    for name, (A, G) in factors.items():
        lam_A, U_A = eigenbasis(A)
        lam_G, U_G = eigenbasis(G)
        out[name] = (lam_G, U_G, lam_A, U_A)
    return out


def edited_weights(model, bases, names, rho):
    """({name: the named Linear's weight after its curvature edit at rho}, {name: {'mass_removed',
    'components_kept'}} as shares of the weight's total), the model untouched. At rho = 1 no weight is returned: W
    exactly (the projection onto the full basis is W only to rounding)."""
    modules = dict(model.named_modules())
    weights, stats = {}, {}
    with torch.no_grad():
        for name in names:
            lam_G, U_G, lam_A, U_A = bases[name]
            mask = kept_mask(lam_G, lam_A, rho)
            product = torch.outer(lam_G, lam_A)
            total = product.sum().item()
            stats[name] = {'mass_removed': (product[~mask].sum().item() / total) if total > 0 else 0.0,
                           'components_kept': mask.float().mean().item()}
            if rho < 1:
                weight = modules[name].weight
                weights[name] = edit_weight(weight, U_G.to(weight.device), U_A.to(weight.device),
                                            mask.to(weight.device))
    return weights, stats


@contextmanager
def edited(model, bases, names, rho):
    """The model with each named Linear's weight replaced by its curvature edit at rho (biases left alone),
    restored on exit; yields {name: {'mass_removed', 'components_kept'}} (shares of the weight's total)."""
    modules = dict(model.named_modules())
    weights, stats = edited_weights(model, bases, names, rho)
    originals = {}
    try:
        with torch.no_grad():
            for name, w in weights.items():
                originals[name] = modules[name].weight.detach().clone()
                modules[name].weight.copy_(w)
        yield stats
    finally:
        with torch.no_grad():
            for name, w in originals.items():
                modules[name].weight.copy_(w)


def training_sampler(dataset, config, seed_offset=6000):
    """The run's own training sampler (training-only rules such as label swap included: the distribution the
    weights were fit on) on the CPU, seeded apart from training, probes and ablation means."""
    from data import EpisodeSampler
    return EpisodeSampler.from_config(dataset.train, dataset.class_labels.cpu(), config, 'cpu',
                                      seed=config['data_seed'] + seed_offset, n_labels=dataset.n_labels)


def curvature_sequences(dataset, config, n):
    """n training sequences at once (training_sampler) as Episodes: for tests and small n."""
    from data import Episodes
    return Episodes(*training_sampler(dataset, config).sample(n))


def training_batches(dataset, config, n, batch_size=256, device='cpu'):
    """n training sequences (training_sampler), drawn and moved batch_size at a time, so n can be large (images)."""
    sampler = training_sampler(dataset, config)
    for start in range(0, n, batch_size):
        items, labels, _ = sampler.sample(min(batch_size, n - start))
        yield items.to(device), labels.to(device)


def _summary(metrics):
    keep = ('icl_acc', 'iwl_acc', 'train_dist_acc', 'conflict_icl', 'conflict_iwl', 'attn_match_image',
            'attn_match_label', 'attn_match_image_by_layer', 'attn_match_label_by_layer')
    return {k: metrics[k] for k in keep if k in metrics}


def curvature_sweep(model, dataset, config, rhos, sets, n_sequences=65536, seed=0, positions='expand',
                    labels='sampled', batch_size=256, device='cpu'):
    """The map: K-FAC factors once for every Linear the sets name, then per set and rho the edited model's eval
    metrics (ICL, IWL, training-distribution accuracy, conflict shares, attention masses) and the curvature mass
    removed per weight (and its mean over the set's weights). A plain dict, ready for json."""
    from data import build_eval_episodes, build_probe_episodes, probes_to
    from eval import evaluate
    if n_sequences < 1:
        raise ValueError(f"curvature_sequences={n_sequences} must be >= 1")
    resolved = resolve_sets(model, sets)
    names = [n for n, _ in model.named_modules() if any(n in s for _, s in resolved)]
    icl, iwl = (e.to(device) for e in build_eval_episodes(dataset, config))
    probes = probes_to(build_probe_episodes(dataset, config), device)
    batches = training_batches(dataset, config, n_sequences, batch_size, device)
    factors = kfac_factors(model, batches, names, batch_size, seed, positions, labels)
    bases = curvature_bases(factors)

    def run_eval():
        return _summary(evaluate(model, icl, iwl, probes=probes))

    result = {'baseline': run_eval(), 'n_sequences': n_sequences, 'seed': seed, 'positions': positions,
              'labels': labels, 'iwl_chance': 1 / dataset.n_labels, 'icl_chance': 1 / icl.ways,
              'weights': {n: {'shape': list(dict(model.named_modules())[n].weight.shape),
                              'mass': (bases[n][0].sum() * bases[n][2].sum()).item()} for n in names},
              'sets': []}
    for set_name, set_names in resolved:
        rows = []
        for rho in rhos:
            with edited(model, bases, set_names, rho) as stats:
                metrics = run_eval()
            removed = [s['mass_removed'] for s in stats.values()]
            kept = [s['components_kept'] for s in stats.values()]
            rows.append({'rho': rho, 'mass_removed': sum(removed) / len(removed),
                         'components_kept': sum(kept) / len(kept), **metrics, 'per_weight': stats})
        result['sets'].append({'name': set_name, 'weights': set_names, 'rows': rows})
    return result


def plot_sweep(result, path):
    """ICL and IWL against the curvature mass removed (log x), one colour per module set; the unedited model's
    values as thin horizontal lines, chance dotted."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, key, label, chance in ((axes[0], 'icl_acc', 'ICL (held-out classes)', result['icl_chance']),
                                   (axes[1], 'iwl_acc', 'IWL (seen classes)', result['iwl_chance'])):
        for k, s in enumerate(result['sets']):
            rows = [r for r in s['rows'] if r['mass_removed'] > 0]
            ax.plot([r['mass_removed'] for r in rows], [r[key] for r in rows], 'o-', color=f'C{k}', label=s['name'])
        ax.axhline(result['baseline'][key], color='k', lw=0.8, label='unedited')
        ax.axhline(chance, color='gray', ls=':', label='chance')
        ax.set_xscale('log')
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel('curvature mass removed (mean share per weight)')
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(result.get('title', ''), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_cli(out_dir, ckpt_name, device, edit, n_sequences, edit_out='', seed=0, positions='expand', labels='sampled'):
    """python curvature.py --edit: the sweep for a saved run, printed as a table and written to <edit_out or out_dir>/
    curvature.json and curvature.png. Returns the json's dict."""
    from eval import load_run
    rhos, sets = parse_edit(edit)
    model, config, dataset, checkpoint = load_run(out_dir, ckpt_name, device)
    result = curvature_sweep(model, dataset, config, rhos, sets, n_sequences, seed, positions, labels, device=device)
    result = {'out_dir': out_dir, 'ckpt': ckpt_name, 'iter': checkpoint['iter_num'], 'edit': edit,
              'title': f"{out_dir} ({ckpt_name}, iter {checkpoint['iter_num']})", **result}
    b = result['baseline']
    print(f"{result['title']}: curvature edit, {n_sequences} training sequences, labels {labels}, {positions}")
    print(f"{'set':>10} | {'rho':>6} | {'removed':>8} | {'kept':>6} | {'ICL':>5} | {'IWL':>5} | {'train':>5} | "
          f"attn lbl")
    print(f"{'none':>10} | {1:>6g} | {0:>8.2g} | {1:>6.3f} | {b['icl_acc']:.3f} | {b['iwl_acc']:.3f} | "
          f"{b['train_dist_acc']:.3f} | {b['attn_match_label']:.2f}")
    for s in result['sets']:
        for r in s['rows']:
            print(f"{s['name']:>10} | {r['rho']:>6g} | {r['mass_removed']:>8.2g} | {r['components_kept']:>6.3f} | "
                  f"{r['icl_acc']:.3f} | {r['iwl_acc']:.3f} | {r['train_dist_acc']:.3f} | {r['attn_match_label']:.2f}")
    folder = edit_out or out_dir
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'curvature.json'), 'w') as f:
        json.dump(result, f, indent=1)
    plot_sweep(result, os.path.join(folder, 'curvature.png'))
    print(f"wrote {os.path.join(folder, 'curvature.json')} and curvature.png")
    return result


if __name__ == '__main__':
    import sys
    out_dir = 'out'
    ckpt_name = 'ckpt.pt'
    device = 'cpu'
    edit = ''          # 'curvature:<rho list>[@<module sets>]': the K-FAC curvature edit sweep
    curvature_sequences = 65536  # training sequences for the K-FAC factors (fewer cut too much)
    curvature_labels = 'sampled'  # 'sampled' (the paper's), 'expected' (exact over the softmax) or 'true'
    edit_out = ''      # folder for curvature.json / curvature.png ('' = out_dir)
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    try:
        run_cli(out_dir, ckpt_name, device, edit, curvature_sequences, edit_out, labels=curvature_labels)
        sys.exit(0)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
