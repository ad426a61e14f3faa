"""
What every training run is made of, kept in one place so that train.py (one run or a group of K stacked runs,
read top to bottom, one loop) and bench.py train the same way:

- check_config:      a run's config checked before anything touches out_dir (clear errors);
- read_run_dir:      the checkpoint to resume, or a refusal, reading out_dir only;
- start_run_dir:     only once data and model are built: replace an old run or cut it back to its checkpoint;
- StepTerms:         what a step reads from the config (batch size, clip, penalties such as l2), built once;
- AdamW, decay_:     the one optimizer: lr and weight decay at each step from model.py's schedule functions, the
                     decoupled decay written once for a run (a float) and a group (a [K] tensor per tensor);
- train_step:        sample -> exposure counts -> forward -> query loss (+ penalties) -> backward -> clip -> AdamW,
                     with no host sync; for a group every tensor simply has a leading member axis (group.py);
- eval_row, write_run_files: the metrics.jsonl row and summary.json / exposure.json of a run;
- eval_due, evaluate_and_log, checkpoint_run, log_line, StopFlag, NonFinite, stop_and_exit, finish_run:
                     the loop's eval, log and stop block, the same for a run and each member of a group.
"""
import json
import os
import signal
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from data import check_data_config, icl_chance
from curvature import MODULES as CURVATURE_MODULES  # whose Linear weights curvature_modules may name
from checkpoint import (append_metrics, fault_point, has_checkpoint, load_checkpoint, read_metrics, save_checkpoint,
                        train_defaults, truncate_metrics, write_json)
from eval import evaluate
from model import build_model, decay_exponent, learning_rate_at, parse_decay_modules, parse_modules, weight_decay_at
from tracking import TRACKING_KEYS, finish_tracking, track

HERE = os.path.dirname(os.path.abspath(__file__))

# keys that may change when a run is resumed; any other difference means a different experiment
RESUMABLE_KEYS = {'out_dir', 'init_from', 'overwrite', 'max_iters', 'eval_interval', 'log_interval',
                  'keep_checkpoints', 'device', 'compile', 'compile_mode', 'dtype',
                  'data_dir', 'cache_dir', *TRACKING_KEYS}

# The train.py keys only some runs read, and which runs. Any other key is read by every run: a run stops, naming the
# key, when nothing read one (besides RESUMABLE_KEYS, read later by the loop), so a key nothing reads stops at start-up.
READ_ON_SOME_PATHS = {
    'item_dim': "dataset='synthetic'", 'exemplars_per_class': "dataset='synthetic'",
    'within_class_noise': "dataset='synthetic'", 'data_dir': "dataset='omniglot'", 'cache_dir': "dataset='omniglot'",
    'omniglot_classes': "dataset='omniglot'", 'image_size': "dataset='omniglot'", 'min_lr': "lr_schedule='cosine'",
    'dtype': 'CUDA', 'compile': 'CUDA, train.py (a group runs eager)', 'compile_mode': 'CUDA, train.py',
    'overwrite': 'an out_dir that holds a run', 'wandb_project': 'wandb_log=True', 'wandb_group': 'wandb_log=True'}

# The keys a group's members may not differ in: one stacked model (its shape), one batch, schedule and loop, one device.
# A group whose members differ in one is refused at start-up (check_members); every other key is applied per member,
# which tests/test_keys.py checks key by key (each member equals its solo run).
GROUP_SHARED = {'n_layer', 'n_head', 'n_embd', 'dropout', 'pixel_noise', 'dataset', 'item_dim', 'image_size', 'n_labels',
                'context_len', 'batch_size', 'max_iters', 'learning_rate', 'lr_schedule', 'warmup_iters', 'min_lr',
                'beta1', 'beta2', 'grad_clip', 'eval_interval', 'log_interval', 'device', 'dtype', 'compile',
                'compile_mode', 'wandb_log',
                'forget_every', 'forget_until', 'forget_modules'}  # forgetting: the stacked AdamW has one step count a tensor


# ---- config ---------------------------------------------------------------------------------------

