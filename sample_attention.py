"""
Attention diagnostics for a trained run: where does the query look, and which heads carry the
query -> matching image -> its label path that in-context learning needs?

    python sample_attention.py --out_dir=out                    # ckpt.pt, PNGs into out/attention/
    python sample_attention.py --out_dir=out --ckpt_iter=2000   # ckpt_2000.pt (train.py keep_checkpoints)
    python sample_attention.py --out_dir=out --layer=0 --track=''

It rebuilds the run's data from the checkpoint's config (data.build_dataset), takes the first
n_icl of the ICL eval episodes train.py evaluates (held-out classes, fixed by data_seed, so the
same in every run and grid cell) plus n_bursty training-style bursty episodes (fixed seed), and
writes, per episode, the context strip with the query and a layer x head grid of the query's
attention (matching images/labels highlighted), and the full attention matrices of one layer.
Over the full ICL eval set it prints and plots the attention mass on matching images and labels,
computed by eval.evaluate / eval.attention_masses, so the numbers equal the metrics.jsonl row of
that checkpoint. With several ckpt_<iter>.pt files and/or metrics.jsonl it also plots how the
masses evolve beside icl_acc: emergence and transience of the circuit.
"""
import glob
import json
import os
import re
import sys
from contextlib import nullcontext

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from checkpoint import load_checkpoint, read_metrics  # noqa: E402
from data import EpisodeSampler, Episodes, build_eval_episodes  # noqa: E402
from eval import attention_masses, evaluate, load_run, run_episodes  # noqa: E402

# colours shared by every figure: matching image / matching label / other image / other label / query
MATCH_IMAGE, MATCH_LABEL = '#1f5fb4', '#d62728'
OTHER_IMAGE, OTHER_LABEL, QUERY = '#bcd3ec', '#f5c4c0', '#888888'


# ----------------------------------------------------------------------------------------------
# computation (no plotting)

def matching_positions(classes, context_len):
    """Which token positions hold the query's class and that class's labels.
    classes: [N, T+1] (query last). Tokens are x0 y0 ... x_{T-1} y_{T-1} xq, so context item i is
    token 2i and its label token 2i+1. Returns (image_pos, label_pos), bool [N, 2T+1]; the query
    token itself is never marked. This is the same match eval.attention_masses sums over."""
    T = context_len
    match = classes[:, :T] == classes[:, T:T + 1]                      # [N, T]
    image_pos = torch.zeros(classes.shape[0], 2 * T + 1, dtype=torch.bool, device=classes.device)
    label_pos = torch.zeros_like(image_pos)
    image_pos[:, 0:2 * T:2] = match
    label_pos[:, 1:2 * T:2] = match
    return image_pos, label_pos


def label_reads_image(attentions, context_len):
    """[n_layer, n_head]: mean attention each context label token y_i pays to its own item x_i
    (token 2i+1 -> 2i): the 'previous token' step that lets a later head find a label by its image."""
    T = context_len
    i = torch.arange(T)
    return torch.stack([a[:, :, 2 * i + 1, 2 * i].float().mean((0, 2)) for a in attentions])


def top_head(mass):
    """(layer, head, value) of the largest entry of an [n_layer, n_head] tensor."""
    flat = int(mass.argmax())
    layer, head = divmod(flat, mass.shape[1])
    return layer, head, float(mass[layer, head])


def path_heads(image_mass, label_mass, label_image):
    """Which layer/head carries each step of the query -> image -> label path."""
    return {'label_reads_image': top_head(label_image),
            'image_matching': top_head(image_mass),
            'label_copying': top_head(label_mass)}


def measure(model, icl, iwl, config, autocast=None):
    """The metrics train.py logs (eval.evaluate, same episodes and batch size, so the same numbers)
    plus their per-head breakdown (eval.attention_masses on the same forward pass) for the ICL set."""
    metrics, attentions = evaluate(model, icl, iwl, autocast=autocast,
                                   keep_attention=True)
    image_mass, label_mass = attention_masses(attentions, icl.classes)
    return {**metrics, 'image_mass': image_mass.cpu(), 'label_mass': label_mass.cpu(),
            'label_image': label_reads_image(attentions, config['context_len']).cpu()}


