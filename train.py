"""
Train a transformer on bursty few-shot sequences and track in-context vs in-weights learning.

    python train.py                                   # embedded synthetic default, CPU ok
    python train.py config/omniglot.py config/few.py --weight_decay=1e-3 --seed=1

Every eval_interval it appends a row to out_dir/metrics.jsonl and checkpoints atomically;
--init_from=resume continues a run exactly where it stopped (SIGTERM also checkpoints first).
"""
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# default config: the embedded synthetic run (ICL on held-out classes in minutes on a CPU)
# I/O
out_dir = 'out'
eval_interval = 250
log_interval = 50
init_from = 'scratch'       # 'scratch' or 'resume' (resume starts from scratch if there is no checkpoint)
overwrite = False           # allow a scratch run to replace an existing run in out_dir
keep_checkpoints = ''       # comma-separated iters whose checkpoint is also kept as ckpt_<iter>.pt
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
pixel_noise = 0.0           # omniglot: std of Gaussian noise added to every pixel (0-1 scale) while training
context_len = 8             # (item, label) pairs before the query
p_bursty = 0.9
bursty_shots = 3
ways = 2
zipf_alpha = 0.0            # 0 = uniform class distribution
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
beta1 = 0.9
beta2 = 0.999
grad_clip = 0.0             # clip the global grad norm at this value (0 = off)
lr_schedule = 'constant'    # 'inverse_sqrt' (Chan et al.), 'cosine' or 'constant', each after warmup
warmup_iters = 200
min_lr = 0.0                # cosine only
# system
device = 'auto'             # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...
dtype = 'bfloat16'          # autocast dtype on CUDA ('float32' to turn it off); CPU runs float32
compile = True              # torch.compile the model on CUDA (CPU runs eagerly: compile time dominates short runs)
compile_mode = 'default'    # torch.compile mode: 'default', 'reduce-overhead' (CUDA graphs: fewer launches) or 'max-autotune'
seed = 0                    # model init and training stream
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in config_keys}
# -----------------------------------------------------------------------------

from checkpoint import (CKPT, append_metrics, fault_point, has_checkpoint, load_checkpoint, read_metrics,
                        save_checkpoint, truncate_metrics, write_json)
from data import EpisodeSampler, build_dataset, build_eval_episodes
from eval import evaluate
from model import build_model, decay_exponent, learning_rate_at

# keys that may change when a run is resumed; any other difference means a different experiment
RESUMABLE_KEYS = {'out_dir', 'init_from', 'overwrite', 'max_iters', 'eval_interval', 'log_interval',
                  'keep_checkpoints', 'device', 'compile', 'compile_mode', 'dtype',
                  'data_dir', 'cache_dir'}


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def lr_at(it):
    return learning_rate_at(it, config)


def git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---- checks that need no data: fail before touching out_dir --------------------------------
if init_from not in ('scratch', 'resume'):
    fail(f"init_from={init_from!r} must be 'scratch' or 'resume'")
if lr_schedule not in ('inverse_sqrt', 'cosine', 'constant'):
    fail(f"lr_schedule={lr_schedule!r} must be 'inverse_sqrt', 'cosine' or 'constant'")
for key in ('weight_decay', 'learning_rate', 'grad_clip', 'warmup_iters', 'min_lr', 'dropout'):
    if globals()[key] < 0:
        fail(f"{key}={globals()[key]} must be >= 0")
for key in ('batch_size', 'max_iters', 'eval_interval', 'log_interval', 'n_eval_episodes'):
    if globals()[key] < 1:
        fail(f"{key}={globals()[key]} must be >= 1")
try:
    keep_iters = {int(s) for s in keep_checkpoints.split(',') if s.strip()}
except ValueError:
    fail(f"keep_checkpoints={keep_checkpoints!r} must be comma-separated iteration numbers")
if device == 'auto':
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
device_type = 'cuda' if device.startswith('cuda') else 'cpu'
if device_type == 'cuda' and not torch.cuda.is_available():
    fail(f"device={device!r} but CUDA is not available")
if compile_mode not in ('default', 'reduce-overhead', 'max-autotune'):
    fail(f"compile_mode={compile_mode!r} must be 'default', 'reduce-overhead' or 'max-autotune'")
if dtype not in ('bfloat16', 'float32'):
    fail(f"dtype={dtype!r} must be 'bfloat16' or 'float32'")

# ---- the run directory: resume, refuse, or start ------------------------------------------
os.makedirs(out_dir, exist_ok=True)
checkpoint = None
existing_run = has_checkpoint(out_dir) or bool(read_metrics(out_dir))
if init_from == 'resume' and has_checkpoint(out_dir):
    try:
        checkpoint = load_checkpoint(out_dir, map_location='cpu')
    except FileNotFoundError as e:
        fail(f"cannot resume: {e}")
    changed = sorted(k for k in config if k not in RESUMABLE_KEYS and checkpoint['config'].get(k) != config[k])
    if changed:
        fail(f"cannot resume {out_dir}: its run used a different config for "
             + ", ".join(f"{k} ({checkpoint['config'].get(k)!r} there, {config[k]!r} now)" for k in changed))