def parse_train_args(args):
    """The config a `python train.py <args>` run would have: train.py's defaults, then config files and
    --key=value through the same configurator (it prints one line and exits 2 on a bad argument)."""
    defaults = train_defaults()
    namespace = dict(defaults)
    saved = sys.argv
    sys.argv = ['train.py', *args]
    try:
        exec(open(os.path.join(HERE, 'configurator.py')).read(), namespace)
    finally:
        sys.argv = saved
    return {k: namespace[k] for k in defaults}


def member_arguments(argv):
    """Each run's train.py arguments: one run, the command line split at '::' (a group), or a JSON file of
    argument lists (what grid.py writes for a group)."""
    if len(argv) == 1 and argv[0].endswith('.json'):
        with open(argv[0]) as f:
            members = json.load(f)
        if not (isinstance(members, list) and members and all(isinstance(m, list) for m in members)):
            raise ValueError(f"{argv[0]} must hold a JSON list of train.py argument lists")
        return members
    members, current = [], []
    for arg in argv:
        if arg == '::':
            members.append(current)
            current = []
        else:
            current.append(arg)
    return members + [current]


def check_members(configs):
    """ValueError for a group whose members differ in a key of GROUP_SHARED (naming it), or share an out_dir or a
    wandb run name."""
    refused = [k for k in configs[0] if k in GROUP_SHARED and len({repr(c[k]) for c in configs}) > 1]
    if refused:
        raise ValueError("members differ in " + "; ".join(f"{k} ({', '.join(repr(c[k]) for c in configs)})"
                                                          for k in refused)
                         + ", which a group applies once for all its members (training.GROUP_SHARED): "
                           "group cells that agree on it, or train them one by one")
    for key in ('out_dir', 'wandb_run_name'):
        values = [os.path.abspath(c[key]) if key == 'out_dir' else c[key] for c in configs]
        if len(set(v for v in values if v)) != len([v for v in values if v]):
            raise ValueError(f"two members share a {key}: {values}")


def check_config(config):
    """ValueError naming the key for a config no run should start with, data and sampler settings included
    (data.check_data_config): checked before out_dir is touched."""
    if config['init_from'] not in ('scratch', 'resume'):
        raise ValueError(f"init_from={config['init_from']!r} must be 'scratch' or 'resume'")
    if config['lr_schedule'] not in ('inverse_sqrt', 'cosine', 'constant'):
        raise ValueError(f"lr_schedule={config['lr_schedule']!r} must be 'inverse_sqrt', 'cosine' or 'constant'")
    for key in ('weight_decay', 'l2', 'learning_rate', 'grad_clip', 'warmup_iters', 'min_lr', 'dropout'):
        if config[key] < 0:
            raise ValueError(f"{key}={config[key]} must be >= 0")
    if not 0.0 <= config.get('label_swap', 0.0) <= 1.0:
        raise ValueError(f"label_swap={config['label_swap']} must be in [0, 1]")
    parse_decay_modules(config.get('decay_modules', 'all'))
    check_forgetting(config)
    check_curvature(config)
    for key in ('batch_size', 'max_iters', 'eval_interval', 'log_interval', 'n_eval_episodes'):
        if config[key] < 1:
            raise ValueError(f"{key}={config[key]} must be >= 1")
    if config['compile_mode'] not in ('default', 'reduce-overhead', 'max-autotune'):
        raise ValueError(f"compile_mode={config['compile_mode']!r} must be 'default', 'reduce-overhead' or 'max-autotune'")
    if config['dtype'] not in ('bfloat16', 'float32'):
        raise ValueError(f"dtype={config['dtype']!r} must be 'bfloat16' or 'float32'")
    try:
        {int(s) for s in config['keep_checkpoints'].split(',') if s.strip()}
    except ValueError:
        raise ValueError(f"keep_checkpoints={config['keep_checkpoints']!r} must be comma-separated iteration numbers")
    check_data_config(config)


