"""
Train a transformer on bursty few-shot sequences and track in-context vs in-weights learning.

    python train.py                                   # embedded synthetic default, CPU ok
    python train.py config/omniglot.py config/few.py --weight_decay=1e-3 --seed=1

Every eval_interval it appends a row to out_dir/metrics.jsonl and checkpoints atomically;
--init_from=resume continues a run exactly where it stopped (SIGTERM also checkpoints first);
--wandb_log=True also sends each row to a Weights & Biases run (tracking.py).
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
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------

from checkpoint import CKPT, KeyReads, read_metrics
from data import build_run_data
from model import build_model, learning_rate_at
from tracking import finish_tracking, require_wandb, start_tracking
from training import (Exposure, NonFinite, StepRate, StepTerms, StopFlag, check_all_read, check_config, checkpoint_run,
                      eval_due, eval_line, evaluate_and_log, finish_run, forget, forget_due, forgotten_names,
                      fresh_state, log_line, parse_forget_modules, read_run_dir, resolve_device, start_run_dir,
                      stop_and_exit, train_step)

config = KeyReads({k: globals()[k] for k in config_keys})  # notes the keys the run reads: one nothing reads stops it


def fail(message, kind='error'):
    print(f"{kind}: {message}", file=sys.stderr)
    sys.exit(2)


def lr_at(it):
    return learning_rate_at(it, config)


# ---- every check before anything is written: config, device, tracking, what out_dir holds ------------
try:
    wandb = require_wandb(config)  # imported only when wandb_log=True
except ImportError as e:
    fail(str(e), kind='config error')
try:
    check_config(config)
    device = resolve_device(device)
    checkpoint = read_run_dir(config)  # the run to resume, or None; refuses to lose a run
except ValueError as e:
    fail(str(e))
device_type = 'cuda' if device.startswith('cuda') else 'cpu'

# ---- data, model, optimizer (a run that cannot start stops here, before out_dir is touched) -------------
torch.manual_seed(config['seed'])
try:
    data, sampler, icl_episodes, iwl_episodes, probes = build_run_data(config, device)  # all on `device`
    model = build_model(config, data).to(device)
except (ValueError, FileNotFoundError) as e:
    fail(str(e))
optimizer = model.configure_optimizers(config['weight_decay'], config['learning_rate'],
                                       (config['beta1'], config['beta2']), device_type,
                                       decay_modules=config['decay_modules'])
decayed_params, _ = model.decayed_parameters(config['decay_modules'])
terms = StepTerms([config], decayed_params)  # batch size, grad clip and penalties: the step reads these, not globals
lr_at(0)  # the schedule's keys (the loop reads them at every step)
forgotten = forgotten_names(model.state_dict(), parse_forget_modules(config['forget_modules']))
try:
    check_all_read([config])  # a key nothing above read would be silently ignored: stop before out_dir is touched
except ValueError as e:
    fail(str(e))
print(f"model: {model.num_parameters():,} parameters, {n_layer} layers, d={n_embd}; "
      f"data: {data.name}, {data.train.n_classes} train / {data.holdout.n_classes} holdout classes, "
      f"{data.n_labels} labels; device {device}" + (f"; l2={l2:g} on the decayed group" if l2 else '')
      + (f"; label_swap={label_swap:g} (to {label_swap_to} labels)" if label_swap else ''))

exposure = Exposure(data.train.n_classes, device)
iter_num, last_eval_iter, wall_offset = 0, -1, 0.0
loss_sum = torch.zeros((), device=device)
loss_count = 0
best = {'icl_acc': -1.0, 'iter': None}  # peak ICL after step 0 (the untrained model's value is no peak)
wandb_id = None
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
    exposure.query.copy_(checkpoint['query_count'])
    exposure.seen.copy_(checkpoint['seen_count'])
    wandb_id = checkpoint.get('wandb_id')  # the wandb run this run logs to (kept even while wandb_log is off)

# ---- the run directory: only now is an old run replaced (overwrite) or cut back to its checkpoint --------
try:
    run = start_tracking(wandb, config, wandb_id)  # None unless wandb_log; continues wandb_id on resume
except ValueError as e:
    fail(str(e))
wandb_id = run.id if run is not None else wandb_id
rows = start_run_dir(config, checkpoint)
if checkpoint is not None:
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
            'query_count': exposure.query.cpu(), 'seen_count': exposure.seen.cpu(), 'config': dict(config),
            'wandb_id': wandb_id}


# ---- training loop ------------------------------------------------------------------------
stop = StopFlag()                       # SIGTERM: finish the step, checkpoint, exit 0 so a requeue resumes
non_finite = NonFinite((), device)      # the first non-finite loss, tracked on device: no sync per step
t0 = time.time()
step_rate = StepRate(iter_num)


def check_finite():
    for _, bad in non_finite.new():
        print(f"error: loss became non-finite at iter {bad} (lr {lr_at(bad):.3g}); stopping. "
              f"The last good checkpoint ({os.path.join(out_dir, CKPT)}, iter {last_eval_iter}) is kept.",
              file=sys.stderr)
        finish_tracking(run, exit_code=1)
        sys.exit(1)


while True:
    if eval_due(iter_num, last_eval_iter, config):
        check_finite()
        row, best = evaluate_and_log(model, (icl_episodes, iwl_episodes, probes), config, iter_num,
                                     loss_sum.item() / loss_count if loss_count else None, decayed_params,
                                     wall_offset + time.time() - t0, lr_at(iter_num), autocast, best, run)
        loss_sum.zero_()
        loss_count = 0
        last_eval_iter = iter_num
        print(eval_line(row))
        checkpoint_run(config, state_dict(), iter_num)
    if iter_num >= max_iters:
        break
    if stop.requested:
        check_finite()
        stop_and_exit([(config, state_dict())], [run],
                      f"SIGTERM: checkpointed at iter {iter_num}; rerun with --init_from=resume to continue")

    if forget_due(iter_num, config):  # forgetting after the eval of this step (so the eval sees what was learned)
        forget(model.state_dict(keep_vars=True), fresh_state(config, data, iter_num, forgotten), optimizer.state,
               dict(model.named_parameters()))
    lr = lr_at(iter_num)
    loss = train_step(train_model, optimizer, sampler, lr, exposure, terms, autocast)
    non_finite.update(loss, iter_num)
    loss_sum += loss
    loss_count += 1
    iter_num += 1

    if iter_num % log_interval == 0:
        check_finite()
        print(log_line(iter_num, loss, lr, step_rate(iter_num), max_iters))

# ---- summary ------------------------------------------------------------------------------
final = read_metrics(out_dir)[-1]
finish_run(config, best, exposure, torch.cuda.get_device_name(device) if device_type == 'cuda' else 'cpu', run)
print(f"done: peak icl {best['icl_acc']:.3f} at iter {best['iter']}, final icl {final['icl_acc']:.3f}, "
      f"final iwl {final['iwl_acc']:.3f}; wrote {out_dir}/summary.json")
