"""
Evaluation: in-context accuracy on held-out classes, in-weights accuracy on seen classes,
calibration, and how much the query attends to the matching context image and its label; while training, how
often the in-weights answer is wrong on training sequences (WrongMemory). train.py calls evaluate() at every eval; the
CLI evaluates a saved checkpoint the same way:

    python eval.py --out_dir=out
    python eval.py --out_dir=out --ablate=all     # ICL / IWL with each part mean-ablated (also: encoder,
                                                  # attn0, mlp1, head, attn, mlp: a comma list of parts)

Mean ablation replaces a part's output by its mean over training sequences (per position), so the part
still passes on what it says on average but nothing about the sequence at hand: the parts whose loss costs
IWL hold the class->label map, those whose loss costs ICL hold the in-context circuit.
"""
import json
import os
import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def expected_calibration_error(confidence, correct, n_bins=15):
    """ECE with equal-width confidence bins: sum over bins of |accuracy - confidence| * bin share."""
    edges = torch.linspace(0, 1, n_bins + 1, device=confidence.device)
    bin_index = (torch.bucketize(confidence, edges[1:-1], right=False)).clamp(0, n_bins - 1)
    ece = torch.zeros((), device=confidence.device)
    for b in range(n_bins):
        in_bin = bin_index == b
        if in_bin.any():
            ece += in_bin.float().mean() * (correct[in_bin].float().mean() - confidence[in_bin].mean()).abs()
    return ece.item()


def attention_masses(attentions, classes):
    """Attention from the query position onto the context images of the query's class and onto
    the label token right after each of them. attentions: per-layer [N, H, 2T+1, 2T+1];
    classes: [N, T+1]. Returns (image_mass, label_mass), each [n_layer, n_head], averaged over
    episodes (summed over the matching positions within an episode)."""
    T = classes.shape[1] - 1
    match = (classes[:, :T] == classes[:, T:T + 1]).float()            # [N, T]
    image_mass, label_mass = [], []
    for attention in attentions:
        query_row = attention[:, :, 2 * T, :2 * T].float()             # [N, H, 2T]
        image_mass.append((query_row[:, :, 0::2] * match[:, None]).sum(-1).mean(0))
        label_mass.append((query_row[:, :, 1::2] * match[:, None]).sum(-1).mean(0))
    return torch.stack(image_mass), torch.stack(label_mass)


@torch.no_grad()
def run_episodes(model, episodes, batch_size=512, return_attention=False, autocast=None):
    """Logits [N, n_labels] (float32) for a set of episodes, and optionally per-layer attention."""
    logits, attentions = [], []
    for start in range(0, len(episodes), batch_size):
        items = episodes.items[start:start + batch_size]
        labels = episodes.labels[start:start + batch_size]
        with autocast or torch.autocast('cpu', enabled=False):
            out = model(items, labels, record=('attention',) if return_attention else ())
        if return_attention:
            attentions.append([a.float() for a in out['attention']])
        logits.append(out['logits'].float())
    logits = torch.cat(logits)
    if not return_attention:
        return logits, None
    return logits, [torch.cat(layer) for layer in zip(*attentions)]


def hits_by_class(correct, query_class):
    """[[class_id, hits, n], ...] over the query classes present (ids within the holdout bank), so a
    report can bootstrap over held-out classes: episodes of one class are not independent draws."""
    n = torch.bincount(query_class)
    hits = torch.bincount(query_class, weights=correct.float())
    present = torch.nonzero(n).squeeze(1)
    table = torch.stack([present, hits[present].round().long(), n[present]], 1)
    return table.tolist()