def check_all_read(reads):
    """ValueError naming each key that nothing read while the run (or the group, one KeyReads per member) was built:
    a key no code applies would train every run without it. The loop reads RESUMABLE_KEYS later; READ_ON_SOME_PATHS
    names the keys only some runs read."""
    read = set().union(*(r.read for r in reads), RESUMABLE_KEYS, READ_ON_SOME_PATHS)
    unread = [k for k in reads[0] if k not in read]
    if unread:
        raise ValueError(f"nothing reads {', '.join(unread)}: apply a key where train.py's loop reads it "
                         f"(training.StepTerms, data.EpisodeSampler, model.py, ...), or name the runs that read it in "
                         f"training.READ_ON_SOME_PATHS")


def resolve_device(device):
    """'auto' -> 'cuda' when present, else 'cpu'; ValueError for a CUDA device on a machine without one."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    return device


def read_run_dir(config):
    """The checkpoint to resume from (or None to start from scratch) for config['out_dir'], after refusing
    what would lose data: ValueError when out_dir holds a run and neither resume nor overwrite was asked for,
    or when the checkpoint's run used a different config. Reads only; start_run_dir writes."""
    out_dir = config['out_dir']
    existing_run = has_checkpoint(out_dir) or bool(read_metrics(out_dir))
    if config['init_from'] == 'resume' and has_checkpoint(out_dir):
        try:
            checkpoint = load_checkpoint(out_dir, map_location='cpu')
        except FileNotFoundError as e:
            raise ValueError(f"cannot resume: {e}")
        saved = checkpoint['config']  # keys newer than the run filled in (checkpoint.saved_config)
        changed = sorted(k for k in config if k not in RESUMABLE_KEYS and saved[k] != config[k])
        if changed:
            raise ValueError(f"cannot resume {out_dir}: its run used a different config for "
                             + ", ".join(f"{k} ({saved.get(k)!r} there, {config[k]!r} now)" for k in changed))
        return checkpoint
    if existing_run and not config['overwrite']:
        raise ValueError(f"out_dir {out_dir!r} already holds a run; use --init_from=resume to continue it, "
                         f"--overwrite=True to replace it, or another --out_dir")
    return None


def start_run_dir(config, checkpoint):
    """out_dir made ready for the run read_run_dir accepted, called once its data and model are built (a run
    that cannot start never costs an old run its files): created, the old run's files removed (overwrite),
    or metrics.jsonl cut back to the checkpoint's last eval (resume). Returns the metrics rows kept."""
    out_dir = config['out_dir']
    os.makedirs(out_dir, exist_ok=True)
    if checkpoint is not None:
        return truncate_metrics(out_dir, checkpoint['last_eval_iter'])
    if has_checkpoint(out_dir) or read_metrics(out_dir):  # read_run_dir let it through: overwrite=True
        print(f"overwrite=True: replacing the run in {out_dir}")
        for name in os.listdir(out_dir):
            if name.startswith('ckpt') or name in ('metrics.jsonl', 'summary.json', 'exposure.json'):
                os.remove(os.path.join(out_dir, name))
    elif config['init_from'] == 'resume':
        print(f"init_from='resume' but {out_dir} has no checkpoint: starting from scratch")
    return []


# ---- the step -------------------------------------------------------------------------------------

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
        if any(self.values('l2')):  # 1/2 * l2 * ||w||^2 on the decayed group (l2_penalty)
            l2 = self.on_decayed('l2')
            self.terms.append(lambda out: l2_penalty(decayed, l2, self.member_shape))

    def values(self, key):
        """Each config's `key` (every member's is read), train.py's default where a config lacks it."""
        return [c[key] if key in c else train_defaults()[key] for c in self.configs]

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

    def penalty(self, out):
        return sum(term(out) for term in self.terms) if self.terms else None


def decay_(p, lr, wd):
    """Decoupled weight decay, AdamW's first half, written once for a run and a group: p shrinks by (1 - lr*wd).
    wd is a float (a run: the factor is a Python float, as in torch's AdamW) or a float64 [K] tensor (a group's
    stacked p, member k on row k: the factor computed in float64 and rounded once, so each member shrinks exactly as
    its solo run)."""
    if isinstance(wd, torch.Tensor):
        p.mul_((1 - lr * wd).to(p.device, p.dtype).view(-1, *[1] * (p.dim() - 1)))
    elif wd:
        p.mul_(1 - lr * wd)