elif existing_run and not overwrite:
    fail(f"out_dir {out_dir!r} already holds a run; use --init_from=resume to continue it, "
         f"--overwrite=True to replace it, or another --out_dir")
elif existing_run and overwrite:
    print(f"overwrite=True: replacing the run in {out_dir}")
    for name in os.listdir(out_dir):
        if name.startswith('ckpt') or name in ('metrics.jsonl', 'summary.json', 'exposure.json'):
            os.remove(os.path.join(out_dir, name))
elif init_from == 'resume':
    print(f"init_from='resume' but {out_dir} has no checkpoint: starting from scratch")

# ---- data, model, optimizer -------------------------------------------------------------
torch.manual_seed(seed)
try:
    data = build_dataset(config).to(device)
    sampler = EpisodeSampler(data.train, data.class_labels, context_len, p_bursty, bursty_shots, ways,
                             zipf_alpha, seed=seed, device=device)
    icl_episodes, iwl_episodes = (e.to(device) for e in build_eval_episodes(data, config))
except (ValueError, FileNotFoundError) as e:
    fail(str(e))
model = build_model(config, data).to(device)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
decayed_params, _ = model.decayed_parameters()
print(f"model: {model.num_parameters():,} parameters, {n_layer} layers, d={n_embd}; "
      f"data: {data.name}, {data.train.n_classes} train / {data.holdout.n_classes} holdout classes, "
      f"{data.n_labels} labels; device {device}")

tokens_per_step = batch_size * (2 * context_len + 1)
query_count = torch.zeros(data.train.n_classes, dtype=torch.long, device=device)
seen_count = torch.zeros(data.train.n_classes, dtype=torch.long, device=device)
iter_num, last_eval_iter, wall_offset = 0, -1, 0.0
loss_sum = torch.zeros((), device=device)
loss_count = 0
best = {'icl_acc': -1.0, 'iter': None}
if checkpoint is not None:
    model.load_state_dict(checkpoint['model'])
    optimizer.load_state_dict(checkpoint['optimizer'])
    sampler.load_state_dict(checkpoint['sampler'])
    torch.set_rng_state(checkpoint['torch_rng'])
    if device_type == 'cuda' and checkpoint.get('cuda_rng') is not None:
        torch.cuda.set_rng_state(checkpoint['cuda_rng'])
    iter_num, last_eval_iter = checkpoint['iter_num'], checkpoint['last_eval_iter']
    wall_offset, best = checkpoint['wall_s'], checkpoint['best']
    loss_sum += checkpoint['loss_sum']
    loss_count = checkpoint['loss_count']
    query_count.copy_(checkpoint['query_count'])
    seen_count.copy_(checkpoint['seen_count'])
    rows = truncate_metrics(out_dir, last_eval_iter)
    print(f"resumed from iter {iter_num} ({len(rows)} metrics rows kept)")
    del checkpoint

# one compiled graph for the training forward (static shapes: batch and sequence length never change);
# eval calls the eager model because it also returns attention maps
train_model = torch.compile(model, mode=compile_mode) if (compile and device_type == 'cuda') else model
autocast = (torch.autocast(device_type='cuda', dtype=getattr(torch, dtype))
            if device_type == 'cuda' and dtype != 'float32' else nullcontext())


def state_dict():
    return {'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'sampler': sampler.state_dict(),
            'torch_rng': torch.get_rng_state(),
            'cuda_rng': torch.cuda.get_rng_state() if device_type == 'cuda' else None,
            'iter_num': iter_num, 'last_eval_iter': last_eval_iter, 'wall_s': wall_offset + time.time() - t0,
            'best': best, 'loss_sum': loss_sum.item(), 'loss_count': loss_count,
            'query_count': query_count.cpu(), 'seen_count': seen_count.cpu(), 'config': config}


# SIGTERM (SLURM pre-emption, kill): finish the current step, checkpoint, exit 0 so a requeue resumes
stop_requested = False


def request_stop(signum, frame):
    global stop_requested
    stop_requested = True


signal.signal(signal.SIGTERM, request_stop)

# ---- training loop ------------------------------------------------------------------------
first_bad_iter = torch.full((), -1, dtype=torch.long, device=device)  # tracked on device: no sync per step
t0 = time.time()
t_log, iter_log = t0, iter_num