@torch.no_grad()
def probe_metrics(model, probes, batch_size=512, autocast=None):
    """Accuracy on held-out training-distribution sequences (either strategy answers them: the collapse
    check), and on conflict episodes (seen classes, labels remapped to 0/1) the share of answers that follow
    the context vs the memorised label: which strategy wins when they disagree (data.build_probe_episodes)."""
    train_logits, _ = run_episodes(model, probes['train'], batch_size, autocast=autocast)
    conflict_logits, _ = run_episodes(model, probes['conflict'], batch_size, autocast=autocast)
    answer = conflict_logits.argmax(-1)
    return {'train_dist_acc': (train_logits.argmax(-1) == probes['train'].labels[:, -1]).float().mean().item(),
            'conflict_icl': (answer == probes['conflict'].labels[:, -1]).float().mean().item(),
            'conflict_iwl': (answer == probes['conflict_memorised']).float().mean().item()}


@torch.no_grad()
def evaluate(model, icl_episodes, iwl_episodes, batch_size=512, autocast=None, keep_attention=False, probes=None):
    """All eval metrics as a dict of plain Python numbers/lists (one metrics.jsonl row's worth);
    with keep_attention also the ICL episodes' per-layer attention (for per-head diagnostics). A new metric is a key
    of this dict: it lands in every metrics.jsonl row."""
    n_ways = icl_episodes.ways or None
    was_training = model.training
    model.eval()
    logits, attentions = run_episodes(model, icl_episodes, batch_size, return_attention=True, autocast=autocast)
    target = icl_episodes.labels[:, -1]
    # closed: choose among the labels 0..n_ways-1 that the episode's context uses
    closed_probs = F.softmax(logits[:, :n_ways], dim=-1)
    confidence, prediction = closed_probs.max(-1)
    correct = prediction == target
    image_mass, label_mass = attention_masses(attentions, icl_episodes.classes)
    image_by_layer = image_mass.mean(1).tolist()
    label_by_layer = label_mass.mean(1).tolist()

    iwl_logits, _ = run_episodes(model, iwl_episodes, batch_size, autocast=autocast)
    metrics = {
        'icl_acc': correct.float().mean().item(),
        'icl_acc_open': (logits.argmax(-1) == target).float().mean().item(),
        'iwl_acc': (iwl_logits.argmax(-1) == iwl_episodes.labels[:, -1]).float().mean().item(),
        'ece': expected_calibration_error(confidence, correct),
        'attn_match_image': max(image_by_layer),
        'attn_match_label': max(label_by_layer),
        'attn_match_image_by_layer': image_by_layer,
        'attn_match_label_by_layer': label_by_layer,
        'icl_hits_by_class': hits_by_class(correct, icl_episodes.classes[:, -1]),
    }
    if probes is not None:
        metrics.update(probe_metrics(model, probes, batch_size, autocast))
    model.train(was_training)
    return (metrics, attentions) if keep_attention else metrics


class WrongMemory:
    """How often the in-weights answer is wrong on the training distribution, the common axis of the levers that make
    memorisation wrong (label swap: about its p once the map is memorised; relabel_every: 1 - 1/n_labels just after
    each relabel, until relearned; a model that memorised nothing: chance-level wrongness). Every EVERY steps, before
    the step, SEQUENCES fresh training sequences of that step (data.memory_episodes: the run's own rules, context
    labels randomised) from a sampler seeded by the run's seed and the step, apart from the training stream, are
    answered by the model in eval mode without gradients (so no BatchNorm statistic, pixel-noise draw or training
    number changes). The eval row's 'wrong_memory' is the share answered wrong since the previous eval. Counted on
    the device (no host sync), checkpointed with the run."""
    EVERY = 7         # prime to every relabel period the grids use, so the measured steps sweep each period's phases
    SEQUENCES = 32

    def __init__(self, configs, datas, device):
        self.configs, self.datas, self.device = configs, datas, device
        self.wrong = torch.zeros(len(configs), device=device)
        self.count = 0

    def measure(self, model, it, load_member=None, autocast=None):
        """At step `it` (when due), each member's sequences answered by `model`: the run's model, or for a group the
        plain model each member is loaded into by load_member(k) (as its eval does, so a member counts exactly what
        its solo run counts)."""
        if it % self.EVERY:
            return
        from data import EpisodeSampler, memory_episodes
        from step import step_seed
        was_training = model.training
        model.eval()
        for k, (c, d) in enumerate(zip(self.configs, self.datas)):
            sampler = EpisodeSampler.from_config(d.train, d.class_labels, c, self.device, seed=step_seed(c, it, 'memory'),
                                                 n_labels=d.n_labels)
            episodes = memory_episodes(sampler, self.SEQUENCES, it, d.n_labels)
            if load_member is not None:
                load_member(k)
            logits, _ = run_episodes(model, episodes, autocast=autocast)
            self.wrong[k] += (logits.argmax(-1) != episodes.labels[:, -1]).sum()
        self.count += self.SEQUENCES
        model.train(was_training)

    def share(self, k):
        """Member k's share wrong since the last reset (None before any measurement)."""
        return self.wrong[k].item() / self.count if self.count else None

    def reset(self):
        self.wrong.zero_()
        self.count = 0

    def state(self, k):
        return {'wrong': self.wrong[k].item(), 'count': self.count}

    def load(self, k, state):
        if state:  # runs checkpointed before this measurement resume with nothing counted
            self.wrong[k], self.count = state['wrong'], state['count']


