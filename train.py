"""
Train a transformer on bursty few-shot sequences and track in-context vs in-weights learning.

    python train.py                                   # embedded synthetic default, CPU ok
    python train.py config/omniglot.py config/few.py --weight_decay=1e-3 --seed=1
    python train.py --seed=0 --out_dir=a :: --seed=1 --weight_decay=1e-2 --out_dir=b   # a group of 2
    python train.py cells.json                        # a group: a JSON list of argument lists (what grid.py writes)

Every eval_interval it appends a row to out_dir/metrics.jsonl and checkpoints atomically;
--init_from=resume continues a run exactly where it stopped (SIGTERM also checkpoints first);
--wandb_log=True also sends each row to a Weights & Biases run (tracking.py).

A group (runs split by '::') trains K runs as one stacked model (group.py) through this same loop: each member gets
exactly the arguments its own run would, and writes exactly that run's files and numbers (a member's folder resumes
with a plain train.py, and back). Members may differ in any key but training.GROUP_SHARED (refused at start-up).
"""
import os
import sys
import time
from contextlib import nullcontext

import torch

# -----------------------------------------------------------------------------
# default config: the embedded synthetic run (ICL on held-out classes in minutes on a CPU)
# I/O
out_dir = 'out'
eval_interval = 250
log_interval = 50
init_from = 'scratch'       # 'scratch' or 'resume' (resume starts from scratch if there is no checkpoint)
overwrite = False           # allow a scratch run to replace an existing run in out_dir
keep_checkpoints = ''       # comma-separated iters whose checkpoint is also kept as ckpt_<iter>.pt
# wandb logging (tracking.py): every metrics row to the run's history; off unless asked (pip install wandb)
wandb_log = False
wandb_project = 'burstyicl'
wandb_run_name = ''         # '' = out_dir's folder name (a grid cell's name)
wandb_group = ''            # grid.py puts its cells in a group named after the grid folder
# data
dataset = 'synthetic'       # 'synthetic' or 'omniglot'
data_seed = 0               # fixes the data, holdout split and eval episodes (same in every grid cell)
n_train_classes = 16000
n_holdout_classes = 1000
n_labels = 32               # label vocabulary; fixed across Few/Many cells
label_mode = 'shared'       # 'per_class' (class k -> label k) or 'shared' (seeded random class -> label)
item_dim = 16               # synthetic: vector dimension (16: the match is learned ~2x sooner than at 64)
exemplars_per_class = 20    # synthetic: finite exemplars per class (0 = fresh noise on every draw)
within_class_noise = 0.1    # synthetic: eps in x = (mu + eps*eta)/sqrt(1+eps^2)
data_dir = '../shared/data/omniglot'  # omniglot: holds omniglot-py/images_{background,evaluation} (relative: from the repo root)
cache_dir = '~/.cache/burstyicl'      # omniglot: decoded uint8 arrays, rebuilt when the source files change
omniglot_classes = 'all_exemplars'    # omniglot: 'all_exemplars' (1623 characters) or 'augmented' (x8 flips/rotations)
image_size = 105            # omniglot: images downsampled to image_size x image_size (105 = original)
augment = 0.0               # omniglot: per-exemplar random affine warp while training, strength (1: rotation up to
                            # +-30 deg, shear +-15 deg, scale +-15%, shift +-10%; model.augment_thetas), 0 = off
pixel_noise = 0.0           # omniglot: std of Gaussian noise added to every pixel (0-1 scale) while training
context_len = 8             # (item, label) pairs before the query
p_bursty = 0.9
bursty_shots = 3
ways = 2
zipf_alpha = 0.0            # 0 = uniform class distribution
label_swap = 0.0            # fraction of training sequences whose query class gets one random new label (Bratulic 2025)
label_swap_to = 'train'     # the new label: 'train' = another label some training class owns (Bratulic's rule),
                            # 'all' = any other label of the n_labels (the rule before 2026-12-01; runs older than
                            # this key resume and report as 'all')
relabel_every = 0           # every this many steps the training classes get a fresh class->label map (a permutation of
                            # the labels they own, seeded by data_seed and the period): memorisation made wrong
                            # without label noise (0 = off). IWL is scored against the map training uses now