class AdamW:
    """The one optimizer of a run and of a group (stacked parameters with a leading member axis). step(it) sets the
    lr (model.learning_rate_at), shrinks each decayed tensor by lr * model.weight_decay_at (each member's own, 0 where
    its decay_modules leave the tensor out), then torch's AdamW with no decay of its own applies Adam's update: AdamW's
    order, so a run is bit-identical to torch.optim.AdamW(weight_decay=wd), and a schedule of either is one edit in
    model.py. state_dict(k) is member k's state as a solo run's torch AdamW state_dict (its decay group first, with
    its weight_decay), so every checkpoint has one format and old ones load.

    configs: each member's; template: a solo model of the architecture (its tensors give the solo order and layout);
    params: name -> the tensor trained (the template's own for a run, the stacked one for a group)."""

    def __init__(self, configs, template, params, fused):
        name_of = {id(p): n for n, p in template.named_parameters()}
        self.configs, self.params = configs, params
        self.stacked = any(params[n] is not p for n, p in template.named_parameters())  # a member axis
        self.like = {n: p for n, p in template.named_parameters()}
        self.orders = []  # member k's solo order: (its decayed names, the others)
        for c in configs:
            decay, no_decay = template.decayed_parameters(c['decay_modules'])
            self.orders.append(([name_of[id(p)] for p in decay], [name_of[id(p)] for p in no_decay]))
        decay = self.orders[0][0] if not self.stacked else [name_of[id(p)] for p in template.decayed_parameters()[0]]
        self.masks = torch.tensor([[n in order[0] for order in self.orders] for n in decay], dtype=torch.float64)
        self.inner = torch.optim.AdamW(
            [{'params': [params[n] for n in decay], 'weight_decay': 0.0},
             {'params': [p for n, p in params.items() if n not in set(decay)], 'weight_decay': 0.0}],
            lr=configs[0]['learning_rate'], betas=(configs[0]['beta1'], configs[0]['beta2']), fused=fused)
        self.param_groups = self.inner.param_groups

    @torch.no_grad()
    def step(self, it):
        lr = learning_rate_at(it, self.configs[0])
        for group in self.param_groups:
            group['lr'] = lr
        wds = [weight_decay_at(it, c) for c in self.configs]
        if any(wds):
            for p, mask in zip(self.param_groups[0]['params'], self.masks):
                decay_(p, lr, torch.tensor(wds, dtype=torch.float64) * mask if self.stacked else wds[0])
        self.inner.step()

    def zero_grad(self, set_to_none=True):
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self, k=0):
        """Member k's state in the format of its solo run's torch AdamW, laid out like the solo parameter (fused
        AdamW wants that: the stacked tensors are plain, a solo ResNet's are channels_last)."""
        decay, no_decay = self.orders[k]
        state = {}
        for index, name in enumerate(decay + no_decay):
            inner = self.inner.state.get(self.params[name])
            if inner:
                state[index] = {'step': inner['step'].detach().clone(), **{
                    key: torch.empty_like(self.like[name]).copy_(inner[key][k] if self.stacked else inner[key])
                    for key in ('exp_avg', 'exp_avg_sq')}}
        hyper = {key: v for key, v in self.param_groups[0].items() if key != 'params'}
        return {'state': state, 'param_groups': [
            {**hyper, 'weight_decay': self.configs[k]['weight_decay'], 'params': list(range(len(decay)))},
            {**hyper, 'weight_decay': 0.0, 'params': list(range(len(decay), len(decay) + len(no_decay)))}]}

    def load_state_dicts(self, states):
        """The state from each member's solo-format state (a list; a run's is one). Copied tensor by tensor, never
        through torch's load_state_dict, which would also restore the saved group's weight_decay into the inner
        AdamW and decay twice."""
        by_name = [{n: state['state'].get(i) for i, n in enumerate(order[0] + order[1])}
                   for order, state in zip(self.orders, states)]
        self.inner.state.clear()  # the state becomes the loaded one, as torch's load_state_dict makes it
        for name, target in self.params.items():
            per_member = [m.get(name) for m in by_name]
            if all(per_member):
                self.inner.state[target] = {key: torch.empty_like(target).copy_(
                    torch.stack([m[key] for m in per_member]) if self.stacked else per_member[0][key])
                    for key in ('exp_avg', 'exp_avg_sq')}
                step = per_member[0]['step']
                self.inner.state[target]['step'] = step.to(target.device) if self.inner.defaults['fused'] else step