def load_run(out_dir, ckpt_name='ckpt.pt', device='cpu'):
    """(model, config, checkpoint) of a saved run, built through the same code as train.py."""
    from checkpoint import load_checkpoint
    from model import build_model
    from data import build_dataset
    checkpoint = load_checkpoint(out_dir, ckpt_name, map_location=device)
    config = checkpoint['config']
    dataset = build_dataset(config)
    model = build_model(config, dataset).to(device)
    model.load_state_dict(checkpoint['model'])
    model.eval()
    return model, config, dataset, checkpoint


def ablation_parts(model):
    """Every part --ablate can knock out: the encoder, each layer's attention and MLP, every layer's attention
    (attn*) or MLP (mlp*) at once, the head's input."""
    n = len(model.blocks)
    return ['encoder', *[f'attn{i}' for i in range(n)], 'attn*', *[f'mlp{i}' for i in range(n)], 'mlp*', 'head']


def _layers_of(part, model):
    """The single parts a part stands for: 'mlp*' -> mlp0, mlp1, ...; any other part -> itself."""
    if part.endswith('*'):
        return [f"{part[:-1]}{i}" for i in range(len(model.blocks))]
    return [part]


def parse_ablate(text, model):
    """'all' | comma list of parts; 'attn' / 'mlp' alone = every layer's (each one knocked out on its own)."""
    parts = ablation_parts(model)
    if text == 'all':
        return parts
    chosen = []
    for name in [s.strip() for s in text.split(',') if s.strip()]:
        expanded = [p for p in parts if p.rstrip('0123456789') == name] if name in ('attn', 'mlp') else [name]
        for p in expanded:
            if p not in parts:
                raise ValueError(f"ablate={text!r}: unknown part {p!r}; parts of this model: {', '.join(parts)} "
                                 f"(or 'all', 'attn', 'mlp')")
            chosen.append(p)
    return chosen


def _recorded(part):
    """Where the forward's record holds a part's output (model.parts): (record name, index)."""
    if part in ('encoder', 'head'):
        return ('encoder' if part == 'encoder' else 'head_in'), 0
    kind = part.rstrip('0123456789')
    return ('attn_out' if kind == 'attn' else 'mlp_out'), int(part[len(kind):])


@torch.no_grad()
def part_means(model, reference, parts, batch_size=512):
    """Each part's mean output over the reference (training) sequences, per position: encoder [C] (over every
    item), attention / MLP [T, C], head input [C]; read from the forward's record by the parts' names."""
    sums, counts = {}, {}
    record = tuple(sorted({_recorded(part)[0] for part in parts}))
    for start in range(0, len(reference), batch_size):
        out = model(reference.items[start:start + batch_size], reference.labels[start:start + batch_size],
                    record=record)
        for part in parts:
            name, index = _recorded(part)
            x = out[name][index].float()
            x = x.reshape(-1, x.shape[-1]) if part in ('encoder', 'head') else x
            sums[part] = sums.get(part, 0) + x.sum(0)
            counts[part] = counts.get(part, 0) + x.shape[0]
    return {part: sums[part] / counts[part] for part in parts}