p_copy = 0.0                # fraction of bursty training sequences made of instance copies (Bratulic 2025's
                            # sequence_with_copy at 1): the query's class is the query itself, other classes one item
eval_ways = 2
eval_shots = 4
n_eval_episodes = 1024
# model
n_layer = 2
n_head = 8
n_embd = 64
dropout = 0.0
# optimizer
batch_size = 64
max_iters = 5000
learning_rate = 2e-3
weight_decay = 0.0          # AdamW decoupled decay on Linear/Conv weights only
l2 = 0.0                    # classical L2: 1/2*l2*||w||^2 added to the loss, same weights as weight_decay
decay_modules = 'all'       # whose Linear/Conv weights weight_decay and l2 act on: 'all' or a comma list of
                            # encoder, attn, mlp, head (e.g. 'mlp,head': only the weights that can memorise)
beta1 = 0.9
beta2 = 0.999
grad_clip = 0.0             # clip the global grad norm at this value (0 = off)
forget_every = 0            # re-initialise forget_modules every this many steps, with fresh AdamW state (0 = off;
                            # active forgetting, Chen et al. 2023, as Anand et al. 2024's code does it)
forget_until = 0            # forget only before this step (Anand et al.'s temporary forgetting; 0 = the whole run)
forget_modules = 'encoder,label_embedding,head'  # a comma list of encoder, label_embedding, head, mlp. The papers reset
                            # the token embeddings, tied to the output layer: here the item encoder, the label
                            # embedding and the head
curvature_every = 0         # every this many steps keep only the highest-curvature components of curvature_modules'
                            # weights (Merullo et al. 2025's K-FAC edit, curvature.py), AdamW moments kept (0 = off)
curvature_rho = 0.9         # the share of each weight's curvature mass kept (1 = no edit)
curvature_modules = 'mlp'   # 'all' or a comma list of encoder, attn, mlp, head (Linear weights; the paper edits MLPs)
curvature_start = 0         # edit only from this step on (0 = from the first curvature_every)
curvature_sequences = 1024  # fresh training sequences the K-FAC factors are taken over at each edit
lr_schedule = 'constant'    # 'inverse_sqrt' (Chan et al.), 'cosine' or 'constant', each after warmup
warmup_iters = 200
min_lr = 0.0                # cosine only
# system
device = 'auto'             # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...
dtype = 'bfloat16'          # autocast dtype on CUDA ('float32' to turn it off); CPU runs float32
compile = True              # torch.compile the model on CUDA (CPU runs eagerly: compile time dominates short runs)
compile_mode = 'reduce-overhead'  # torch.compile mode: 'reduce-overhead' (CUDA graphs: 3.4x 'default' on the paper cell,
                                  # H200), 'default' or 'max-autotune'
seed = 0                    # model init and training stream
# A run made before a key existed resumes and reports with the key at its default above, unless that run behaved
# otherwise: then its value for such runs is here (checkpoint.saved_config fills it in).
older_runs = {'label_swap_to': 'all'}
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
from training import member_arguments  # noqa: E402
try:
    runs = member_arguments(sys.argv[1:])  # [arguments] for one run; a group: each member's (the first one's go below)
except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
sys.argv[1:] = runs[0]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------

import interventions
from checkpoint import CKPT, KeyReads
from data import build_run_data, scored_at
from eval import WrongMemory
from group import GroupExposure, GroupSampler, stack_group
from model import build_model, learning_rate_at, weight_decay_at
from optimizer import AdamW
from step import Exposure, StepTerms, train_step
from tracking import finish_tracking, require_wandb, start_tracking
from training import (NonFinite, StepRate, StopFlag, check_all_read, check_config, check_members, checkpoint_run,
                      eval_due, eval_line, evaluate_and_log, finish_run, log_line, numerics_segments, parse_train_args,
                      read_run_dir, resolve_device, start_run_dir, stop_and_exit)

# each run's config, noting the keys it reads (one nothing reads stops the run); `config`, the first, also holds the
# keys a group's members share (training.GROUP_SHARED)
configs = [KeyReads({k: globals()[k] for k in config_keys}), *(KeyReads(parse_train_args(a)) for a in runs[1:])]
config, K = configs[0], len(configs)


