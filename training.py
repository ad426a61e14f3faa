"""
What every training run is made of besides its step (step.py), optimizer (optimizer.py) and interventions
(interventions.py), kept in one place so that train.py (one run or a group of K stacked runs, read top to bottom, one
loop) and bench.py train the same way:

- check_config:      a run's config checked before anything touches out_dir (clear errors); a check's reads are no use
                     (train.py forgets them), so a key only a check reads stops start-up (check_all_read);
- read_run_dir:      the checkpoint to resume, or a refusal, reading out_dir only;
- start_run_dir:     only once data and model are built: replace an old run or cut it back to its checkpoint;
- eval_row, write_run_files: the metrics.jsonl row and summary.json / exposure.json of a run;
- numerics, numerics_segments: what a run's floats depend on, for each part of a resumed or continued run;
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

from data import check_data_config, icl_chance
from checkpoint import (append_metrics, has_checkpoint, load_checkpoint, read_metrics, save_checkpoint, train_defaults,
                        truncate_metrics, write_json)
from eval import WrongMemory, evaluate
from interventions import check_curvature, check_forgetting
from model import decay_exponent, parse_decay_modules
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
    'overwrite': 'an out_dir that holds a run', 'wandb_project': 'wandb_log=True', 'wandb_group': 'wandb_log=True',
    **{k: 'curvature_every > 0' for k in ('curvature_start', 'curvature_rho', 'curvature_modules', 'curvature_sequences')}}

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
    if config['augment'] < 0 or (config['augment'] and config['dataset'] != 'omniglot'):
        raise ValueError(f"augment={config['augment']} must be >= 0, and 0 unless dataset='omniglot' (images; on the "
                         f"synthetic vectors within_class_noise is the within-class variation)")
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
                         f"(step.StepTerms, data.EpisodeSampler, model.py, ...), or name the runs that read it in "
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


# ---- eval rows and the files a finished run writes ---------------------------------------------

def weight_norm(decayed):
    """L2 norm of the decayed weights (what weight decay and l2 act on)."""
    if not decayed:
        return 0.0
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach().float())
                                                 for p in decayed])).item()


def eval_row(model, icl, iwl, config, iter_num, train_loss, decayed, wall_s, lr, autocast=None, probes=None,
             wrong_memory=None):
    """One metrics.jsonl row: eval.evaluate's metrics (with the probes' when given) plus the step, tokens,
    loss, weight norm and WrongMemory's share since the previous eval (None at step 0)."""
    metrics = evaluate(model, icl, iwl, autocast=autocast, probes=probes)
    return {'iter': iter_num, 'tokens': iter_num * tokens_per_step(config), 'train_loss': train_loss,
            'lr': lr, **metrics, 'icl_chance': icl_chance(icl), 'icl_episodes': len(icl),
            'weight_norm': weight_norm(decayed), 'wrong_memory': wrong_memory, 'wall_s': round(wall_s, 2)}


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


def cpu_model(cpuinfo='/proc/cpuinfo'):
    """The CPU's model name and, on x86, its family and model numbers: a virtual machine may name two generations alike
    ('AMD EPYC' for an AVX2-only and an AVX512 part), and their kernels' floats differ (/proc/cpuinfo on Linux, else
    platform's answer)."""
    fields = {}
    try:
        with open(cpuinfo) as f:
            for line in f:   # the first processor's values (an ARM board names its Model in a block of its own)
                key, _, value = line.partition(':')
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get('model name') or fields.get('Model') or fields.get('cpu model')
    if name is None:
        import platform
        return platform.processor() or platform.machine() or 'unknown'
    if 'cpu family' in fields and fields.get('model', '').isdigit():
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def numerics(device_name):
    """What a run's float numbers depend on beyond its config: the code (as loaded when the process started, and the
    tracked files that differed from its commit), torch, the device, the CPU threads, the CPU kernel path torch takes
    (AVX2, AVX512, ...: sums are ordered differently per path) and the CPU model (MKL and oneDNN choose their kernels
    by vendor and model too). A rerun repeats its numbers bit for bit only where all of these match
    (tests/test_reproduce.py)."""
    return {'git_commit': CODE_AT_START, 'code_changes': CHANGED_AT_START, 'torch_version': torch.__version__,
            'device': device_name, 'threads': torch.get_num_threads(),
            'cpu_capability': torch.backends.cpu.get_cpu_capability(), 'cpu_model': cpu_model()}


def numerics_segments(checkpoint, iter_num, device_name):
    """The numerics each part of a run ran under: a resumed run (an interrupted cell, or one continued to a longer
    budget) may change code, threads or CPU between its parts, and its summary's own numerics name only the last
    process. [{'from_iter', **numerics}], a new part added only where something differs from the last one; a
    checkpoint from before this record gives a first part whose numerics are 'not recorded'."""
    parts = list((checkpoint or {}).get('numerics_segments') or [])
    if checkpoint is not None and not parts:
        parts = [{'from_iter': 0, 'numerics': 'not recorded'}]
    now = numerics(device_name)
    if not parts or {k: v for k, v in parts[-1].items() if k != 'from_iter'} != now:
        parts.append({'from_iter': iter_num, **now})
    return parts


def _spread(counts):
    counts = counts.float().cpu()
    return {'min': int(counts.min()), 'median': float(counts.median()), 'max': int(counts.max())}


def write_run_files(config, best, exposure, segments):
    """summary.json and exposure.json of a finished run (from its metrics.jsonl); returns the summary. Its numerics are
    this process's, the last of segments (numerics_segments: those of every part of the run)."""
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
        'wall_s': final['wall_s'], **{k: v for k, v in segments[-1].items() if k != 'from_iter'},
        'numerics_segments': segments, 'config': config,
    }
    write_json(os.path.join(out_dir, 'summary.json'), summary)
    write_json(os.path.join(out_dir, 'exposure.json'),
               {'query_count': exposure.query.tolist(), 'seen_count': exposure.seen.tolist()})
    return summary


# ---- the loop's eval, log and stop block: train.py's loop, for each member of a group too ---------------

def eval_due(iter_num, last_eval_iter, config):
    """Evaluate (and checkpoint) every eval_interval steps and after the last step, once per step."""
    return (iter_num % config['eval_interval'] == 0 or iter_num == config['max_iters']) and iter_num > last_eval_iter


def evaluate_and_log(model, episodes, config, iter_num, train_loss, decayed, wall_s, lr, autocast, best, run,
                     wrong_memory=None):
    """One run's eval: its metrics row goes to metrics.jsonl and to its wandb run (run may be None).
    episodes: (icl, iwl) or (icl, iwl, probes). Returns (row, best), best being the peak ICL so far."""
    icl, iwl, *probes = episodes
    row = eval_row(model, icl, iwl, config, iter_num, train_loss, decayed, wall_s, lr, autocast,
                   probes=probes[0] if probes else None, wrong_memory=wrong_memory)
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


def finish_run(config, best, exposure, run, segments):
    """A run that reached max_iters: summary.json and exposure.json written, its wandb run ended."""
    summary = write_run_files(config, best, exposure, segments)
    finish_tracking(run)
    return summary