@contextmanager
def mean_ablated(model, means):
    """Within it, each part of `means` ({part: mean}) outputs its mean instead (model.edits, by the part's name); the
    last layer, when it computes the query alone, gets the query position's mean."""
    def fill(mean):
        return lambda y: mean[-y.shape[1]:].to(y.dtype).expand_as(y) if y.dim() == 3 and mean.dim() == 2 \
            else mean.to(y.dtype).expand_as(y)
    saved = model.edits
    model.edits = {**saved, **{part: fill(mean) for part, mean in means.items()}}
    try:
        yield
    finally:
        model.edits = saved


def ablation_table(model, icl, iwl, reference, config, parts):
    """[(part, metrics)] with 'none' first: eval metrics with each part mean-ablated on its own."""
    singles = sorted({p for part in parts for p in _layers_of(part, model)})
    means = part_means(model, reference, singles)
    rows = [('none', evaluate(model, icl, iwl))]
    for part in parts:
        with mean_ablated(model, {p: means[p] for p in _layers_of(part, model)}):
            rows.append((part, evaluate(model, icl, iwl)))
    return rows


def reference_sequences(dataset, config, n=2048):
    """n training sequences from the run's own sampler rules (bursty mix, label swap off), seeded apart
    from training and from the probes: the distribution the mean activations are taken over."""
    from data import make_train_dist_episodes
    return make_train_dist_episodes(dataset.train, dataset.class_labels, config, n, seed=config['data_seed'] + 3000)


if __name__ == '__main__':
    out_dir = 'out'
    ckpt_name = 'ckpt.pt'
    device = 'cpu'
    ablate = ''        # '' = plain eval; 'all' or a comma list of parts (encoder, attn<i>, mlp<i>, head, attn, mlp)
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    from data import EpisodeSampler, build_eval_episodes, icl_chance, scored_at
    try:
        model, config, dataset, checkpoint = load_run(out_dir, ckpt_name, device)
        parts = parse_ablate(ablate, model) if ablate else []
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    icl, iwl = build_eval_episodes(dataset, config)
    # IWL against the class->label map the run's last step trained on (relabel_every), as train.py scores it
    sampler = EpisodeSampler.from_config(dataset.train, dataset.class_labels, config, 'cpu', n_labels=dataset.n_labels)
    icl, iwl, _ = scored_at((icl, iwl, None), sampler, checkpoint['iter_num'])
    icl, iwl = icl.to(device), iwl.to(device)
    if not parts:
        metrics = evaluate(model, icl, iwl)
        print(json.dumps({'iter': checkpoint['iter_num'], **metrics}))
        sys.exit(0)
    rows = ablation_table(model, icl, iwl, reference_sequences(dataset, config).to(device), config, parts)
    iwl_chance = 1 / dataset.n_labels
    print(f"{out_dir} at iter {checkpoint['iter_num']}: mean ablation (ICL chance {icl_chance(icl):g}, "
          f"IWL chance {iwl_chance:.3f})")
    print(f"{'ablated':>8} | {'ICL':>5} | {'IWL':>5} | attn lbl")
    for part, m in rows:
        print(f"{part:>8} | {m['icl_acc']:.3f} | {m['iwl_acc']:.3f} | {m['attn_match_label']:.2f}")
    result = {'iter': checkpoint['iter_num'], 'iwl_chance': iwl_chance,
              'rows': [{'part': p, 'icl_acc': m['icl_acc'], 'iwl_acc': m['iwl_acc'],
                        'attn_match_label': m['attn_match_label']} for p, m in rows]}
    path = os.path.join(out_dir, 'ablation.json')
    with open(path, 'w') as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")