def fail(message, kind='error'):
    print(f"{kind}: {message}", file=sys.stderr)
    sys.exit(2)


def lr_at(it):
    return learning_rate_at(it, config)


# ---- every check before anything is written: config, device, tracking, what each out_dir holds ---------
try:
    wandb = require_wandb(config)  # imported only when wandb_log=True
except ImportError as e:
    fail(str(e), kind='config error')
try:
    for c in configs:
        check_config(c)
    check_members(configs)
    device = resolve_device(config['device'])
    checkpoints = [read_run_dir(c) for c in configs]  # the run to resume, or None; refuses to lose a run
except ValueError as e:
    fail(str(e))
for c in configs:
    c.read.clear()  # a check's read is no use: a key that only a check reads stops the run at check_all_read
if len({ck['iter_num'] if ck else 0 for ck in checkpoints}) > 1:
    fail("members are at different steps (" + ", ".join(f"{c['out_dir']}: {ck['iter_num'] if ck else 0}"
                                                        for c, ck in zip(configs, checkpoints))
         + "); group cells that are at the same step, or run them one by one")
device_type = 'cuda' if device.startswith('cuda') else 'cpu'

# ---- data, models, optimizer (a run that cannot start stops here, before any out_dir is touched) ---------
models, datas, samplers, episodes, data_cache = [], [], [], [], []
try:
    for c in configs:
        torch.manual_seed(c['seed'])  # a member's init is its own run's
        data, sampler, icl, iwl, probes = build_run_data(c, device, cache=data_cache)  # one copy of the same data
        models.append(build_model(config, data).to(device))  # one architecture (GROUP_SHARED)
        datas.append(data)
        samplers.append(sampler)
        episodes.append((icl, iwl, probes))
except (ValueError, FileNotFoundError) as e:
    fail(str(e))
model = models[0]  # a run trains it; a group evaluates and checkpoints each member through it
decayed = [model.decayed_parameters(c['decay_modules'])[0] for c in configs]  # what each member's weight norm reads
exposures = [Exposure(s.bank.n_classes, device) for s in samplers]
wrong_memory = WrongMemory(configs, datas, device)
if K == 1:
    stacked, optimizer = model, AdamW(configs, model, dict(model.named_parameters()), device_type == 'cuda')
    terms = StepTerms(configs, decayed[0])  # batch size, grad clip and penalties: the step reads these, not globals
    sampler, exposure = samplers[0], exposures[0]
else:  # K members as one stacked model: the same step with a leading member axis on every tensor
    stacked, optimizer, terms = stack_group(models, configs, device_type)
    sampler, exposure = GroupSampler(samplers), GroupExposure(exposures)
    del models[1:]
state_keys = list(model.state_dict().keys())
forgotten = interventions.forgotten_names(state_keys, interventions.parse_forget_modules(config['forget_modules']))
try:
    for c in configs:  # the keys the loop reads: the schedules' (the optimizer's, at every step), the interventions'
        learning_rate_at(0, c), weight_decay_at(0, c)
        interventions.forget_due(0, c), interventions.curvature_due(0, c)
    check_all_read(configs)  # a key nothing above read would be silently ignored: stop before out_dir is touched
except ValueError as e:
    fail(str(e))
print(f"model: {model.num_parameters():,} parameters, {n_layer} layers, d={n_embd}; "
      f"data: {data.name}, {data.train.n_classes} train / {data.holdout.n_classes} holdout classes, "
      f"{data.n_labels} labels; device {device}" + (f"; l2={l2:g} on the decayed group" if l2 else '')
      + (f"; label_swap={label_swap:g} (to {label_swap_to} labels)" if label_swap else ''))
if K > 1:
    differ = [k for k in config if len({repr(c[k]) for c in configs}) > 1 and k != 'out_dir']
    print(f"group: {K} members" + ("; eager: compile is not applied to the stacked model" if compile and device_type == 'cuda' else ''))
    for c in configs:
        print(f"  {c['out_dir']}: " + (", ".join(f"{k} {c[k]!r}" for k in differ) or 'same config as the others'))