def train_step(forward, optimizer, sampler, it, exposure, terms, autocast=None):
    """Step `it` of a run or a group; returns the detached query loss (shape [] or [K] for a group of K).

    forward(items, labels, record) -> the forward's record ('logits', and what the terms read): the (compiled) model,
    or a group's stacked model. sampler.sample(B) -> (items, labels, classes) with a leading member axis for a group.
    optimizer: AdamW (its lr and decay at `it`). terms: the run's StepTerms (batch size, grad clip, penalties);
    the returned loss is the data loss alone."""
    items, labels, classes = sampler.sample(terms.batch_size)
    exposure.add(classes)
    with autocast if autocast is not None else torch.autocast('cpu', enabled=False):
        out = forward(items, labels, record=tuple(sorted(terms.record)))
    loss = query_loss(out['logits'], labels)
    penalty = terms.penalty(out)
    (loss if penalty is None else loss + penalty).sum().backward()
    fault_point('train_step')  # test hook (no-op unless BURSTYICL_FAULT is set)
    if terms.grad_clip > 0:
        clip_gradients([p for g in optimizer.param_groups for p in g['params']], terms.grad_clip, loss.shape)
    optimizer.step(it)
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


# ---- forgetting: re-initialise chosen modules during training (Chen et al. 2023; Anand et al. 2024) ------

FORGET_MODULES = ('encoder', 'label_embedding', 'head', 'mlp')  # what forget_modules may name


def parse_forget_modules(text):
    """'encoder,label_embedding,head' (',' or '+' between names) -> a tuple in FORGET_MODULES order."""
    return parse_modules(text, 'forget_modules', FORGET_MODULES, everything=None)