def fixed_episodes(dataset, config, n_icl, n_bursty, seed, icl=None):
    """[(name, Episodes)]: the first n_icl ICL eval episodes (exactly those train.py evaluates; pass
    `icl` if already built) and n_bursty training-style bursty episodes (every one bursty, without the training-only
    rules) from a CPU sampler seeded with `seed`, so they are the same whatever device the model runs on."""
    if icl is None:
        icl, _ = build_eval_episodes(dataset, config)
    if not 0 <= n_icl <= len(icl):
        raise ValueError(f"n_icl={n_icl} must be between 0 and the run's n_eval_episodes={len(icl)}")
    if n_bursty < 0:
        raise ValueError(f"n_bursty={n_bursty} must be >= 0")
    out = [(f'icl{i:02d}', Episodes(icl.items[i:i + 1], icl.labels[i:i + 1], icl.classes[i:i + 1], icl.ways))
           for i in range(n_icl)]
    if n_bursty:
        sampler = EpisodeSampler.from_config(dataset.train, dataset.class_labels, config, 'cpu', clean=True, seed=seed,
                                             p_bursty=1.0)
        items, labels, classes = sampler.sample(n_bursty)
        out += [(f'bursty{i:02d}', Episodes(items[i:i + 1], labels[i:i + 1], classes[i:i + 1]))
                for i in range(n_bursty)]
    return out


def kept_checkpoints(out_dir):
    """{iter: filename} of the ckpt_<iter>.pt files train.py kept in out_dir."""
    found = {}
    for path in glob.glob(os.path.join(out_dir, 'ckpt_*.pt')):
        m = re.fullmatch(r'ckpt_(\d+)\.pt', os.path.basename(path))
        if m:
            found[int(m.group(1))] = os.path.basename(path)
    return dict(sorted(found.items()))


# ----------------------------------------------------------------------------------------------
# plotting

def token_names(context_len):
    return [f'{k}{i}' for i in range(context_len) for k in ('x', 'y')] + ['q']


def draw_item(ax, item, vmin=None, vmax=None):
    """One item: a vector as a vertical heat strip, an image [H, W] (e.g. Omniglot uint8) as a picture."""
    item = item.detach().cpu().float().numpy()
    if item.ndim == 1:
        ax.imshow(item[:, None], cmap='coolwarm', vmin=vmin, vmax=vmax, aspect='auto', interpolation='nearest')
    elif item.ndim == 2:
        ax.imshow(item, cmap='gray', vmin=vmin, vmax=vmax, interpolation='nearest')
    elif item.ndim == 3 and item.shape[0] in (1, 3):   # [C, H, W]
        ax.imshow(item[0] if item.shape[0] == 1 else np.moveaxis(item, 0, -1) / max(1.0, item.max()),
                  cmap='gray', interpolation='nearest')
    else:
        raise ValueError(f"cannot draw an item of shape {item.shape}: expected [dim], [H, W] or [C, H, W]")
    ax.set_xticks([])
    ax.set_yticks([])


def position_colors(image_pos, label_pos):
    colors = []
    for p in range(len(image_pos)):
        if p == len(image_pos) - 1:
            colors.append(QUERY)
        elif p % 2 == 0:
            colors.append(MATCH_IMAGE if image_pos[p] else OTHER_IMAGE)
        else:
            colors.append(MATCH_LABEL if label_pos[p] else OTHER_LABEL)
    return colors