iter_num, last_eval_iter, wall_offset = 0, -1, 0.0
loss_sum = torch.zeros(K, device=device)
loss_count = 0
best = [{'icl_acc': -1.0, 'iter': None} for _ in configs]  # peak ICL after step 0 (the untrained model's is no peak)
if checkpoints[0] is not None:
    for k, ck in enumerate(checkpoints):
        model.load_state_dict(ck['model']) if K == 1 else stacked.load_member_state(k, ck['model'])
        samplers[k].load_state_dict(ck['sampler'])
        best[k], loss_sum[k] = ck['best'], ck['loss_sum']
        exposures[k].query.copy_(ck['query_count'])
        exposures[k].seen.copy_(ck['seen_count'])
        wrong_memory.load(k, ck.get('wrong_memory'))
    optimizer.load_state_dicts([ck['optimizer'] for ck in checkpoints])
    torch.set_rng_state(checkpoints[0]['torch_rng'])
    if device_type == 'cuda' and checkpoints[0].get('cuda_rng') is not None:
        torch.cuda.set_rng_state(checkpoints[0]['cuda_rng'])
    iter_num, last_eval_iter = checkpoints[0]['iter_num'], checkpoints[0]['last_eval_iter']
    wall_offset, loss_count = checkpoints[0]['wall_s'], checkpoints[0]['loss_count']

# ---- the run directories: only now is an old run replaced (overwrite) or cut back to its checkpoint ------
try:  # one wandb run per member, continuing the one in its checkpoint (kept even while wandb_log is off)
    tracked = [start_tracking(wandb, c, ck and ck.get('wandb_id')) for c, ck in zip(configs, checkpoints)]
except ValueError as e:
    fail(str(e))
wandb_ids = [run.id if run is not None else ck and ck.get('wandb_id') for run, ck in zip(tracked, checkpoints)]
for c, ck in zip(configs, checkpoints):
    rows = start_run_dir(c, ck)
if checkpoints[0] is not None:
    print(f"resumed from iter {iter_num} ({len(rows)} metrics rows kept)")
device_name = torch.cuda.get_device_name(device) if device_type == 'cuda' else 'cpu'
segments = [numerics_segments(ck, iter_num, device_name) for ck in checkpoints]  # what each part of the run ran under
del checkpoints

# one compiled graph for a run's training forward (static shapes: batch and sequence length never change);
# eval calls the eager model because it also returns attention maps
train_model = torch.compile(model, mode=compile_mode) if (compile and device_type == 'cuda' and K == 1) else stacked
autocast = (torch.autocast(device_type='cuda', dtype=getattr(torch, dtype))
            if device_type == 'cuda' and dtype != 'float32' else nullcontext())


def member_tensors(k):
    """Member k's parameters and buffers by name, a run's own tensors (a group's: views of row k): what an
    intervention between steps edits in place."""
    if K == 1:
        return model.state_dict(keep_vars=True)
    return {name: t[k] for name, t in {**stacked.params, **stacked.buffers}.items()}


def member_state(k):
    """Member k's checkpoint: a solo run's (model.state_dict() keys, a torch AdamW state_dict)."""
    return {'model': model.state_dict() if K == 1 else stacked.member_state(k, state_keys),
            'optimizer': optimizer.state_dict(k), 'sampler': samplers[k].state_dict(),
            'torch_rng': torch.get_rng_state(),
            'cuda_rng': torch.cuda.get_rng_state() if device_type == 'cuda' else None,
            'iter_num': iter_num, 'last_eval_iter': last_eval_iter, 'wall_s': wall_offset + time.time() - t0,
            'best': best[k], 'loss_sum': loss_sum[k].item(), 'loss_count': loss_count,
            'wrong_memory': wrong_memory.state(k),
            'query_count': exposures[k].query.cpu(), 'seen_count': exposures[k].seen.cpu(), 'config': dict(configs[k]),
            'group': [c['out_dir'] for c in configs], 'wandb_id': wandb_ids[k], 'numerics_segments': segments[k]}


# ---- training loop ------------------------------------------------------------------------
stop = StopFlag()                       # SIGTERM: finish the step, checkpoint, exit 0 so a requeue resumes
non_finite = NonFinite(() if K == 1 else (K,), device)  # the first non-finite loss, on device: no sync per step
failed = set()                          # members whose loss became non-finite: they keep their last good checkpoint
t0 = time.time()
step_rate = StepRate(iter_num)


