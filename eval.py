"""
Evaluation: in-context accuracy on held-out classes, in-weights accuracy on seen classes,
calibration, and how much the query attends to the matching context image and its label.
train.py calls evaluate() at every eval; the CLI evaluates a saved checkpoint the same way:

    python eval.py --out_dir=out
"""
import json
import os
import sys

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


def attention_masses(attentions, classes, context_len):
    """Attention from the query position onto the context images of the query's class and onto
    the label token right after each of them. attentions: per-layer [N, H, 2T+1, 2T+1];
    classes: [N, T+1]. Returns (image_mass, label_mass), each [n_layer, n_head], averaged over
    episodes (summed over the matching positions within an episode)."""
    T = context_len
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
            out = model(items, labels, return_attention=return_attention)
        if return_attention:
            out, att = out
            attentions.append([a.float() for a in att])
        logits.append(out.float())
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
def evaluate(model, icl_episodes, iwl_episodes, context_len, n_ways=2, batch_size=512, autocast=None,
             keep_attention=False):
    """All eval metrics as a dict of plain Python numbers/lists (one metrics.jsonl row's worth);
    with keep_attention also the ICL episodes' per-layer attention (for per-head diagnostics)."""
    was_training = model.training
    model.eval()
    logits, attentions = run_episodes(model, icl_episodes, batch_size, return_attention=True, autocast=autocast)
    target = icl_episodes.labels[:, -1]
    # closed: choose among the labels 0..n_ways-1 that the episode's context uses
    closed_probs = F.softmax(logits[:, :n_ways], dim=-1)
    confidence, prediction = closed_probs.max(-1)
    correct = prediction == target
    image_mass, label_mass = attention_masses(attentions, icl_episodes.classes, context_len)
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
    model.train(was_training)
    return (metrics, attentions) if keep_attention else metrics


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


if __name__ == '__main__':
    out_dir = 'out'
    ckpt_name = 'ckpt.pt'
    device = 'cpu'
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    from data import build_eval_episodes
    try:
        model, config, dataset, checkpoint = load_run(out_dir, ckpt_name, device)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    icl, iwl = build_eval_episodes(dataset, config)
    metrics = evaluate(model, icl.to(device), iwl.to(device), config['context_len'], config['eval_ways'])
    metrics = {'iter': checkpoint['iter_num'], **metrics}
    print(json.dumps(metrics))
