"""
One training step and what it reads, written once for a run and a group (every tensor of a group has a leading member
axis: group.py), so that train.py and bench.py step alike:

- StepTerms: what a step reads from the config: batch size, grad clip, the loss terms added to the query loss (a loss
  lever goes here) and the model's per-step random inputs (`draws`: a model-side lever that draws, step_generator);
- train_step: sample -> exposure counts -> forward -> query loss (+ terms) -> backward -> clip -> optimizer, with no
  host sync.
"""
import zlib

import torch
import torch.nn.functional as F

import data
from checkpoint import fault_point
from model import augment_thetas


def step_seed(config, iter_num, stream=''):
    """The seed of whatever a lever draws at step iter_num: the run's seed, the step and the lever's stream name. A group
    member draws exactly what its solo run draws (its own seed), and a resumed run repeats its draws (they depend on
    the step, not on what was drawn before). Forgetting and the curvature edit draw from stream ''."""
    return config['seed'] * 1_000_003 + iter_num + (zlib.crc32(stream.encode()) << 24 if stream else 0)


def step_generator(config, iter_num, stream, device):
    """A generator on `device` seeded by step_seed (what StepTerms.draws are drawn from), made by data.make_generator
    (which tests/test_cuda_on_cpu.py swaps for a CPU one under fake CUDA)."""
    return data.make_generator(device).manual_seed(step_seed(config, iter_num, stream))


class Exposure:
    """How often each training class was the query, and was seen at all; counted on the device with
    index_add_ (bincount on CUDA syncs with the host to size its output)."""

    def __init__(self, n_classes, device):
        self.query = torch.zeros(n_classes, dtype=torch.long, device=device)
        self.seen = torch.zeros(n_classes, dtype=torch.long, device=device)

    def add(self, classes):
        self.query.index_add_(0, classes[:, -1], torch.ones_like(classes[:, -1]))
        self.seen.index_add_(0, classes.flatten(), torch.ones_like(classes.flatten()))



def query_loss(logits, labels):
    """Cross-entropy at the query token only, averaged over the batch: shape [] for one run, [K] for a
    group whose logits are [K, B, n_labels] (each member's loss is exactly its solo loss)."""
    if logits.dim() == 2:
        return F.cross_entropy(logits.float(), labels[:, -1])
    return F.cross_entropy(logits.float().flatten(0, 1), labels[..., -1].flatten(),
                           reduction='none').view(labels.shape[:-1]).mean(-1)


def l2_penalty(decayed, l2, member_shape=()):
    """1/2 * l2 * ||w||^2 over the decayed parameter group only (the Linear/Conv weights of decay_modules:
    the group weight_decay acts on). Unlike decoupled decay, this enters the loss, so Adam rescales its
    gradient per weight. l2 is a float, a [K] tensor for a group (one value per member), or a list with
    one such value per decayed tensor (group members whose decay_modules differ)."""
    per_tensor = l2 if isinstance(l2, (list, tuple)) else [l2] * len(decayed)
    return 0.5 * sum(c * p.float().pow(2).reshape(*member_shape, -1).sum(-1) for c, p in zip(per_tensor, decayed))


def clip_gradients(params, max_norm, member_shape=()):
    """Clip the global gradient norm at max_norm: of the whole run, or of each member of a group."""
    if not member_shape:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    grads = [p.grad for p in params if p.grad is not None]
    norms = sum(g.float().pow(2).reshape(*member_shape, -1).sum(-1) for g in grads).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(*member_shape, *[1] * (g.dim() - len(member_shape))).to(g.dtype))