def check_forgetting(config):
    """ValueError naming the forgetting key a run cannot start with (read by every run: check_all_read)."""
    every, until = config.get('forget_every', 0), config.get('forget_until', 0)
    for key, value in (('forget_every', every), ('forget_until', until)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{key}={value!r} must be an integer >= 0 (0: forget_every off, forget_until the whole run)")
    if until and not every:
        raise ValueError(f"forget_until={until} has no effect without forget_every > 0")
    parse_forget_modules(config.get('forget_modules', 'encoder,label_embedding,head'))


def forget_due(iter_num, config):
    """Re-initialise after completed step iter_num (and after its eval)? Every forget_every steps, while iter_num <
    forget_until (0: the whole run), as Anand et al.'s code counts and orders it: step k*forget_every is evaluated,
    then re-initialised; step forget_until no longer."""
    every, until = config['forget_every'], config['forget_until']
    return every > 0 and iter_num > 0 and iter_num % every == 0 and (until == 0 or iter_num < until)


def forgotten_names(state_keys, modules):
    """The model.state_dict() keys (parameters and buffers, e.g. BatchNorm statistics) of FORGET_MODULES `modules`."""
    prefixes = {'encoder': ('encoder.',), 'label_embedding': ('label_embedding.',), 'head': ('head.',)}
    def chosen(name):
        if name.startswith('blocks.') and name.split('.')[2] == 'mlp':
            return 'mlp' in modules
        return any(name.startswith(p) for m in modules for p in prefixes.get(m, ()))
    return [name for name in state_keys if chosen(name)]


def fresh_state(config, data, iter_num, names):
    """The named tensors of a newly initialised model (model.py's own init), built on the CPU from the CPU generator
    seeded by (seed, iter_num) and restored after: a resumed run, and a group member, draw exactly what their solo run
    draws, and the training stream is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(config['seed'] * 1_000_003 + iter_num)
        state = build_model(config, data).state_dict()
    return {name: state[name] for name in names}


def forget(tensors, fresh, optimizer_state, params):
    """Copy fresh values into a model's tensors (tensors: name -> the tensor to overwrite; a group passes member k's
    slices) and drop the AdamW state of those parameters (params: name -> the optimizer's parameter), which AdamW then
    starts again at zero moments and step 0, as the papers' AdamEF resets the embeddings' moments and step count."""
    with torch.no_grad():
        for name, value in fresh.items():
            tensors[name].copy_(value)
            if name in params:
                optimizer_state.pop(params[name], None)


# ---- curvature edit during training (Merullo et al. 2025's edit, applied every curvature_every steps) ------

def parse_curvature_modules(text):
    """'mlp' or 'mlp,head' (',' or '+' between names) or 'all' -> a tuple in curvature.MODULES order."""
    return parse_modules(text, 'curvature_modules', CURVATURE_MODULES)


def check_curvature(config):
    """ValueError naming the curvature-edit key a run cannot start with (read by every run: check_all_read)."""
    every, start = config.get('curvature_every', 0), config.get('curvature_start', 0)
    for key, value in (('curvature_every', every), ('curvature_start', start)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{key}={value!r} must be an integer >= 0 (0: curvature_every off, curvature_start "
                             f"from the first step)")
    if start and not every:
        raise ValueError(f"curvature_start={start} has no effect without curvature_every > 0")
    rho = config.get('curvature_rho', 0.9)
    if not isinstance(rho, (int, float)) or not 0 < rho <= 1:
        raise ValueError(f"curvature_rho={rho!r} must be in (0, 1]: the share of each weight's curvature mass kept")
    n = config.get('curvature_sequences', 1024)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"curvature_sequences={n!r} must be an integer >= 1")
    parse_curvature_modules(config.get('curvature_modules', 'mlp'))


def curvature_due(iter_num, config):
    """Edit after completed step iter_num (and after its eval, as forgetting)? Every curvature_every steps from step
    curvature_start on."""
    every = config['curvature_every']
    return every > 0 and iter_num > 0 and iter_num >= config['curvature_start'] and iter_num % every == 0


def curvature_edit(model, config, data, iter_num):
    """({'<linear>.weight': edited weight}, mean share of curvature mass removed) for a model (a run's, or a group
    member's loaded into the plain model): K-FAC factors over curvature_sequences fresh training sequences (the run's
    own sampler rules, its own seed and this step: a resumed run and a group member draw what their solo run draws;
    the training stream and torch's generator are untouched), labels sampled from the model's softmax (the paper's
    Fisher), then curvature.py's edit at curvature_rho. The AdamW moments are kept: the edit projects the weights, it
    does not restart them."""
    from curvature import curvature_bases, edited_weights, kfac_factors, linear_names
    from data import EpisodeSampler
    device = next(model.parameters()).device
    seed = config['seed'] * 1_000_003 + iter_num
    sampler = EpisodeSampler.from_config(data.train, data.class_labels, config, device, seed=seed,
                                         n_labels=data.n_labels)
    n, size = config['curvature_sequences'], config['batch_size']
    batches = (sampler.sample(min(size, n - i))[:2] for i in range(0, n, size))
    names = linear_names(model, parse_curvature_modules(config['curvature_modules']))
    bases = curvature_bases(kfac_factors(model, batches, names, size, seed))
    weights, stats = edited_weights(model, bases, names, config['curvature_rho'])
    return ({f'{name}.weight': w for name, w in weights.items()},
            sum(s['mass_removed'] for s in stats.values()) / len(stats))


# ---- eval rows and the files a finished run writes ---------------------------------------------

def weight_norm(decayed):
    """L2 norm of the decayed weights (what weight decay and l2 act on)."""
    if not decayed:
        return 0.0
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach().float())
                                                 for p in decayed])).item()


def eval_row(model, icl, iwl, config, iter_num, train_loss, decayed, wall_s, lr, autocast=None, probes=None):
    """One metrics.jsonl row: eval.evaluate's metrics (with the probes' when given) plus the step, tokens,
    loss and weight norm."""
    metrics = evaluate(model, icl, iwl, config['context_len'], config['eval_ways'], autocast=autocast, probes=probes)
    return {'iter': iter_num, 'tokens': iter_num * tokens_per_step(config), 'train_loss': train_loss,
            'lr': lr, **metrics, 'icl_chance': icl_chance(icl, config['eval_ways']), 'icl_episodes': len(icl),
            'weight_norm': weight_norm(decayed), 'wall_s': round(wall_s, 2)}


def tokens_per_step(config):
    return config['batch_size'] * (2 * config['context_len'] + 1)


def better_peak(row, best):
    """Does this eval row set a new peak ICL? Step 0 (the untrained model) never counts as a peak."""
    return row['iter'] > 0 and row['icl_acc'] > best['icl_acc']


def code_state():
    """The code this process loaded: HEAD's commit, with '-dirty' when a tracked Python file differs from it, and the
    tracked files that differ (so a report can say whether training or evaluation code changed under a run). Outside
    a git checkout (a downloaded ZIP) the commit is 'none (not a git checkout)' and the files are unknown (None)."""
    def git(*args):
        done = subprocess.run(['git', *args], cwd=HERE, capture_output=True, text=True, timeout=5)
        if done.returncode:
            raise subprocess.SubprocessError(done.stderr.strip())
        return done.stdout
    try:
        commit = git('rev-parse', 'HEAD').strip()
        changed = sorted(line[3:].split(' -> ')[-1].strip('"') for line in
                         git('status', '--porcelain', '--untracked-files=no').splitlines() if line.strip())
    except (OSError, subprocess.SubprocessError):
        return NO_CHECKOUT, None
    return commit + ('-dirty' if any(f.endswith('.py') for f in changed) else ''), changed


NO_CHECKOUT = 'none (not a git checkout)'
CODE_AT_START, CHANGED_AT_START = code_state()  # the code this process loaded (HEAD may move while a long run trains)


def cpu_model():
    """The CPU's model name (/proc/cpuinfo on Linux, else platform's answer)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith(('model name', 'Model', 'cpu model')):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine() or 'unknown'


