"""
Speed of the pieces that set a grid's wall time, measured in one run (after nanoGPT's bench.py):

 1. sampler: sequences/s of data.EpisodeSampler vs a straightforward per-sequence numpy sampler
    (same sequence rules, one sequence at a time, like the DeepMind reference generator), on
    105x105 uint8 images (random pixels, Omniglot's shape) and on the synthetic vectors;
 2. train:   steps/s and ms/step of the embedded default (train.py's defaults) and of the paper cell
    (12 layers d64 + ResNet encoder on 105x105 images, batch 32), eager vs torch.compile,
    float32 vs bfloat16 autocast;
 3. share:   the part of a training step spent sampling, and in eval (amortised over eval_interval);
 4. jobs:    aggregate steps/s of N bench.py workers sharing the device (decides grid --jobs);
 5. group:   cell-steps/s of K cells trained as one stacked model (a train.py group, grid --group_size) vs one solo step;
 6. profile: where the time of one training step goes (torch.profiler), by part: sampling, the ResNet's forward and
    backward, the transformer's forward and backward, the optimizer; by default for the Omniglot CPU cell
    (config/omniglot_small.py: 14x14 images, batch 32) at 4 and at 12 layers ('omniglot4', 'omniglot12').

    python bench.py                          # every section, CUDA if present
    python bench.py --quick                  # small counts: < 2 minutes on a CPU
    python bench.py --sections=sampler,jobs --device=cpu --json_out=bench.json
    python bench.py --sections=train,profile --cells=omniglot4,omniglot12 --device=cpu   # the Omniglot CPU step

It prints a table and, last, one JSON line with every number ('n/a: reason' where a combination
failed or does not apply). No numbers are asserted anywhere: they go in the README.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch

# -----------------------------------------------------------------------------
sections = 'sampler,train,share,jobs,group,profile'   # comma-separated subset to run
quick = False               # small step counts (whole run < 2 minutes on a CPU)
device = 'auto'             # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...
json_out = ''               # also write the JSON result to this file
threads = 0                 # torch intra-op threads (0 = 1 on CPU, torch's default on CUDA)
seed = 0
# sampler
sampler_batches = '32,1024'
image_classes = 1600        # random uint8 images per class bank: 1600 x 20 x 105 x 105 = 353 MB
image_size = 105
exemplars = 20
min_time = 1.5              # seconds per sampler measurement (best of 3 windows, each >= 2 calls)
# train
cells = 'default,paper'     # and 'omniglot4', 'omniglot12': config/omniglot_small.py's cell at 4 / 12 layers
train_combos = 'auto'       # 'auto' or e.g. 'eager-fp32,compile-bf16' (auto: all four; CPU: no compile if quick or paper)
compile_mode = 'default'    # torch.compile mode; 'reduce-overhead' = CUDA graphs (fewer launches) for the paper cell
tf32 = False                # CUDA: TF32 float32 matmuls/convs (train.py does not turn them on: off = its numbers)
cudnn_benchmark = False     # CUDA: cudnn autotuning of the ResNet convs (train.py does not turn it on)
warmup_steps = 5
train_steps = 50            # timed steps per combination (paper cell on CPU: a fifth of this)
# share
eval_interval = 250
n_eval_episodes = 1024
# jobs
jobs = 'auto'               # 'auto' (CPU: 1,2; CUDA: 1,2,4,8) or e.g. '1,2,4'
jobs_cell = 'default'
jobs_seconds = 5.0          # timed wall seconds per worker, all workers timed together
jobs_threads = 0            # torch threads per worker (0 = cores // N)
# group (a train.py group: K cells as one stacked model)
group_sizes = '1,2,4,8,16,30'
group_cell = 'default'      # 'default' or 'paper'
group_steps = 20            # timed steps per K (quick: 4)
# profile
profile_cells = 'omniglot4,omniglot12'
profile_steps = 10          # profiled steps per cell (after warmup_steps)
# internal: worker mode for the jobs section
worker = False
worker_sync = ''
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
sys.argv = [a + '=True' if a in ('--quick', '--worker') else a for a in sys.argv]  # bare flags
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------

from data import ClassBank, Dataset, EpisodeSampler, assign_labels, build_dataset, build_eval_episodes
from eval import evaluate
from model import build_model
from group import GroupExposure, GroupSampler, stack_group
from checkpoint import train_defaults
from optimizer import AdamW
from step import Exposure, StepTerms, train_step

HERE = os.path.dirname(os.path.abspath(__file__))
DEEPMIND_SEQ_PER_S = 1000   # the reference generator's rate on one core (shared/notes/findings.md), not run here
if quick:
    min_time, warmup_steps, train_steps = min(min_time, 0.45), min(warmup_steps, 2), min(train_steps, 10)
    image_classes, jobs_seconds = min(image_classes, 200), min(jobs_seconds, 2.0)
    group_steps, group_sizes = min(group_steps, 4), ','.join(group_sizes.split(',')[:3])
if device == 'auto':
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
device_type = 'cuda' if device.startswith('cuda') else 'cpu'
if device_type == 'cuda' and not torch.cuda.is_available():
    print(f"error: device={device!r} but CUDA is not available", file=sys.stderr)
    sys.exit(2)
# one CPU thread by default: the per-sequence reference is single-threaded (a fair ratio), and on a shared,
# loaded CPU a 2-thread torch step stalls on scheduler ticks (measured 1 s/step vs 20 ms at 1 thread)
if threads > 0 or device_type == 'cpu':
    torch.set_num_threads(threads if threads > 0 else 1)
wanted = {s.strip() for s in sections.split(',') if s.strip()}
unknown = wanted - {'sampler', 'train', 'share', 'jobs', 'group', 'profile'}
if unknown:
    print(f"error: sections={sections!r} names unknown section(s) {sorted(unknown)}; "
          f"choose from sampler,train,share,jobs,group,profile", file=sys.stderr)
    sys.exit(2)
CELLS = {'default', 'paper', 'omniglot4', 'omniglot12'}
for key, value, allowed in [('cells', cells, CELLS), ('jobs_cell', jobs_cell, CELLS), ('profile_cells', profile_cells, CELLS),
                            ('train_combos', train_combos, {'auto', 'eager-fp32', 'eager-bf16', 'compile-fp32', 'compile-bf16'})]:
    bad = {v.strip() for v in value.split(',') if v.strip()} - allowed
    if bad:
        print(f"error: {key}={value!r} has unknown entries {sorted(bad)}; choose from {sorted(allowed)}", file=sys.stderr)
        sys.exit(2)
if device_type == 'cuda' and tf32:
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for float32 matmuls/convs
    torch.backends.cudnn.allow_tf32 = True
if device_type == 'cuda' and cudnn_benchmark:
    torch.backends.cudnn.benchmark = True         # pick the fastest conv algorithm once (shapes never change)


def sync():
    if device_type == 'cuda':
        torch.cuda.synchronize()  # CUDA runs asynchronously: only time finished work


def first_line(e):
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:160]


def image_dataset(n_classes, size, n_exemplars, n_holdout=20, n_labels=1600, seed=0):
    """Random uint8 'images' of Omniglot's shape: same bytes moved and same model cost as the real data
    (the label vocabulary stays the paper's 1600 however few classes are drawn)."""
    g = torch.Generator().manual_seed(seed)
    train = torch.randint(256, (n_classes, n_exemplars, size, size), dtype=torch.uint8, generator=g)
    holdout = torch.randint(256, (n_holdout, n_exemplars, size, size), dtype=torch.uint8, generator=g)
    n_labels = max(n_labels, n_classes)
    return Dataset(ClassBank(train), ClassBank(holdout), assign_labels(n_classes, n_labels, 'per_class', seed),
                   n_labels, name='images')


# ---------------------------------------------------------------------------------------------
# 1. the per-sequence comparison sampler (what a straightforward implementation does)

class PerSequenceSampler:
    """One sequence at a time in Python/numpy, as the DeepMind reference generator does, with the
    rules of data.EpisodeSampler: with prob p_bursty `ways` distinct classes x `shots` + fill from
    the class distribution, shuffled, query from the first bursty class; else i.i.d.; exemplars
    distinct within a sequence. Kept here only as the yardstick for the vectorised sampler."""

    def __init__(self, bank, class_labels, context_len=8, p_bursty=0.9, bursty_shots=3, ways=2,
                 zipf_alpha=0.0, seed=0):
        self.exemplars = bank.exemplars.cpu().numpy()      # zero-copy view of the same bank
        self.class_labels = class_labels.cpu().numpy()
        n = self.exemplars.shape[0]
        weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** zipf_alpha
        self.cdf = np.cumsum(weights / weights.sum())
        self.cdf[-1] = 1.0
        self.T, self.p_bursty, self.shots, self.ways = context_len, p_bursty, bursty_shots, ways
        self.rng = np.random.default_rng(seed)

    def draw(self, k):
        return np.minimum(np.searchsorted(self.cdf, self.rng.random(k), side='right'), len(self.cdf) - 1)

    def sequence_classes(self):
        T, rng = self.T, self.rng
        if rng.random() >= self.p_bursty:
            return self.draw(T + 1)
        chosen = [int(self.draw(1)[0])]
        while len(chosen) < self.ways:                     # distinct bursty classes, by rejection
            c = int(self.draw(1)[0])
            if c not in chosen:
                chosen.append(c)
        context = np.concatenate([np.repeat(chosen, self.shots), self.draw(T - self.ways * self.shots)])
        rng.shuffle(context)
        return np.append(context, chosen[0])

    def sequence(self):
        classes = self.sequence_classes()
        E = self.exemplars.shape[1]
        exemplar = self.rng.permutation(E)[:self.T + 1] if E >= self.T + 1 else self.rng.integers(E, size=self.T + 1)
        return self.exemplars[classes, exemplar], self.class_labels[classes], classes

    def sample(self, batch_size):
        seqs = [self.sequence() for _ in range(batch_size)]
        return tuple(torch.from_numpy(np.stack(parts)) for parts in zip(*seqs))


class ReferenceStyleSampler(PerSequenceSampler):
    """The same rules written the way the DeepMind reference generator writes them: every class draw is
    rng.choice over the class probabilities, and exemplars are picked class by class without replacement
    (np.random.choice(..., replace=False)) and copied into a per-sequence array. This is the
    "straightforward per-sequence sampler" of the speed goal; PerSequenceSampler above is a tuned one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.p = np.diff(np.concatenate([[0.0], self.cdf]))

    def draw(self, k):
        return self.rng.choice(len(self.p), size=k, p=self.p)

    def sequence(self):
        classes = self.sequence_classes()
        items = np.zeros((len(classes),) + self.exemplars.shape[2:], dtype=self.exemplars.dtype)
        for c in np.unique(classes):
            where = classes == c
            picks = self.rng.choice(self.exemplars.shape[1], size=int(where.sum()), replace=False)
            items[where] = self.exemplars[c][picks]
        return items, self.class_labels[classes], classes


def throughput(fn, batch_size, sync_fn=lambda: None, windows=3):
    """Sequences/s of fn(batch_size): the best of `windows` windows of min_time/windows seconds (and >= 2
    calls) after one warm-up call; best-of because other load on a shared machine only ever slows a window."""
    fn(batch_size)
    sync_fn()
    best = 0.0
    for _ in range(windows):
        calls, t0 = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - t0 < min_time / windows:
            fn(batch_size)
            calls += 1
        sync_fn()
        best = max(best, calls * batch_size / (time.perf_counter() - t0))
    return best


def bench_sampler(results, rows):
    batches = [int(b) for b in sampler_batches.split(',')]
    t = time.perf_counter()
    datasets = {'images': image_dataset(image_classes, image_size, exemplars, seed=seed)}
    print(f"sampler: {image_classes} classes x {exemplars} random {image_size}x{image_size} uint8 images "
          f"({datasets['images'].train.exemplars.numel() / 1e6:.0f} MB) built in {time.perf_counter() - t:.1f}s")
    datasets['vectors'] = build_dataset(train_defaults())
    devices = ['cpu'] + ([device] if device_type == 'cuda' else [])
    out = results.setdefault('sampler', {})
    for name, data in datasets.items():
        bytes_per_seq = data.train.exemplars[0, :9].numel() * data.train.exemplars.element_size()
        reference = PerSequenceSampler(data.train, data.class_labels, seed=seed)
        straightforward = ReferenceStyleSampler(data.train, data.class_labels, seed=seed)
        for B in batches:
            ref_style = throughput(straightforward.sample, min(B, 256))
            out[f'{name}/B{B}/reference_style_cpu'] = ref_style
            rows.append(('sampler', f'{name} B={B} reference-style per-sequence (cpu)', ref_style, 'seq/s', ''))
            ref = throughput(reference.sample, B)
            out[f'{name}/B{B}/per_sequence_cpu'] = ref
            rows.append(('sampler', f'{name} B={B} per-sequence numpy (cpu)', ref, 'seq/s', ''))
            for dev in devices:
                sampler = EpisodeSampler(data.train, data.class_labels, seed=seed, device=dev)
                s = throughput(sampler.sample, B, sync if dev != 'cpu' else (lambda: None))
                out[f'{name}/B{B}/episode_sampler_{dev}'] = s
                out[f'{name}/B{B}/ratio_{dev}'] = s / ref
                out[f'{name}/B{B}/ratio_vs_reference_style_{dev}'] = s / ref_style
                rows.append(('sampler', f'{name} B={B} EpisodeSampler ({dev})', s, 'seq/s',
                             f'x{s / ref_style:.0f} vs reference-style, x{s / ref:.2g} vs tuned per-sequence, '
                             f'{s * bytes_per_seq / 1e9:.2f} GB/s items'))
                del sampler
        # indices only (class draw, burst, shuffle, exemplar pick): the part vectorising speeds up; the
        # item copy after it is memory-bound (~99 KB per image sequence) for any sampler on a CPU
        for B in batches:
            ref = throughput(lambda b: [reference.sequence_classes() for _ in range(b)], B)
            sampler = EpisodeSampler(data.train, data.class_labels, seed=seed, device='cpu')
            s = throughput(sampler.sample_classes, B)
            out[f'{name}/B{B}/indices_ratio_cpu'] = s / ref
            rows.append(('sampler', f'{name} B={B} indices only: per-sequence vs EpisodeSampler (cpu)', s, 'seq/s',
                         f'x{s / ref:.3g} vs per-sequence ({ref:,.0f} seq/s)'))
        del reference
    del datasets


# ---------------------------------------------------------------------------------------------
# 2. training steps

def make_cell(cell, cell_seed=None):
    """(config, dataset, sampler, model, optimizer) for a cell, built like train.py builds them."""
    cell_seed = seed if cell_seed is None else cell_seed
    config = train_defaults()
    if cell == 'default':
        data = build_dataset(config)
    elif cell == 'paper':
        config.update(n_layer=12, n_head=8, n_embd=64, batch_size=32, learning_rate=3e-4)
        data = image_dataset(image_classes, image_size, exemplars, seed=seed)
        config['n_labels'] = data.n_labels
    elif cell in ('omniglot4', 'omniglot12'):  # config/omniglot_small.py's cell (1623 labels), at 4 or 12 layers
        config.update(n_layer=int(cell[8:]), n_head=8, n_embd=64, batch_size=32, learning_rate=1e-3)
        data = image_dataset(image_classes, 14, exemplars, n_labels=1623, seed=seed)
        config['n_labels'] = data.n_labels
    else:
        raise ValueError(f"cell={cell!r} must be one of {sorted(CELLS)}")
    config['n_eval_episodes'] = n_eval_episodes
    torch.manual_seed(cell_seed)
    data = data.to(device)
    sampler = EpisodeSampler.from_config(data.train, data.class_labels, config, device, seed=cell_seed)
    model = build_model(config, data).to(device)
    optimizer = AdamW([config], model, dict(model.named_parameters()), device_type == 'cuda')
    return config, data, sampler, model, optimizer


def make_step(config, sampler, model, optimizer, use_compile, dtype, forward=None, exposure=None, terms=None):
    """train.py's step (step.train_step: sample, exposure counts, forward, query loss, backward, AdamW)
    and its finite check; a group passes its stacked forward, exposure and StepTerms (group.stack_group)."""
    train_model = forward or (torch.compile(model, mode=compile_mode) if use_compile else model)
    autocast = torch.autocast(device_type=device_type, dtype=torch.bfloat16) if dtype == 'bf16' else nullcontext()
    exposure = exposure or Exposure(sampler.bank.n_classes, device)
    terms = terms or StepTerms([config], model.decayed_parameters()[0])
    state = {'bad': torch.full((), -1, dtype=torch.long, device=device), 'loss_sum': torch.zeros((), device=device),
             'it': 0}

    def step():
        loss = train_step(train_model, optimizer, sampler, state['it'], exposure, terms, autocast)
        state['bad'] = torch.where((state['bad'] < 0) & ~torch.isfinite(loss).all(), state['it'], state['bad'])
        state['loss_sum'] = state['loss_sum'] + loss.sum()
        state['it'] += 1
    return step, state


def time_steps(step, state, n_warmup, n_steps):
    for _ in range(n_warmup):  # includes compile time and allocator warm-up
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step()
    sync()  # no per-step syncs: the host queues work ahead of the device
    elapsed = time.perf_counter() - t0
    if state['bad'].item() >= 0:
        raise FloatingPointError('loss became non-finite')
    return elapsed / n_steps


def combos(cell):
    """(combination, reason it is skipped or None) pairs for one cell."""
    if train_combos != 'auto':
        return [(c.strip(), None) for c in train_combos.split(',') if c.strip()]
    everything = ['eager-fp32', 'eager-bf16', 'compile-fp32', 'compile-bf16']
    if device_type == 'cuda':
        return [(c, None) for c in everything]
    # CPU: compiling takes longer than a quick run allows, and minutes for the 12-layer ResNet cell at 105x105
    skip = quick or cell == 'paper'
    why = 'skipped on CPU (compile takes minutes); force with --train_combos=' + ','.join(everything)
    return [(c, why if (skip and c.startswith('compile')) else None) for c in everything]


def cell_steps(cell):
    return max(2, train_steps // 5) if (cell == 'paper' and device_type == 'cpu') else train_steps


def bench_train(results, rows):
    out = results.setdefault('train', {})
    for cell in [c.strip() for c in cells.split(',') if c.strip()]:
        try:
            config, data, sampler, model, optimizer = make_cell(cell)
        except (ImportError, ValueError, AttributeError) as e:
            # the paper cell needs model.py's ResNet encoder (encoder='resnet'); skip until it lands
            reason = f'n/a: cannot build {cell} cell ({first_line(e)})'
            print(f"train: {reason}")
            out[cell] = reason
            rows.append(('train', f'{cell}', None, '', reason))
            continue
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt_state = optimizer.state_dict()
        for combo, skipped in combos(cell):
            if skipped:
                out[f'{cell}/{combo}'] = f'n/a: {skipped}'
                rows.append(('train', f'{cell}/{combo}', None, '', out[f'{cell}/{combo}']))
                continue
            model.load_state_dict(initial)  # every combo starts from the same weights
            optimizer.load_state_dicts([opt_state])
            mode, dtype = combo.split('-')
            key = f'{cell}/{combo}' + (f'/{compile_mode}' if mode == 'compile' and compile_mode != 'default' else '')
            try:
                step, state = make_step(config, sampler, model, optimizer, mode == 'compile', dtype)
                t = time.perf_counter()
                s = time_steps(step, state, warmup_steps, cell_steps(cell))
                out[key] = {'ms_per_step': 1e3 * s, 'steps_per_s': 1 / s}
                rows.append(('train', key, 1 / s, 'steps/s', f'{1e3 * s:.1f} ms/step, B={config["batch_size"]}, '
                             f'{model.num_parameters():,} params ({time.perf_counter() - t:.0f}s incl. warm-up)'))
            except Exception as e:  # CPU bf16/compile may be missing or broken: report, do not crash
                out[key] = f'n/a: {first_line(e)}'
                rows.append(('train', key, None, '', out[key]))
            torch._dynamo.reset()
        del model, optimizer, sampler, data


# ---------------------------------------------------------------------------------------------
# 3. share of a step spent sampling and in eval

def bench_share(results, rows):
    out = results.setdefault('share', {})
    # the combination train.py runs on this device: eager fp32 on CPU, compiled bf16 on CUDA
    combo = 'compile-bf16' if device_type == 'cuda' else 'eager-fp32'
    for cell in [c.strip() for c in cells.split(',') if c.strip()]:
        try:
            config, data, sampler, model, optimizer = make_cell(cell)
        except (ImportError, ValueError, AttributeError) as e:
            out[cell] = f'n/a: cannot build {cell} cell ({first_line(e)})'
            rows.append(('share', cell, None, '', out[cell]))
            continue
        B = config['batch_size']
        measured = results.get('train', {}).get(f'{cell}/{combo}')
        if isinstance(measured, dict):  # the train section already timed this combination
            step_s = measured['ms_per_step'] / 1e3
        else:
            step, state = make_step(config, sampler, model, optimizer, combo.startswith('compile'), combo.split('-')[1])
            step_s = time_steps(step, state, warmup_steps, cell_steps(cell))
        sample_s = B / throughput(sampler.sample, B, sync)
        # eval cost is linear in the episode count (fixed 512-episode chunks): quick CPU runs time fewer and scale
        n_measured = min(n_eval_episodes, 64 if cell == 'paper' else 256) if (quick and device_type == 'cpu') else n_eval_episodes
        # episodes are drawn on the CPU from a CPU copy, then moved (data.build_run_data's order: drawing from
        # data already on CUDA with CPU generators fails)
        icl, iwl = (e.to(device) for e in build_eval_episodes(data.to('cpu'), {**config, 'n_eval_episodes': n_measured}))
        autocast = torch.autocast('cuda', dtype=torch.bfloat16) if device_type == 'cuda' else None
        if not quick:  # warm-up eval (allocator, cudnn autotune)
            evaluate(model, icl, iwl, autocast=autocast)
        sync()
        t0 = time.perf_counter()
        evaluate(model, icl, iwl, autocast=autocast)
        sync()
        eval_s = (time.perf_counter() - t0) * n_eval_episodes / n_measured
        per_step = step_s + eval_s / eval_interval
        out[cell] = {'combo': combo, 'step_ms': 1e3 * step_s, 'sample_ms': 1e3 * sample_s, 'eval_s': eval_s,
                     'n_eval_episodes': n_eval_episodes, 'eval_episodes_timed': n_measured, 'eval_interval': eval_interval,
                     'sample_share': sample_s / per_step, 'eval_share': eval_s / eval_interval / per_step}
        rows.append(('share', f'{cell} sampling', 100 * sample_s / per_step, '% of step',
                     f'{1e3 * sample_s:.2f} of {1e3 * step_s:.1f} ms/step ({combo})'))
        rows.append(('share', f'{cell} eval', 100 * eval_s / eval_interval / per_step, '% of step',
                     f'{eval_s:.2f}s per eval of 2x{n_eval_episodes} episodes / {eval_interval} steps'
                     + (f' (scaled from {n_measured})' if n_measured != n_eval_episodes else '')))
        del model, optimizer, sampler, data, icl, iwl


# ---------------------------------------------------------------------------------------------
# 4. N runs sharing the device

def run_worker():
    """One of N concurrent workers: warm up, wait until all N are ready, step for jobs_seconds."""
    config, data, sampler, model, optimizer = make_cell(jobs_cell)
    combo = 'compile-bf16' if device_type == 'cuda' else 'eager-fp32'
    step, state = make_step(config, sampler, model, optimizer, combo.startswith('compile'), combo.split('-')[1])
    for _ in range(warmup_steps):
        step()
    sync()
    if worker_sync:
        open(os.path.join(worker_sync, f'ready.{os.getpid()}'), 'w').close()
        n_expected = int(open(os.path.join(worker_sync, 'n')).read())
        while len([f for f in os.listdir(worker_sync) if f.startswith('ready.')]) < n_expected:
            time.sleep(0.01)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < jobs_seconds:
        step()
        n += 1
        if device_type == 'cuda' and n % 20 == 0:
            sync()  # keep the clock honest: the queue must not run far ahead of the device
    sync()
    print(json.dumps({'steps_per_s': n / (time.perf_counter() - t0), 'steps': n}))


def bench_jobs(results, rows):
    out = results.setdefault('jobs', {})
    cores = os.cpu_count() or 1
    counts = [int(n) for n in (('1,2,4,8' if device_type == 'cuda' else '1,2') if jobs == 'auto' else jobs).split(',')]
    runs = [(n, jobs_threads if jobs_threads > 0 else max(1, cores // n)) for n in counts]
    if device_type == 'cpu' and jobs_threads == 0 and (1, 1) not in runs:
        runs.insert(0, (1, 1))  # one single-thread job: the baseline that N jobs x cores/N threads should beat
    base = None
    for n, per in runs:
        with tempfile.TemporaryDirectory() as sync_dir:
            open(os.path.join(sync_dir, 'n'), 'w').write(str(n))
            args = [sys.executable, os.path.join(HERE, 'bench.py'), '--worker=True', f'--worker_sync={sync_dir}',
                    f'--device={device}', f'--threads={per}', f'--jobs_cell={jobs_cell}',
                    f'--jobs_seconds={jobs_seconds}', f'--warmup_steps={warmup_steps}',
                    f'--image_classes={image_classes}', f'--n_eval_episodes={n_eval_episodes}']
            env = {**os.environ, 'OMP_NUM_THREADS': str(per)}  # cores split evenly between the workers
            procs = [subprocess.Popen(args + [f'--seed={seed + i}'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env, cwd=HERE) for i in range(n)]
            rates, errors = [], []
            for p in procs:
                stdout, stderr = p.communicate()
                lines = [l for l in stdout.splitlines() if l.startswith('{')]
                if p.returncode == 0 and lines:
                    rates.append(json.loads(lines[-1])['steps_per_s'])
                else:
                    errors.append(stderr.strip().splitlines()[-1] if stderr.strip() else f'exit {p.returncode}')
        if errors:
            out[f'N{n}_threads{per}'] = f'n/a: {errors[0][:160]}'
            rows.append(('jobs', f'{jobs_cell} N={n} x {per} thread(s)', None, '', out[f'N{n}_threads{per}']))
            continue
        total = sum(rates)
        base = base or (total if n == 1 else None)
        out[f'N{n}_threads{per}'] = {'aggregate_steps_per_s': total, 'per_job_steps_per_s': rates, 'threads_per_job': per}
        rows.append(('jobs', f'{jobs_cell} N={n} x {per} thread(s)', total, 'steps/s (sum)',
                     f'per job {", ".join(f"{r:.1f}" for r in rates)}' + (f'; x{total / base:.2f} vs first row' if base else '')))


# ---------------------------------------------------------------------------------------------
# 5. K cells as one stacked model (a train.py group) against K separate steps

def bench_group(results, rows):
    """cell-steps/s of a group of K cells (seeds seed..seed+K-1, one data copy), K = group_sizes."""
    out = results.setdefault('group', {})
    dtype = 'bf16' if device_type == 'cuda' else 'fp32'
    solo = None
    for K in [int(k) for k in group_sizes.split(',') if k.strip()]:
        try:
            cellset = [make_cell(group_cell, seed + k) for k in range(K)] if K > 1 or solo is None else None
            if solo is None:  # one solo step (train.py's), the baseline
                config, _, sampler, model, optimizer = cellset[0]
                step, state = make_step(config, sampler, model, optimizer, False, dtype)
                solo = 1 / time_steps(step, state, warmup_steps, group_steps)
                out['solo_steps_per_s'] = solo
                rows.append(('group', f'{group_cell} solo step', solo, 'steps/s', f'train.py step, {dtype}'))
            config = cellset[0][0]
            stacked, optimizer, terms = stack_group([c[3] for c in cellset], [config] * K, device_type)
            samplers = [c[2] for c in cellset]
            step, state = make_step(config, GroupSampler(samplers), None, optimizer, False, dtype, forward=stacked,
                                    exposure=GroupExposure([Exposure(s.bank.n_classes, device) for s in samplers]),
                                    terms=terms)
            rate = K / time_steps(step, state, warmup_steps, group_steps)
            out[f'K{K}'] = {'cell_steps_per_s': rate, 'vs_solo': rate / solo}
            rows.append(('group', f'{group_cell} K={K}', rate, 'cell-steps/s', f'x{rate / solo:.2f} vs one solo step'))
            del cellset, stacked, optimizer, samplers, step
        except Exception as e:  # e.g. out of memory at a large K: report, go on
            out[f'K{K}'] = f'n/a: {first_line(e)}'
            rows.append(('group', f'{group_cell} K={K}', None, '', out[f'K{K}']))


# ---------------------------------------------------------------------------------------------
# 6. where a training step's time goes

RESNET_BACKWARD = ('Convolution', 'BatchNorm', 'MaxPool', 'Threshold', 'Relu')  # the ResNet's ops (the MLP's is GELU)


def step_parts(events):
    """{part: ms} summed over a profile's events: the ranges make_profiled_step marks, and the backward's autograd
    functions split into the ResNet's (its convolutions, BatchNorms, pooling and ReLUs) and the transformer's."""
    parts = dict.fromkeys(['sample', 'forward: ResNet', 'forward: transformer', 'backward: ResNet',
                           'backward: transformer', 'optimizer'], 0.0)
    forward = 0.0
    for e in events:
        ms = e.cpu_time_total / 1e3
        if e.name in ('sample', 'optimizer', 'forward: ResNet'):
            parts[e.name] += ms
        elif e.name == 'forward':
            forward += ms
        elif e.name.startswith('autograd::engine::evaluate_function: '):
            op = e.name.split(': ', 1)[1]
            parts['backward: ResNet' if op.startswith(RESNET_BACKWARD) else 'backward: transformer'] += ms
    parts['forward: transformer'] = forward - parts['forward: ResNet']
    return parts


def bench_profile(results, rows):
    """One eager fp32 training step (train.py's on a CPU), profiled: each part's share of the step's wall time."""
    from torch.profiler import ProfilerActivity, profile, record_function
    out = results.setdefault('profile', {})
    for cell in [c.strip() for c in profile_cells.split(',') if c.strip()]:
        config, data, sampler, model, optimizer = make_cell(cell)
        marks = []   # record_function ranges opened by the hooks, closed by their partner hook
        model.register_forward_pre_hook(lambda m, a, kw: marks.append(record_function('forward').__enter__()),
                                        with_kwargs=True)
        model.register_forward_hook(lambda m, a, o: marks.pop().__exit__(None, None, None))
        model.encoder.register_forward_pre_hook(lambda m, a: marks.append(record_function('forward: ResNet').__enter__()))
        model.encoder.register_forward_hook(lambda m, a, o: marks.pop().__exit__(None, None, None))
        sample, opt_step = sampler.sample, optimizer.step

        def marked(name, fn):
            def call(*args, **kwargs):
                with record_function(name):
                    return fn(*args, **kwargs)
            return call
        sampler.sample, optimizer.step = marked('sample', sample), marked('optimizer', opt_step)
        step, state = make_step(config, sampler, model, optimizer, False, 'fp32')
        for _ in range(warmup_steps):
            step()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(profile_steps):
                step()
        wall_ms = (time.perf_counter() - t0) * 1e3 / profile_steps
        parts = {k: v / profile_steps for k, v in step_parts(prof.events()).items()}
        # the profile's own overhead: the same steps unprofiled
        unprofiled_ms = 1e3 * time_steps(step, state, 0, profile_steps)
        out[cell] = {'step_ms_profiled': wall_ms, 'step_ms': unprofiled_ms,
                     'parts_ms': parts, 'shares': {k: v / wall_ms for k, v in parts.items()}}
        rows.append(('profile', f'{cell} step', 1e3 / unprofiled_ms, 'steps/s',
                     f'{unprofiled_ms:.1f} ms/step eager fp32, B={config["batch_size"]}, {config["n_layer"]} layers '
                     f'({wall_ms:.1f} ms profiled)'))
        for k, v in parts.items():
            rows.append(('profile', f'{cell} {k}', 100 * v / wall_ms, '% of step', f'{v:.1f} ms'))
        rest = wall_ms - sum(parts.values())
        rows.append(('profile', f'{cell} other (loss, exposure, zero_grad, Python)', 100 * rest / wall_ms, '% of step',
                     f'{rest:.1f} ms'))
        del model, optimizer, sampler, data


# ---------------------------------------------------------------------------------------------

def print_table(rows):
    print(f"\n{'section':8s} {'what':52s} {'value':>12s}  {'unit':14s} note")
    for section, what, value, unit, note in rows:
        shown = 'n/a' if value is None else (f'{value:,.0f}' if value >= 100 else f'{value:.3g}')
        print(f"{section:8s} {what:52s} {shown:>12s}  {unit:14s} {note}")


if __name__ == '__main__':
    if worker:
        run_worker()
        sys.exit(0)
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    results = {'device': torch.cuda.get_device_name(device) if device_type == 'cuda' else 'cpu',
               'torch': torch.__version__, 'threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(),
               'load_avg_1m_at_start': load, 'quick': quick}
    print(f"bench: device {results['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load average {load}")
    rows = []
    t_start = time.perf_counter()
    for name, fn in [('sampler', bench_sampler), ('train', bench_train), ('share', bench_share), ('jobs', bench_jobs),
                     ('group', bench_group), ('profile', bench_profile)]:
        if name in wanted:
            t = time.perf_counter()
            fn(results, rows)
            print(f"{name}: done in {time.perf_counter() - t:.1f}s")
    results['wall_s'] = round(time.perf_counter() - t_start, 1)
    print_table(rows)
    line = json.dumps(results)
    if json_out:
        with open(json_out, 'w') as f:
            f.write(line + '\n')
    print(line)