def plot_episode(path, items, labels, classes, query_rows, context_len, title, dpi=100):
    """The episode as a strip (context items with labels, then the query) and, below, a layer x
    head grid of the query's attention over all 2T+1 tokens (matching images/labels dark)."""
    L, H, S = query_rows.shape
    T = context_len
    image_pos, label_pos = (m[0].tolist() for m in matching_positions(classes[None], T))
    colors = position_colors(image_pos, label_pos)
    float_items = items.float()
    vmin, vmax = (0, 255) if items.dtype == torch.uint8 else (float(float_items.min()), float(float_items.max()))

    image_items = items.dim() >= 3
    strip_h = 1.6 if image_items else 1.1
    fig = plt.figure(figsize=(max(9.0, 1.9 * H), 1.3 + strip_h + 1.25 * L))
    outer = fig.add_gridspec(2, 1, height_ratios=[strip_h, 1.25 * L], hspace=0.8 / ((strip_h + 1.25 * L) / 2))  # ~0.8 inch
    strip = outer[0].subgridspec(1, T + 1, wspace=0.3)
    for i in range(T + 1):
        ax = fig.add_subplot(strip[0, i])
        draw_item(ax, items[i], vmin, vmax)
        is_query = i == T
        if is_query:
            ax.set_title('query', fontsize=8, color=QUERY, fontweight='bold')
            ax.set_xlabel(f'target y={int(labels[i])}\nclass {int(classes[i])}', fontsize=7)
        else:
            ax.set_title(f'x{i}', fontsize=8, color=MATCH_IMAGE if image_pos[2 * i] else 'black')
            ax.set_xlabel(f'y={int(labels[i])}\nclass {int(classes[i])}', fontsize=7,
                          color=MATCH_LABEL if label_pos[2 * i + 1] else 'black')
        if is_query or image_pos[2 * i]:
            for spine in ax.spines.values():
                spine.set_edgecolor(QUERY if is_query else MATCH_IMAGE)
                spine.set_linewidth(3)

    grid = outer[1].subgridspec(L, H, hspace=0.6, wspace=0.15)
    names = token_names(T)
    for layer in range(L):
        for head in range(H):
            ax = fig.add_subplot(grid[layer, head])
            row = query_rows[layer, head].detach().cpu().float().numpy()
            ax.bar(range(S), row, color=colors, width=0.85)
            img = float(row[:-1][np.array(image_pos[:-1])].sum())
            lbl = float(row[:-1][np.array(label_pos[:-1])].sum())
            ax.set_title(f'L{layer} H{head}  img {img:.2f} lbl {lbl:.2f}', fontsize=7)
            ax.set_ylim(0, 1)
            ax.set_xlim(-0.6, S - 0.4)
            ax.tick_params(labelsize=6)
            if head:
                ax.set_yticklabels([])
            if layer == L - 1:
                ax.set_xticks(range(S))
                ax.set_xticklabels(names, fontsize=5, rotation=90)
            else:
                ax.set_xticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (MATCH_IMAGE, MATCH_LABEL, OTHER_IMAGE, OTHER_LABEL, QUERY)]
    fig.legend(handles, ['matching image', 'its label', 'other image', 'other label', 'query (self)'],
               loc='upper right', fontsize=7, ncol=5, frameon=False)
    fig.suptitle(title, fontsize=10, x=0.01, ha='left')
    fig.savefig(path, dpi=dpi, bbox_inches='tight')
    plt.close(fig)