class StepTerms:
    """What a training step reads from its run's config, in one place, so that a run, a group and bench.py step
    alike: the batch size, gradient clipping and the penalties added to the query loss. Built once from one config
    (a run) or from each member's (a group: `decays[i][k]` says whether member k's decay_modules hold tensor i of
    `decayed`). A penalty is its train.py global, its check in check_config and one term here: a function of the
    forward's record (model.ICLTransformer.forward: 'logits', and what a term adds to self.record, e.g. 'attention'
    or 'mlp_hidden', a list over layers) -> a penalty of shape member_shape. A term reads its key with values,
    strength or on_decayed: one value per member in a group (tests/test_keys.py checks each member trains at its
    own), into a variable named after the key: a term's lambda reads its variable when called, so two terms sharing
    a name would both read the last one's strength."""

    def __init__(self, configs, decayed, decays=None):
        self.configs, self.decayed, self.decays = configs, decayed, decays
        self.batch_size, self.grad_clip = configs[0]['batch_size'], configs[0]['grad_clip']
        self.member_shape = () if decays is None else (len(configs),)
        self.record = set()  # what the terms read from the forward besides the logits
        self.terms = []
        self.draws = {}  # name -> fn(config, generator) -> a tensor the forward reads each step (drawn_at)
        if any(self.values('augment')):  # Omniglot: a random affine warp per training image (model.augment_thetas)
            self.draws['augment'] = lambda c, g: augment_thetas((self.batch_size, c['context_len'] + 1), c['augment'], g,
                                                                decayed[0].device)
        if any(self.values('l2')):  # 1/2 * l2 * ||w||^2 on the decayed group (l2_penalty)
            l2 = self.on_decayed('l2')
            self.terms.append(lambda out: l2_penalty(decayed, l2, self.member_shape))

    def values(self, key):
        """Each config's `key` (every member's is read)."""
        return [c[key] for c in self.configs]

    def strength(self, key):
        """`key` as a penalty's strength: the run's value, or a [K] tensor with one value per member."""
        values = self.values(key)
        return values[0] if self.decays is None else torch.tensor(values, device=self.decayed[0].device)

    def on_decayed(self, key):
        """`key` as the strength on each tensor of `decayed` (a list as long as it): the run's value; for a group a
        [K] tensor per tensor, 0 for the members whose decay_modules leave that tensor out."""
        values = self.values(key)
        if self.decays is None:
            return [values[0]] * len(self.decayed)
        return [torch.tensor([v if d else 0.0 for v, d in zip(values, mask)], device=p.device)
                for mask, p in zip(self.decays, self.decayed)]

    def drawn_at(self, it, device):
        """The model's random inputs at step `it` ({name: tensor}, model.ICLTransformer.forward's draws): each run's or
        member's own, from step_generator(its config, it, name), stacked for a group: a member draws what its solo run
        draws, and a resumed run draws again what it drew."""
        drawn = {}
        for name, fn in self.draws.items():
            values = [fn(c, step_generator(c, it, name, device)) for c in self.configs]
            drawn[name] = torch.stack(values) if self.member_shape else values[0]
        return drawn

    def penalty(self, out):
        return sum(term(out) for term in self.terms) if self.terms else None



def train_step(forward, optimizer, sampler, it, exposure, terms, autocast=None):
    """Step `it` of a run or a group; returns the detached query loss (shape [] or [K] for a group of K).

    forward(items, labels, record) -> the forward's record ('logits', and what the terms read): the (compiled) model,
    or a group's stacked model. sampler.sample(B, it) -> (items, labels, classes) with a leading member axis for a group.
    optimizer: AdamW (its lr and decay at `it`). terms: the run's StepTerms (batch size, grad clip, penalties);
    the returned loss is the data loss alone."""
    items, labels, classes = sampler.sample(terms.batch_size, it)
    exposure.add(classes)
    with autocast if autocast is not None else torch.autocast('cpu', enabled=False):
        out = forward(items, labels, record=tuple(sorted(terms.record)), draws=terms.drawn_at(it, items.device))
    loss = query_loss(out['logits'], labels)
    penalty = terms.penalty(out)
    (loss if penalty is None else loss + penalty).sum().backward()
    fault_point('train_step')  # test hook (no-op unless BURSTYICL_FAULT is set)
    if terms.grad_clip > 0:
        clip_gradients([p for g in optimizer.param_groups for p in g['params']], terms.grad_clip, loss.shape)
    optimizer.step(it)
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