def numerics(device_name):
    """What a run's float numbers depend on beyond its config: the code (as loaded when the process started, and the
    tracked files that differed from its commit), torch, the device, the CPU threads, the CPU kernel path torch takes
    (AVX2, AVX512, ...: sums are ordered differently per path) and the CPU model (MKL and oneDNN choose their kernels
    by vendor and model too). A rerun repeats its numbers bit for bit only where all of these match
    (tests/test_reproduce.py)."""
    return {'git_commit': CODE_AT_START, 'code_changes': CHANGED_AT_START, 'torch_version': torch.__version__,
            'device': device_name, 'threads': torch.get_num_threads(),
            'cpu_capability': torch.backends.cpu.get_cpu_capability(), 'cpu_model': cpu_model()}


def _spread(counts):
    counts = counts.float().cpu()
    return {'min': int(counts.min()), 'median': float(counts.median()), 'max': int(counts.max())}


def write_run_files(config, best, exposure, device_name):
    """summary.json and exposure.json of a finished run (from its metrics.jsonl); returns the summary."""
    out_dir = config['out_dir']
    final = read_metrics(out_dir)[-1]
    summary = {
        'peak_icl_acc': best['icl_acc'] if best['iter'] is not None else None, 'peak_icl_iter': best['iter'],
        'final_icl_acc': final['icl_acc'], 'final_iwl_acc': final['iwl_acc'], 'final_iter': final['iter'],
        'weight_decay': config['weight_decay'], 'l2': config['l2'], 'decay_modules': config.get('decay_modules', 'all'),
        'label_swap': config.get('label_swap', 0.0),
        'tokens_per_step': tokens_per_step(config), 'total_tokens': final['tokens'],
        'decay_exponent': decay_exponent(config),  # wd * sum of lr = lr*wd*steps at constant lr: how hard decay bites
        'exposure': {'query': _spread(exposure.query), 'seen': _spread(exposure.seen)},
        'wall_s': final['wall_s'], **numerics(device_name), 'config': config,
    }
    write_json(os.path.join(out_dir, 'summary.json'), summary)
    write_json(os.path.join(out_dir, 'exposure.json'),
               {'query_count': exposure.query.tolist(), 'seen_count': exposure.seen.tolist()})
    return summary


# ---- the loop's eval, log and stop block: train.py's loop, for each member of a group too ---------------