def plot_matrices(path, attention, classes, context_len, layer, title, dpi=100):
    """Full (2T+1)x(2T+1) attention of every head of one layer: rows attend to columns; tick labels
    of matching images/labels coloured."""
    H, S, _ = attention.shape
    image_pos, label_pos = (m[0].tolist() for m in matching_positions(classes[None], context_len))
    colors = position_colors(image_pos, label_pos)
    colors = ['black' if c in (OTHER_IMAGE, OTHER_LABEL) else c for c in colors]
    names = token_names(context_len)
    ncols = min(H, 4)
    nrows = -(-H // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.5 * nrows), squeeze=False)
    for head in range(nrows * ncols):
        ax = axes[head // ncols, head % ncols]
        if head >= H:
            ax.axis('off')
            continue
        im = ax.imshow(attention[head].detach().cpu().float().numpy(), vmin=0, vmax=1, cmap='viridis')
        ax.add_patch(plt.Rectangle((-0.5, S - 1.5), S, 1, fill=False, edgecolor='white', lw=1))  # query row
        ax.set_title(f'layer {layer} head {head}', fontsize=9)
        ax.set_xticks(range(S))
        ax.set_yticks(range(S))
        ax.set_xticklabels(names, fontsize=5, rotation=90)
        ax.set_yticklabels(names, fontsize=5)
        for tick_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            for tick, color in zip(tick_labels, colors):
                tick.set_color(color)
    fig.colorbar(im, ax=axes, shrink=0.6, label='attention (row -> column)')
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=dpi, bbox_inches='tight')
    plt.close(fig)


def plot_summary(path, image_mass, label_mass, label_image, chance, title, dpi=100):
    """Per layer: query attention mass on matching images vs matching labels (mean over heads,
    the logged *_by_layer numbers, with the best head as a dot), and per-head heatmaps below."""
    L, H = image_mass.shape
    row_h = 1.2 + 0.3 * L
    fig = plt.figure(figsize=(max(10.0, 3 * (1.5 + 0.45 * H)), 1.0 + 2 * row_h))
    outer = fig.add_gridspec(2, 1, height_ratios=[1, 1], hspace=0.6)
    ax = fig.add_subplot(outer[0])
    x = np.arange(L)
    ax.barh(x - 0.2, image_mass.mean(1), height=0.4, color=MATCH_IMAGE, label='matching images (mean over heads)')
    ax.barh(x + 0.2, label_mass.mean(1), height=0.4, color=MATCH_LABEL, label='their labels (mean over heads)')
    ax.plot(image_mass.max(1).values, x - 0.2, 'o', color='black', ms=3, label='best head')
    ax.plot(label_mass.max(1).values, x + 0.2, 'o', color='black', ms=3)
    ax.axvline(chance, color=QUERY, ls='--', lw=1, label=f'uniform attention ({chance:.2f})')
    ax.set_yticks(x)
    ax.set_yticklabels([f'layer {i}' for i in range(L)], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel('query attention mass')
    ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5), frameon=False)
    heat = outer[1].subgridspec(1, 3, wspace=0.25)
    for c, (mass, name) in enumerate([(image_mass, 'query -> matching images'),
                                      (label_mass, 'query -> their labels'),
                                      (label_image, 'label token -> its own image')]):
        ax = fig.add_subplot(heat[0, c])
        im = ax.imshow(mass.numpy(), vmin=0, vmax=1, cmap='viridis', aspect='auto')
        ax.set_title(name, fontsize=9)
        ax.set_xlabel('head', fontsize=8)
        ax.set_ylabel('layer', fontsize=8)
        ax.set_xticks(range(H))
        ax.set_yticks(range(L))
        ax.tick_params(labelsize=7)
        if L * H <= 128:
            for (i, j), v in np.ndenumerate(mass.numpy()):
                ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=6,
                        color='white' if v < 0.5 else 'black')
    fig.colorbar(im, ax=fig.axes[1:], shrink=0.8, pad=0.02)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=dpi, bbox_inches='tight')
    plt.close(fig)


def plot_over_training(path, rows, tracked, title, dpi=100):
    """metrics.jsonl curves (lines) and re-measured checkpoints (dots): accuracy, the logged
    attention masses (max over layers) and the per-layer masses, against training iteration."""
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    it = [r['iter'] for r in rows]
    ck = sorted(tracked)
    for key, color, style in [('icl_acc', 'black', '-'), ('iwl_acc', 'tab:green', '-'), ('icl_acc_open', 'grey', ':')]:
        if rows:
            axes[0].plot(it, [r[key] for r in rows], style, color=color, label=key)
        if ck:
            axes[0].plot(ck, [tracked[i][key] for i in ck], 'o', color=color, ms=4)
    axes[0].set_ylabel('accuracy')
    axes[0].set_ylim(0, 1.02)
    for key, color in [('attn_match_image', MATCH_IMAGE), ('attn_match_label', MATCH_LABEL)]:
        if rows:
            axes[1].plot(it, [r[key] for r in rows], color=color, label=key + ' (max over layers)')
        if ck:
            axes[1].plot(ck, [tracked[i][key] for i in ck], 'o', color=color, ms=4)
    axes[1].set_ylabel('query attention mass')
    source = rows or [{'attn_match_image_by_layer': tracked[i]['attn_match_image_by_layer'],
                       'attn_match_label_by_layer': tracked[i]['attn_match_label_by_layer'], 'iter': i} for i in ck]
    xs = [r['iter'] for r in source]
    L = len(source[0]['attn_match_image_by_layer']) if source else 0
    cmap = plt.get_cmap('viridis')
    for layer in range(L):
        c = cmap(layer / max(1, L - 1))
        axes[2].plot(xs, [r['attn_match_image_by_layer'][layer] for r in source], '-', color=c,
                     label=f'layer {layer} image')
        axes[2].plot(xs, [r['attn_match_label_by_layer'][layer] for r in source], '--', color=c,
                     label=f'layer {layer} label')
    axes[2].set_ylabel('mass by layer\n(mean over heads)')
    axes[2].set_xlabel('iteration (lines: metrics.jsonl, dots: re-measured checkpoints)')
    for ax in axes:
        ax.legend(fontsize=6, ncol=2 if L > 4 else 1, loc='best')
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches='tight')
    plt.close(fig)