def check_finite():
    for k, bad in non_finite.new():
        failed.add(k)
        print(f"error: {configs[k]['out_dir']}: loss became non-finite at iter {bad} (lr {lr_at(bad):.3g}); "
              f"{'this member' if K > 1 else 'the run'} stops here. Its last good checkpoint "
              f"({os.path.join(configs[k]['out_dir'], CKPT)}) is kept.", file=sys.stderr)
        finish_tracking(tracked[k], exit_code=1)


def live():
    return [(k, c) for k, c in enumerate(configs) if k not in failed]


while True:
    if eval_due(iter_num, last_eval_iter, config):
        check_finite()
        evals = []
        for k, c in live():
            if K > 1:
                model.load_state_dict(stacked.member_state(k, state_keys))
            row, best[k] = evaluate_and_log(model, scored_at(episodes[k], samplers[k], iter_num), c, iter_num,
                                            loss_sum[k].item() / loss_count if loss_count else None, decayed[k],
                                            wall_offset + time.time() - t0, lr_at(iter_num), autocast, best[k],
                                            tracked[k], wrong_memory.share(k))
            evals.append(row)
        loss_sum.zero_()
        loss_count = 0
        wrong_memory.reset()
        last_eval_iter = iter_num
        for k, c in live():
            checkpoint_run(c, member_state(k), iter_num)
        if evals:
            print(eval_line(evals[0]) if K == 1 else f"eval {iter_num}: icl " + " ".join(
                f"{r['icl_acc']:.3f}" for r in evals) + " | iwl " + " ".join(f"{r['iwl_acc']:.3f}" for r in evals),
                flush=True)
    if iter_num >= max_iters or len(failed) == K:
        break
    if stop.requested:
        check_finite()
        stop_and_exit([(c, member_state(k)) for k, c in live()], [tracked[k] for k, _ in live()],
                      f"SIGTERM: checkpointed at iter {iter_num}; rerun with --init_from=resume to continue",
                      1 if failed else 0)

    # the interventions between steps, after this step's eval: each member edited as its solo run
    if interventions.forget_due(iter_num, config):  # each member re-drawn from its own seed
        for k, c in live():
            interventions.forget(member_tensors(k), interventions.fresh_state(c, datas[k], iter_num, forgotten),
                                 optimizer.inner.state, optimizer.params)
    for k, c in live():  # the curvature edit, each member on its own weights and sequences
        if interventions.curvature_due(iter_num, c):
            t_edit = time.time()
            if K > 1:
                model.load_state_dict(stacked.member_state(k, state_keys))
            weights, removed = interventions.curvature_edit(model, c, datas[k], iter_num)
            tensors = member_tensors(k)
            with torch.no_grad():
                for name, w in weights.items():
                    tensors[name].copy_(w)
            print(f"curvature edit{' ' + c['out_dir'] if K > 1 else ''} at iter {iter_num}: {removed:.3f} of the "
                  f"mass removed (mean over weights), {time.time() - t_edit:.2f} s", flush=True)
    wrong_memory.measure(model, iter_num, None if K == 1 else
                         lambda k: model.load_state_dict(stacked.member_state(k, state_keys)), autocast)
    loss = train_step(train_model, optimizer, sampler, iter_num, exposure, terms, autocast)
    non_finite.update(loss, iter_num)
    loss_sum += loss
    loss_count += 1
    iter_num += 1

    if iter_num % log_interval == 0:
        check_finite()
        print(log_line(iter_num, loss, lr_at(iter_num - 1), step_rate(iter_num), max_iters, members=K), flush=True)

# ---- summary ------------------------------------------------------------------------------
for k, c in live():
    summary = finish_run(c, best[k], exposures[k], tracked[k], segments[k])
    print(f"done{' ' + c['out_dir'] if K > 1 else ''}: peak icl {best[k]['icl_acc']:.3f} at iter {best[k]['iter']}, "
          f"final icl {summary['final_icl_acc']:.3f}, final iwl {summary['final_iwl_acc']:.3f}; "
          f"wrote {c['out_dir']}/summary.json")
sys.exit(1 if failed else 0)