def check_finite():
    bad = first_bad_iter.item()
    if bad >= 0:
        print(f"error: loss became non-finite at iter {bad} (lr {lr_at(bad):.3g}); stopping. "
              f"The last good checkpoint ({os.path.join(out_dir, CKPT)}, iter {last_eval_iter}) is kept.",
              file=sys.stderr)
        sys.exit(1)


while True:
    if (iter_num % eval_interval == 0 or iter_num == max_iters) and iter_num > last_eval_iter:
        check_finite()
        metrics = evaluate(model, icl_episodes, iwl_episodes, context_len, eval_ways, autocast=autocast)
        row = {'iter': iter_num, 'tokens': iter_num * tokens_per_step,
               'train_loss': loss_sum.item() / loss_count if loss_count else None,
               'lr': lr_at(iter_num), **metrics,
               'weight_norm': torch.linalg.vector_norm(torch.stack(
                   [torch.linalg.vector_norm(p.detach().float()) for p in decayed_params])).item() if decayed_params else 0.0,
               'wall_s': round(wall_offset + time.time() - t0, 2)}
        loss_sum.zero_()
        loss_count = 0
        if row['icl_acc'] > best['icl_acc']:
            best = {'icl_acc': row['icl_acc'], 'iter': iter_num}
        append_metrics(out_dir, row)
        last_eval_iter = iter_num
        print(f"eval {iter_num}: icl {row['icl_acc']:.3f} (open {row['icl_acc_open']:.3f}) iwl {row['iwl_acc']:.3f} "
              f"ece {row['ece']:.3f} attn img {row['attn_match_image']:.2f} lbl {row['attn_match_label']:.2f}")
        save_checkpoint(out_dir, state_dict())
        if iter_num in keep_iters:
            save_checkpoint(out_dir, state_dict(), name=f'ckpt_{iter_num}.pt')
    if iter_num >= max_iters:
        break
    if stop_requested:
        check_finite()
        save_checkpoint(out_dir, state_dict())
        print(f"SIGTERM: checkpointed at iter {iter_num}; rerun with --init_from=resume to continue")
        sys.exit(0)

    lr = lr_at(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr
    items, labels, classes = sampler.sample(batch_size)
    # index_add_ rather than bincount: bincount on CUDA syncs with the host to size its output
    query_count.index_add_(0, classes[:, -1], torch.ones_like(classes[:, -1]))
    seen_count.index_add_(0, classes.flatten(), torch.ones_like(classes.flatten()))
    with autocast:
        logits = train_model(items, labels)
    loss = F.cross_entropy(logits.float(), labels[:, -1])  # loss on the query token only
    loss.backward()
    fault_point('train_step')  # test hook (no-op unless BURSTYICL_FAULT is set)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss = loss.detach()
    first_bad_iter = torch.where((first_bad_iter < 0) & ~torch.isfinite(loss), iter_num, first_bad_iter)
    loss_sum += loss
    loss_count += 1
    iter_num += 1

    if iter_num % log_interval == 0:
        check_finite()
        now = time.time()
        steps_per_s = (iter_num - iter_log) / (now - t_log)
        eta_min = (max_iters - iter_num) / max(steps_per_s, 1e-9) / 60
        print(f"iter {iter_num}: loss {loss.item():.4f}, lr {lr:.2e}, {steps_per_s:.1f} steps/s, ETA {eta_min:.1f} min")
        t_log, iter_log = now, iter_num

# ---- summary ------------------------------------------------------------------------------
rows = read_metrics(out_dir)
final = rows[-1]


def spread(counts):
    counts = counts.float().cpu()
    return {'min': int(counts.min()), 'median': float(counts.median()), 'max': int(counts.max())}


summary = {
    'peak_icl_acc': best['icl_acc'], 'peak_icl_iter': best['iter'],
    'final_icl_acc': final['icl_acc'], 'final_iwl_acc': final['iwl_acc'], 'final_iter': final['iter'],
    'tokens_per_step': tokens_per_step, 'total_tokens': final['tokens'],
    'decay_exponent': decay_exponent(config),  # wd * sum of lr = lr*wd*steps at constant lr: how hard decay bites
    'exposure': {'query': spread(query_count), 'seen': spread(seen_count)},
    'wall_s': final['wall_s'], 'git_commit': git_commit(), 'torch_version': torch.__version__,
    'device': torch.cuda.get_device_name(device) if device_type == 'cuda' else 'cpu',
    'config': config,
}
write_json(os.path.join(out_dir, 'summary.json'), summary)
write_json(os.path.join(out_dir, 'exposure.json'),
           {'query_count': query_count.tolist(), 'seen_count': seen_count.tolist()})
print(f"done: peak icl {best['icl_acc']:.3f} at iter {best['iter']}, final icl {final['icl_acc']:.3f}, "
      f"final iwl {final['iwl_acc']:.3f}; wrote {out_dir}/summary.json")