def plot_heads_over_training(path, tracked, title, dpi=100):
    """One row per checkpoint: per-head image mass, label mass and label->own-image attention."""
    ck = sorted(tracked)
    L, H = tracked[ck[0]]['image_mass'].shape
    fig, axes = plt.subplots(len(ck), 3, figsize=(3 + 1.2 * H, 0.6 + (0.35 * L + 0.6) * len(ck)), squeeze=False)
    for r, i in enumerate(ck):
        for c, (key, name) in enumerate([('image_mass', 'query -> matching images'),
                                         ('label_mass', 'query -> their labels'),
                                         ('label_image', 'label -> own image')]):
            ax = axes[r, c]
            im = ax.imshow(tracked[i][key].numpy(), vmin=0, vmax=1, cmap='viridis', aspect='auto')
            ax.set_xticks(range(H))
            ax.set_yticks(range(L))
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(f'iter {i}\nlayer', fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.colorbar(im, ax=axes, shrink=0.5, pad=0.02, label='attention mass')
    fig.savefig(path, dpi=dpi, bbox_inches='tight')
    plt.close(fig)


def fmt(values):
    return '[' + ', '.join(f'{v:.4f}' for v in values) + ']'


# ----------------------------------------------------------------------------------------------
if __name__ == '__main__':
    out_dir = 'out'
    ckpt_iter = -1          # -1: out_dir/ckpt.pt; N: out_dir/ckpt_<N>.pt (kept by train.py's keep_checkpoints)
    attention_dir = ''      # where the PNGs and masses JSON go; '' = <out_dir>/attention
    n_icl = 4               # the first n_icl ICL eval episodes (holdout classes, same in every run)
    n_bursty = 2            # training-style bursty episodes on the training classes
    bursty_seed = 1234      # seed of their sampler (fixed: same episodes every time)
    layer = -1              # layer whose full attention matrices are drawn (-1 = last)
    track = 'all'           # over training: 'all' kept ckpt_<iter>.pt files, '' none, or '1000,2000'
    full_eval = True        # masses over the full ICL eval set (the numbers train.py logged)
    device = 'cpu'
    dtype = 'float32'       # autocast dtype on CUDA (a CUDA run logged its eval under its own dtype)
    dpi = 100
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    # -------------------------------------------------------------------------------------------

    def fail(message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)

    ckpt_name = 'ckpt.pt' if ckpt_iter < 0 else f'ckpt_{ckpt_iter}.pt'
    if ckpt_iter >= 0 and not os.path.exists(os.path.join(out_dir, ckpt_name)):
        have = ', '.join(kept_checkpoints(out_dir).values()) or 'none'
        fail(f"ckpt_iter={ckpt_iter}: {os.path.join(out_dir, ckpt_name)} does not exist "
             f"(kept checkpoints: {have}; train.py keeps them with --keep_checkpoints)")
    if dtype not in ('bfloat16', 'float16', 'float32'):
        fail(f"dtype={dtype!r} must be 'bfloat16', 'float16' or 'float32'")
    try:
        model, config, dataset, checkpoint = load_run(out_dir, ckpt_name, device)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        fail(str(e))
    iteration = checkpoint['iter_num']
    T = config['context_len']
    L, H = config['n_layer'], config['n_head']
    if not -L <= layer < L:
        fail(f"layer={layer} is out of range for a {L}-layer model (use 0..{L - 1}, or -1 for the last)")
    layer = layer % L
    autocast = (torch.autocast(device_type='cuda', dtype=getattr(torch, dtype))
                if device.startswith('cuda') and dtype != 'float32' else nullcontext())
    attention_dir = attention_dir or os.path.join(out_dir, 'attention')
    os.makedirs(attention_dir, exist_ok=True)
    tag = f'iter{iteration}'
    print(f"checkpoint {os.path.join(out_dir, ckpt_name)}: iter {iteration}, {L} layers x {H} heads, "
          f"{dataset.name} data, item shape {tuple(dataset.train.exemplars.shape[2:])}")
    # data stays on the CPU: the eval episodes come from CPU generators (as in train.py), only the
    # finished episodes move to the model's device
    icl, iwl = (e.to(device) for e in build_eval_episodes(dataset, config))
    rows = read_metrics(out_dir)
    logged = {r['iter']: r for r in rows}
    written = []
    report = {'checkpoint': os.path.join(out_dir, ckpt_name), 'iter': iteration}

    # ---- the full ICL eval set: the numbers train.py logged -----------------------------------
    if full_eval:
        m = measure(model, icl, iwl, config, autocast)
        print(f"\nfull ICL eval set ({len(icl)} episodes, the ones train.py evaluates):")
        print(f"  icl_acc {m['icl_acc']:.4f}  iwl_acc {m['iwl_acc']:.4f}  "
              f"attn_match_image {m['attn_match_image']:.4f}  attn_match_label {m['attn_match_label']:.4f}")
        print(f"  by layer (mean over heads): image {fmt(m['attn_match_image_by_layer'])}  "
              f"label {fmt(m['attn_match_label_by_layer'])}")
        keys = ['icl_acc', 'attn_match_image', 'attn_match_label', 'attn_match_image_by_layer',
                'attn_match_label_by_layer']
        if iteration in logged:
            row = logged[iteration]
            diff = max(abs(a - b) for k in keys
                       for a, b in zip(np.atleast_1d(m[k]), np.atleast_1d(row[k])))
            print(f"  metrics.jsonl row iter {iteration}: attn_match_image {row['attn_match_image']:.4f}  "
                  f"attn_match_label {row['attn_match_label']:.4f}  icl_acc {row['icl_acc']:.4f}  "
                  f"-> {'equal' if diff == 0 else f'max |difference| {diff:.2e}'}")
            report['max_abs_diff_vs_metrics_jsonl'] = diff
        else:
            print(f"  (metrics.jsonl has no row for iter {iteration})")
        print("  per head, query -> matching images | query -> their labels | label token -> own image:")
        for i in range(L):
            print(f"    layer {i}: " + ' '.join(f'{v:.2f}' for v in m['image_mass'][i]) + ' | '
                  + ' '.join(f'{v:.2f}' for v in m['label_mass'][i]) + ' | '
                  + ' '.join(f'{v:.2f}' for v in m['label_image'][i]))
        path = path_heads(m['image_mass'], m['label_mass'], m['label_image'])
        print("  path (head with the highest mass for each step):")
        for key, text in [('label_reads_image', 'label token reads its own image'),
                          ('image_matching', 'query attends matching images  '),
                          ('label_copying', 'query copies the matching label ')]:
            li, hi, v = path[key]
            print(f"    {text}: layer {li} head {hi} ({v:.3f})")
        chance = float(matching_positions(icl.classes, T)[0].float().sum(1).mean()) / (2 * T + 1)
        p = os.path.join(attention_dir, f'{tag}_summary.png')
        plot_summary(p, m['image_mass'], m['label_mass'], m['label_image'], chance,
                     f"{out_dir} iter {iteration}: attention over the {len(icl)} ICL eval episodes "
                     f"(icl_acc {m['icl_acc']:.3f})", dpi)
        written.append(p)
        report.update({k: m[k] for k in keys + ['iwl_acc']})
        report.update({k: m[k].tolist() for k in ('image_mass', 'label_mass', 'label_image')})
        report['path'] = {k: {'layer': v[0], 'head': v[1], 'mass': v[2]} for k, v in path.items()}

    # ---- a few fixed episodes ------------------------------------------------------------------
    try:
        episodes = [(name, ep.to(device)) for name, ep in
                    fixed_episodes(dataset, config, n_icl, n_bursty, bursty_seed, icl=icl)]
    except ValueError as e:
        fail(str(e))
    if episodes:
        print(f"\nfixed episodes (layer {layer} matrices drawn):")
    report['episodes'] = {}
    for name, ep in episodes:
        with torch.no_grad():
            logits, attentions = run_episodes(model, ep, return_attention=True, autocast=autocast)
        target = int(ep.labels[0, T])
        if ep.ways:  # scored as eval does: among the episode's ways labels
            probs = F.softmax(logits[0, :ep.ways], -1)
            how = f"{ep.ways}-way"
        else:
            probs = F.softmax(logits[0], -1)
            how = 'open'
        prob, pred = (float(v) for v in probs.max(-1))
        pred = int(pred)
        image_mass, label_mass = attention_masses(attentions, ep.classes)
        query_rows = torch.stack([a[0, :, 2 * T] for a in attentions]).cpu()   # [L, H, 2T+1]
        title = (f"{out_dir} iter {iteration}, {name}: prediction y={pred} (p={prob:.3f}, {how}), "
                 f"target y={target} {'correct' if pred == target else 'WRONG'}")
        p1 = os.path.join(attention_dir, f'{tag}_{name}_query.png')
        plot_episode(p1, ep.items[0].cpu(), ep.labels[0].cpu(), ep.classes[0].cpu(), query_rows, T, title, dpi)
        p2 = os.path.join(attention_dir, f'{tag}_{name}_layer{layer}.png')
        plot_matrices(p2, attentions[layer][0].cpu(), ep.classes[0].cpu(), T, layer,
                      f"{out_dir} iter {iteration}, {name}: layer {layer} attention", dpi)
        written += [p1, p2]
        print(f"  {name}: target {target} pred {pred} p={prob:.3f} ({how}); mass by layer: "
              f"image {fmt(image_mass.mean(1).tolist())} label {fmt(label_mass.mean(1).tolist())}")
        report['episodes'][name] = {'target': target, 'prediction': pred, 'probability': prob,
                                    'image_mass': image_mass.tolist(), 'label_mass': label_mass.tolist()}

    # ---- over training -------------------------------------------------------------------------
    kept = kept_checkpoints(out_dir)
    if track == 'all':
        track_iters = list(kept)
    else:
        try:
            track_iters = sorted(int(s) for s in track.split(',') if s.strip())
        except ValueError:
            fail(f"track={track!r} must be 'all', '' or comma-separated iterations like '1000,2000'")
        missing = [i for i in track_iters if i not in kept]
        if missing:
            fail(f"track: no ckpt_<iter>.pt in {out_dir} for iters {missing} (kept: {list(kept) or 'none'})")
    tracked = {}
    if track_iters:
        print(f"\nover training ({len(track_iters)} kept checkpoints, full ICL eval set):")
        for i in track_iters:
            state = load_checkpoint(out_dir, kept[i], map_location=device)
            if state['config'].get('n_layer') != L or state['config'].get('data_seed') != config['data_seed']:
                fail(f"{kept[i]} comes from a different run than {ckpt_name} (n_layer/data_seed differ)")
            model.load_state_dict(state['model'])
            tracked[i] = measure(model, icl, iwl, config, autocast)
            t = tracked[i]
            heads = path_heads(t['image_mass'], t['label_mass'], t['label_image'])
            same = ''
            if i in logged:
                diff = max(abs(t['attn_match_image'] - logged[i]['attn_match_image']),
                           abs(t['attn_match_label'] - logged[i]['attn_match_label']))
                same = ' (= metrics.jsonl)' if diff == 0 else f' (metrics.jsonl differs by {diff:.2e})'
            print(f"  iter {i}: icl_acc {t['icl_acc']:.4f}  attn_match_image {t['attn_match_image']:.4f}  "
                  f"attn_match_label {t['attn_match_label']:.4f}{same}; image head L{heads['image_matching'][0]}"
                  f"H{heads['image_matching'][1]}, label head L{heads['label_copying'][0]}H{heads['label_copying'][1]}")
        report['over_training'] = {i: {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in t.items()}
                                   for i, t in tracked.items()}
        p = os.path.join(attention_dir, 'heads_over_training.png')
        plot_heads_over_training(p, tracked, f"{out_dir}: per-head attention mass on the ICL eval set", dpi)
        written.append(p)
    if rows or tracked:
        p = os.path.join(attention_dir, 'over_training.png')
        plot_over_training(p, rows, tracked, f"{out_dir}: ICL accuracy and the query->image->label attention", dpi)
        written.append(p)

    masses_path = os.path.join(attention_dir, f'{tag}_masses.json')
    with open(masses_path, 'w') as f:
        json.dump(report, f, indent=1)
    written.append(masses_path)
    print(f"\nwrote {len(written)} files to {attention_dir}:")
    for p in written:
        print(f"  {p}")