def eval_due(iter_num, last_eval_iter, config):
    """Evaluate (and checkpoint) every eval_interval steps and after the last step, once per step."""
    return (iter_num % config['eval_interval'] == 0 or iter_num == config['max_iters']) and iter_num > last_eval_iter


def evaluate_and_log(model, episodes, config, iter_num, train_loss, decayed, wall_s, lr, autocast, best, run):
    """One run's eval: its metrics row goes to metrics.jsonl and to its wandb run (run may be None).
    episodes: (icl, iwl) or (icl, iwl, probes). Returns (row, best), best being the peak ICL so far."""
    icl, iwl, *probes = episodes
    row = eval_row(model, icl, iwl, config, iter_num, train_loss, decayed, wall_s, lr, autocast,
                   probes=probes[0] if probes else None)
    if better_peak(row, best):
        best = {'icl_acc': row['icl_acc'], 'iter': iter_num}
    append_metrics(config['out_dir'], row)
    track(run, row)
    return row, best


def eval_line(row):
    return (f"eval {row['iter']}: icl {row['icl_acc']:.3f} (open {row['icl_acc_open']:.3f}) iwl {row['iwl_acc']:.3f} "
            f"ece {row['ece']:.3f} attn img {row['attn_match_image']:.2f} lbl {row['attn_match_label']:.2f}")


def checkpoint_run(config, state, iter_num):
    """ckpt.pt after an eval, and ckpt_<iter>.pt as well when keep_checkpoints lists this iter."""
    save_checkpoint(config['out_dir'], state)
    if iter_num in {int(s) for s in config['keep_checkpoints'].split(',') if s.strip()}:
        save_checkpoint(config['out_dir'], state, name=f'ckpt_{iter_num}.pt')


class StepRate:
    """Steps per second since the previous call (the log line's speed)."""

    def __init__(self, iter_num):
        self.time, self.iter = time.time(), iter_num

    def __call__(self, iter_num):
        now = time.time()
        rate = (iter_num - self.iter) / max(now - self.time, 1e-9)
        self.time, self.iter = now, iter_num
        return rate


def log_line(iter_num, loss, lr, steps_per_s, max_iters, members=1):
    """The line printed every log_interval steps; a group's loss is its members' mean."""
    eta_min = (max_iters - iter_num) / max(steps_per_s, 1e-9) / 60
    cells = f" ({steps_per_s * members:.1f} cell-steps/s)" if members > 1 else ''
    return (f"iter {iter_num}: {'mean ' if members > 1 else ''}loss {loss.mean().item():.4f}, lr {lr:.2e}, "
            f"{steps_per_s:.1f} steps/s{cells}, ETA {eta_min:.1f} min")


class StopFlag:
    """SIGTERM (SLURM pre-emption, kill) only sets this flag: the loop finishes its step, checkpoints and
    exits (stop_and_exit), so a requeued job resumes."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self.request)

    def request(self, signum, frame):
        self.requested = True


def stop_and_exit(checkpoints, runs, message, code=0):
    """Stop on request: save each (config, state) as its run's ckpt.pt, end each wandb run, print, exit."""
    for config, state in checkpoints:
        save_checkpoint(config['out_dir'], state)
    for run in runs:
        finish_tracking(run, code)
    print(message)
    sys.exit(code)


class NonFinite:
    """The first step whose loss was not finite, per member (shape () for a run, (K,) for a group), kept on
    the device so that no step waits for the host; read (one sync) only at evals, logs and stops."""

    def __init__(self, shape, device):
        self.first = torch.full(shape, -1, dtype=torch.long, device=device)
        self.reported = set()

    def update(self, loss, iter_num):
        self.first = torch.where((self.first < 0) & ~torch.isfinite(loss), iter_num, self.first)

    def new(self):
        """[(member, iter)] of the members whose loss went non-finite since the last call."""
        bad = [(k, it) for k, it in enumerate(self.first.view(-1).tolist()) if it >= 0 and k not in self.reported]
        self.reported.update(k for k, _ in bad)
        return bad


def finish_run(config, best, exposure, device_name, run):
    """A run that reached max_iters: summary.json and exposure.json written, its wandb run ended."""
    summary = write_run_files(config, best, exposure, device_name)
    finish_tracking(run)
    return summary
