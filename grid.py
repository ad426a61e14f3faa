"""
The experiment: Few vs Many training classes x AdamW weight decay x seeds, run as a grid of ordinary
train.py runs, then figures, a table and a verdict.

    python grid.py                                   # embedded synthetic grid: 30 cells, ~25 min on 2 CPU cores
    python grid.py config/omniglot.py                # paper-scale grid (cells add config/few.py / config/many.py)
    python grid.py config/grid_extended.py           # decays up to 1.0; config/grid_width.py adds d48/d96
    python grid.py --weight_decays=0,1e-3 --seeds=0  # axes are comma-separated strings
    python grid.py --jobs=4 --shard=0/2              # 4 cells at a time, first of 2 machines (or SLURM arrays)
    python grid.py --report                          # figures + report.md from the cells run so far

Results go to out_grid/ (out_grid_omniglot/ for config/omniglot.py; --grid_dir=... to choose): a folder per
cell, report.md, verdict.json, icl_vs_steps.png, peak_icl.png and figures/group_*.png.

Config files named config/grid*.py set this script's globals (config/grid.py is always applied first);
any other config file is a train.py config passed to every cell. Each cell is

    python train.py <train configs> <Few/Many args> --weight_decay=.. --seed=.. --out_dir=<grid_dir>/<cell> --init_from=resume

(the exact line is in <cell>/cmd.txt, its output in <cell>/train.log), so any cell can be rerun by hand.
Cells differ only in seed, weight_decay, n_train_classes (and width): step budget, batch, sequence length,
data_seed (holdout classes, label vocabulary, eval episodes) come from the same configs for all of them.
Finished cells (summary.json) are skipped, interrupted or crashed ones resume on the next invocation, and
a lock file per cell (O_CREAT|O_EXCL, 'host pid' inside) keeps two grid processes off the same cell.
"""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

_here = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------
# defaults: the axis values and Few/Many meaning live in config/grid.py (applied first, always)
grid_dir = ''               # one sub-folder per cell, plus the report; '' = out_grid (synthetic), out_grid_omniglot, ...
classes = 'few,many'
weight_decays = '0'
seeds = '0'
widths = ''                 # '' = no width axis; 'd48,d96' -> config/d48.py, config/d96.py; '48' -> --n_embd=48
few_config = 'config/few.py'
many_config = 'config/many.py'
synthetic_few = '--n_train_classes=100'
synthetic_many = '--n_train_classes=16000'
synthetic_args = ''
train_args = ''             # extra train.py arguments for every cell, e.g. "--device=cuda:0 --compile=False"
train_script = 'train.py'   # what a cell runs (the tests put a fake trainer here)
group_size = 0              # > 1: train up to this many cells (at the same step) as one stacked model in one
                            # group.py process (member-batched; pays on a GPU, not on a CPU); 0 or 1: one train.py each
group_script = 'group.py'
regularizers = ''           # '' = the weight_decays axis; else e.g. 'none,wd=0.1,l2=1e-3' (decay or classical L2)
phase = False               # report a phase diagram (class count x regularizer heatmaps) instead of the verdict
icl_threshold = 0.8         # phase diagram: ICL 'appears' at the first class count whose peak ICL reaches this
jobs = 0                    # cells at a time on this machine; 0 = number of CPU cores (1 when CUDA is present)
threads = 0                 # OMP_NUM_THREADS per cell; 0 = cores // jobs
shard = ''                  # 'i/n': run cells i, i+n, i+2n, ...; '' = SLURM array variables if set, else all
report = False              # only (re)write the report from what is in grid_dir
dry_run = False             # list the cells and their commands, run nothing
# -----------------------------------------------------------------------------
# Split the command line: config/grid*.py files (and --key=value) are for this script, other config files
# are train.py configs for every cell. config/grid.py goes first so that everything else overrides it.
_default_config = os.path.join(_here, 'config', 'grid.py')
_grid_args, train_configs = [], []
for _a in sys.argv[1:]:
    if _a in ('--report', '--dry_run'):  # bare flags for the two switches
        _a += '=True'
    if _a.startswith('--') or os.path.basename(_a).startswith('grid'):
        _grid_args.append(_a)
    else:
        train_configs.append(_a)
sys.argv = sys.argv[:1] + ([_default_config] if os.path.isfile(_default_config) else []) + _grid_args
exec(open(os.path.join(_here, 'configurator.py')).read())
ROOT = _here
# -----------------------------------------------------------------------------

def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def split_list(name, text, convert):
    """'0,3e-4, 1e-3' -> [0.0, 0.0003, 0.001]; a clear error naming the key otherwise."""
    try:
        values = [convert(s.strip()) for s in text.split(',') if s.strip()]
    except ValueError:
        fail(f"{name}={text!r} must be a comma-separated list of {convert.__name__} values")
    if len(set(values)) != len(values):
        fail(f"{name}={text!r} lists a value twice")
    return values


def parse_shard(text, environ):
    """(index, count) of this process's shard: --shard=i/n, else a SLURM job array, else (0, 1)."""
    if text:
        try:
            i, n = (int(s) for s in text.split('/'))
        except ValueError:
            raise ValueError(f"shard={text!r} must look like i/n, e.g. 0/4")
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"shard={text!r}: need 0 <= i < n")
        return i, n
    if 'SLURM_ARRAY_TASK_ID' in environ and 'SLURM_ARRAY_TASK_COUNT' in environ:
        n = int(environ['SLURM_ARRAY_TASK_COUNT'])
        step = int(environ.get('SLURM_ARRAY_TASK_STEP', 1))  # --array=0-18:2 has ids 0, 2, ..., 18
        i = (int(environ['SLURM_ARRAY_TASK_ID']) - int(environ.get('SLURM_ARRAY_TASK_MIN', 0))) // step
        if not 0 <= i < n:
            raise ValueError(f"SLURM_ARRAY_TASK_ID={environ['SLURM_ARRAY_TASK_ID']} is outside an array of "
                             f"{n} tasks starting at {environ.get('SLURM_ARRAY_TASK_MIN', 0)}; use --array=0-{n - 1}")
        return i, n
    return 0, 1


def wd_name(wd):
    return f"wd{wd:g}"


def parse_regularizers(text):
    """'none,wd=0.01,l2=1e-3' -> [('wd0', 0.0, 0.0), ('wd0.01', 0.01, 0.0), ('l2_0.001', 0.0, 0.001)]:
    (name part, weight_decay, l2) per entry; a clear error naming the entry otherwise."""
    regs = []
    for entry in [s.strip() for s in text.split(',') if s.strip()]:
        kind, _, value = entry.partition('=')
        try:
            value = float(value) if value else 0.0
        except ValueError:
            fail(f"regularizers: {entry!r} must be 'none', 'wd=<float>' or 'l2=<float>'")
        if kind == 'none' or value == 0:
            regs.append((wd_name(0.0), 0.0, 0.0))
        elif kind == 'wd' and value > 0:
            regs.append((wd_name(value), value, 0.0))
        elif kind == 'l2' and value > 0:
            regs.append((f"l2_{value:g}", 0.0, value))
        else:
            fail(f"regularizers: {entry!r} must be 'none', 'wd=<float>' or 'l2=<float>' with a value > 0")
    if len(set(regs)) != len(regs):
        fail(f"regularizers={text!r} lists a value twice")
    return regs


def class_cell_args(cls, class_args):
    """train.py arguments that set a cell's classes: 'few'/'many' from class_args, a number N = N classes."""
    return class_args[cls] if cls in class_args else [f'--n_train_classes={int(cls)}']


def class_cell_name(cls):
    return cls if cls in ('few', 'many') else f"c{int(cls)}"


def enumerate_cells(class_names, decays, seed_list, width_list, train_configs, class_args, common_args):
    """Every cell of the grid as a dict; seed-major order, so a partial grid covers all conditions early.
    class_args: {'few': [...], 'many': [...]} train.py arguments that make a cell Few or Many (a class
    entry may also be a number of classes). decays: weight decays, or (name, weight_decay, l2) triples
    from parse_regularizers."""
    regs = [r if isinstance(r, tuple) else (wd_name(r), r, 0.0) for r in decays]
    cells = []
    for seed in seed_list:
        for width in width_list or ['']:
            for cls in class_names:
                for reg, wd, l2 in regs:
                    name = f"{class_cell_name(cls)}_{reg}_s{seed}" + (f"_{width}" if width else '')
                    width_args = ([] if not width else [f'--n_embd={int(width)}'] if width.isdigit()
                                  else [os.path.join('config', f'{width}.py')])
                    args = [*train_configs, *class_cell_args(cls, class_args), *width_args, *common_args,
                            f'--weight_decay={wd!r}', *([f'--l2={l2!r}'] if l2 else []), f'--seed={seed}']
                    cells.append({'name': name, 'classes': class_cell_name(cls), 'weight_decay': wd, 'l2': l2,
                                  'regularizer': reg, 'seed': seed, 'width': width, 'args': args})
    return cells


def shard_cells(cells, index, count):
    return cells[index::count]


# ---- per-cell lock ------------------------------------------------------------------------------

def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _is_stale(owner):
    """A lock is stale when it names this host and a pid that no longer exists."""
    try:
        host, pid = owner.split()
        pid = int(pid)
    except (AttributeError, ValueError):
        return False  # half-written or foreign: leave it (its writer is alive or a human can remove it)
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def acquire_lock(path):
    """True if this process now holds the lock file at `path`. A stale lock (dead pid, same host) is
    moved aside with an atomic rename, so of two processes reclaiming it only one succeeds."""
    me = f"{socket.gethostname()} {os.getpid()}\n"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read(path)
            if owner is None:
                continue  # released in between: try again
            if not _is_stale(owner):
                return False
            aside = f"{path}.stale.{socket.gethostname()}.{os.getpid()}"
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue  # another process reclaimed it first
            if _read(aside) != owner:  # we moved a fresh lock taken in between: put it back
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass
                os.remove(aside)
                return False
            os.remove(aside)
            print(f"grid: reclaimed stale lock {path} ({owner.strip()})")
            continue
        with os.fdopen(fd, 'w') as f:
            f.write(me)
        return True
    return False


def release_lock(path):
    if _read(path) == f"{socket.gethostname()} {os.getpid()}\n":
        os.remove(path)


# ---- running cells --------------------------------------------------------------------------------

def cell_command(cell, cell_dir):
    return [sys.executable, train_script, *cell['args'], f'--out_dir={cell_dir}', '--init_from=resume']


def unit_command(unit, root_dir):
    """One train.py cell, or a group.py line whose members are the cells' own train.py arguments."""
    if len(unit) == 1:
        return cell_command(unit[0], os.path.join(root_dir, unit[0]['name']))
    argv = []
    for cell in unit:
        argv += [*cell_command(cell, os.path.join(root_dir, cell['name']))[2:], '::']
    return [sys.executable, group_script, *argv[:-1]]


def is_finished(cell_dir):
    return os.path.exists(os.path.join(cell_dir, 'summary.json'))


def cell_step(cell_dir):
    """The step a cell's checkpoint is at (0 without one): group.py trains only cells at the same step."""
    from checkpoint import has_checkpoint, load_checkpoint
    if not has_checkpoint(cell_dir):
        return 0
    try:
        return load_checkpoint(cell_dir)['iter_num']
    except FileNotFoundError:
        return 0


def pack_units(cells, root_dir, size):
    """The processes to run: [cell] each, or (size > 1) groups of up to `size` unfinished cells that are at
    the same step, in grid order, so an interrupted group resumes as the same group."""
    if size <= 1:
        return [[c] for c in cells]
    by_step = {}
    for c in cells:
        by_step.setdefault(cell_step(os.path.join(root_dir, c['name'])), []).append(c)
    return [group[i:i + size] for group in by_step.values() for i in range(0, len(group), size)]


def claim(unit, root_dir, result):
    """The cells of a unit this process now holds the lock of (finished or busy ones are reported and left)."""
    mine = []
    for cell in unit:
        cell_dir = os.path.join(root_dir, cell['name'])
        if is_finished(cell_dir):
            result['skipped'].append(cell['name'])
            continue
        os.makedirs(cell_dir, exist_ok=True)
        lock = os.path.join(cell_dir, 'lock')
        if not acquire_lock(lock):
            result['busy'].append(cell['name'])
            print(f"grid: {cell['name']} is locked by {(_read(lock) or '?').strip()}: skipped")
            continue
        if is_finished(cell_dir):  # finished by another process between the check and the lock
            release_lock(lock)
            result['skipped'].append(cell['name'])
            continue
        mine.append(cell)
    return mine


def start_unit(unit, root_dir, env, n_threads):
    """Write each cell's cmd.txt (its own train.py line: any cell reruns by hand) and cell.json, start the
    process with its output in the first cell's train.log (a group's other members point to it)."""
    cmd = unit_command(unit, root_dir)
    line = f"cd {shlex.quote(ROOT)} && OMP_NUM_THREADS={n_threads} {shlex.join(cmd)}"
    logs = []
    for cell in unit:
        cell_dir = os.path.join(root_dir, cell['name'])
        solo = f"cd {shlex.quote(ROOT)} && OMP_NUM_THREADS={n_threads} {shlex.join(cell_command(cell, cell_dir))}"
        with open(os.path.join(cell_dir, 'cmd.txt'), 'w') as f:
            f.write(solo + '\n')
        with open(os.path.join(cell_dir, 'cell.json'), 'w') as f:
            json.dump({k: cell[k] for k in ('name', 'classes', 'weight_decay', 'l2', 'regularizer', 'seed', 'width')}, f)
        log = open(os.path.join(cell_dir, 'train.log'), 'a')
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} grid.py pid {os.getpid()} on {socket.gethostname()}: "
                  + (line if not logs else f"in a group of {len(unit)}; output in {unit[0]['name']}/train.log") + '\n')
        log.flush()
        logs.append(log)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[0], stderr=subprocess.STDOUT)
    for log in logs[1:]:
        log.close()
    names = ', '.join(c['name'] for c in unit)
    print(f"grid: started {names} (pid {proc.pid}{', one group' if len(unit) > 1 else ''})")
    return proc, logs[0]


def finish_unit(unit, rc, root_dir, result):
    for cell in unit:
        name, cell_dir = cell['name'], os.path.join(root_dir, cell['name'])
        release_lock(os.path.join(cell_dir, 'lock'))
        log_path = os.path.join(root_dir, unit[0]['name'], 'train.log')
        if is_finished(cell_dir):
            summary = json.load(open(os.path.join(cell_dir, 'summary.json')))
            result['done'].append(name)
            print(f"grid: finished {name}: peak icl {_fmt(summary['peak_icl_acc'])}, "
                  f"final iwl {summary['final_iwl_acc']:.3f}")
        elif rc == 0:
            result['interrupted'].append(name)
            print(f"grid: {name} stopped early (checkpointed); the next grid.py run resumes it")
        else:
            result['failed'].append((name, rc, log_path))
            print(f"grid: FAILED {name} (exit code {rc}); log: {log_path}")


def _fmt(value, spec='.3f'):
    return '-' if value is None else format(value, spec)


def run_grid(cells, root_dir, n_jobs, n_threads, size=0):
    """Run the cells n_jobs processes at a time (each one train.py cell, or with size > 1 a group.py group).
    Returns {'done': [...], 'skipped': [...], 'busy': [...], 'failed': [(name, returncode, log path)],
    'interrupted': [...]}."""
    result = {'done': [], 'skipped': [], 'busy': [], 'failed': [], 'interrupted': []}
    env = {**os.environ, 'OMP_NUM_THREADS': str(n_threads), 'MKL_NUM_THREADS': str(n_threads)}
    pending = pack_units([c for c in cells if not is_finished(os.path.join(root_dir, c['name']))], root_dir, size)
    result['skipped'] = [c['name'] for c in cells if is_finished(os.path.join(root_dir, c['name']))]
    running = []  # (proc, unit, log file)
    stop = {'flag': False}

    def on_term(signum, frame):  # SLURM pre-emption / kill: let each train.py checkpoint, then leave
        stop['flag'] = True
        for proc, *_ in running:
            proc.send_signal(signal.SIGTERM)

    old_handler = signal.signal(signal.SIGTERM, on_term)
    try:
        while (pending and not stop['flag']) or running:
            while pending and len(running) < n_jobs and not stop['flag']:
                unit = claim(pending.pop(0), root_dir, result)
                if unit:
                    running.append((*start_unit(unit, root_dir, env, n_threads), unit))
            time.sleep(0.2)
            for entry in list(running):
                proc, log, unit = entry
                if proc.poll() is None:
                    continue
                log.close()
                running.remove(entry)
                finish_unit(unit, proc.returncode, root_dir, result)
    finally:
        for proc, log, unit in running:  # KeyboardInterrupt etc.: stop children first
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            for cell in unit:
                release_lock(os.path.join(root_dir, cell['name'], 'lock'))
        signal.signal(signal.SIGTERM, old_handler)
    return result


# ---- analysis: pure functions on metrics rows -----------------------------------------------------

_lr_sums = {}


def lr_sum(config):
    """Sum of the learning rate over the run's steps, with train.py's own schedule function (cached: a
    paper-scale grid has 30 cells of 500k steps with one schedule). wd * lr_sum is the decay exponent."""
    from model import learning_rate_at
    key = tuple(config.get(k) for k in ('learning_rate', 'warmup_iters', 'max_iters', 'lr_schedule', 'min_lr'))
    if key not in _lr_sums:
        _lr_sums[key] = sum(learning_rate_at(it, config) for it in range(config['max_iters']))
    return _lr_sums[key]


def run_stats(rows):
    """One seed's numbers from its metrics rows: peak ICL (first max after step 0: the untrained model's
    value is no peak), its step, and the attention / calibration at that step; final ICL and IWL; the
    chance level of its episodes (best constant answer) with flags for 'no learning' (the peak is within
    2 standard errors of chance) and 'below chance' (the final ICL is more than 2 standard errors under it)."""
    trained = [r for r in rows if r['iter'] > 0] or rows
    peak = max(trained, key=lambda r: r['icl_acc'])  # max() keeps the first of equal values
    final = rows[-1]
    chance = rows[0].get('icl_chance', 0.5)
    n = rows[0].get('icl_episodes')
    se = (chance * (1 - chance) / n) ** 0.5 if n else 0.0
    return {'peak_icl': peak['icl_acc'], 'peak_iter': peak['iter'], 'ece_at_peak': peak['ece'],
            'attn_image_at_peak': peak['attn_match_image'], 'attn_label_at_peak': peak['attn_match_label'],
            'final_icl': final['icl_acc'], 'final_iwl': final['iwl_acc'], 'final_iter': final['iter'],
            'chance': chance, 'icl_se': se, 'no_learning': peak['icl_acc'] <= chance + 2 * se,
            'below_chance': final['icl_acc'] < chance - 2 * se}


def _mean(values):
    return sum(values) / len(values)


def verdict(groups, threshold=0.9, attn_fraction=0.5, iwl_fraction=0.5):
    """Does some Few cell with weight decay > 0 reach `threshold` x the Many+wd=0 peak ICL without collapse?

    groups: {('few'|'many', weight_decay): [run_stats-like dicts, one per seed]} (needs peak_icl,
    attn_label_at_peak, final_iwl). Rule (also written into report.md):
    - ratio of a cell = its mean-over-seeds peak ICL / the Many+wd=0 mean peak ICL; its seed range is
      [min seed peak / max baseline peak, max seed peak / min baseline peak] (both sides' seed spread);
    - no collapse: at its peak the cell's mean attn_match_label is >= attn_fraction x the baseline's (ICL
      by the same query->matching-label circuit), and its mean final IWL is >= iwl_fraction x the Few+wd=0
      mean final IWL (decay did not simply wipe out what the network can learn in weights);
    - SUPPORTED if some Few+wd>0 cell without collapse has its whole seed range >= threshold; else
      INCONCLUSIVE if the range of some cell without collapse straddles the threshold; else NOT SUPPORTED
      (every range below it, or the cells that reach it collapse). 'best' is the deciding cell: the
      highest mean ratio among those that qualify (for NOT SUPPORTED: among cells without collapse, or
      among all when every cell collapses).
    Raises ValueError naming a missing group."""
    for key in [('many', 0.0), ('few', 0.0)]:
        if not groups.get(key):
            raise ValueError(f"no finished runs for the {key[0]} wd={key[1]:g} cells, needed for the verdict")
    base = groups[('many', 0.0)]
    base_peaks = [r['peak_icl'] for r in base]
    base_mean = _mean(base_peaks)
    if base_mean <= 0:
        raise ValueError("the Many+wd=0 baseline has zero peak ICL")
    base_attn = _mean([r['attn_label_at_peak'] for r in base])
    few0_iwl = _mean([r['final_iwl'] for r in groups[('few', 0.0)]])
    candidates = []
    for (cls, wd), runs in sorted(groups.items()):
        if cls != 'few' or wd == 0 or not runs:
            continue
        peaks = [r['peak_icl'] for r in runs]
        attn = _mean([r['attn_label_at_peak'] for r in runs])
        iwl = _mean([r['final_iwl'] for r in runs])
        finals = [r['final_icl'] for r in runs if 'final_icl' in r]
        base_finals = [r['final_icl'] for r in base if 'final_icl' in r]
        candidates.append({
            'weight_decay': wd, 'n_seeds': len(runs), 'ratio': _mean(peaks) / base_mean,
            'final_ratio': _mean(finals) / _mean(base_finals) if finals and base_finals and _mean(base_finals) > 0 else None,
            'ratio_lo': min(peaks) / max(base_peaks), 'ratio_hi': max(peaks) / max(min(base_peaks), 1e-12),
            'attn_label': attn, 'attn_ok': attn >= attn_fraction * base_attn,
            'final_iwl': iwl, 'iwl_ok': iwl >= iwl_fraction * few0_iwl})
    for c in candidates:
        c['eligible'] = c['attn_ok'] and c['iwl_ok']
    out = {'baseline_peak': base_mean, 'baseline_attn_label': base_attn, 'few_wd0_final_iwl': few0_iwl,
           'few_wd0_ratio': _mean([r['peak_icl'] for r in groups[('few', 0.0)]]) / base_mean,
           'threshold': threshold, 'candidates': candidates, 'best': None}
    if not candidates:
        raise ValueError("no finished Few cells with weight decay > 0")
    eligible = [c for c in candidates if c['eligible']]
    above = [c for c in eligible if c['ratio_lo'] >= threshold]
    straddle = [c for c in eligible if c['ratio_lo'] < threshold <= c['ratio_hi']]
    if above:
        out['verdict'], pool = 'SUPPORTED', above
    elif straddle:
        out['verdict'], pool = 'INCONCLUSIVE', straddle
    else:
        out['verdict'], pool = 'NOT SUPPORTED', eligible or candidates
    best = max(pool, key=lambda c: c['ratio'])
    out['best'] = best
    rel = ('>=' if best['ratio_lo'] >= threshold else 'straddles' if best['ratio_hi'] >= threshold else '<')
    who = ('best Few cell without collapse' if best['eligible']
           else 'best Few cell (every Few+wd>0 cell fails the collapse check)')
    out['reason'] = (f"{who}: "
                     f"wd={best['weight_decay']:g}, its peak ICL is {best['ratio']:.3f} (seed range "
                     f"{best['ratio_lo']:.3f}-{best['ratio_hi']:.3f}) of the Many+wd=0 peak, {rel} {threshold:g}")
    collapsed = [c for c in candidates if not c['eligible'] and c['ratio_hi'] >= threshold]
    if collapsed and out['verdict'] != 'SUPPORTED':
        out['reason'] += ("; reaching the threshold but collapsed: "
                          + ", ".join(f"wd={c['weight_decay']:g} ({'attention' if not c['attn_ok'] else 'IWL'})"
                                      for c in collapsed))
    return out


# ---- report ----------------------------------------------------------------------------------------

# config keys that may differ between the cells of one grid; any other difference is flagged in report.md
VARYING_KEYS = {'seed', 'weight_decay', 'n_train_classes', 'n_embd', 'n_head', 'out_dir', 'init_from', 'overwrite',
                'device', 'compile', 'compile_mode', 'dtype', 'log_interval', 'keep_checkpoints'}


def load_cells(root_dir):
    """Every cell folder in root_dir that has a cell.json: its description, metrics rows, summary (or None)."""
    from checkpoint import read_metrics
    cells = []
    for name in sorted(os.listdir(root_dir)) if os.path.isdir(root_dir) else []:
        cell_dir = os.path.join(root_dir, name)
        path = os.path.join(cell_dir, 'cell.json')
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            cell = json.load(f)
        summary_path = os.path.join(cell_dir, 'summary.json')
        cell['summary'] = json.load(open(summary_path)) if os.path.exists(summary_path) else None
        cell['rows'] = read_metrics(cell_dir)
        cell['dir'] = cell_dir
        cells.append(cell)
    return cells


def _curves(runs, key):
    """(iters, mean, lo, hi) over the iters that every run has reached."""
    common = sorted(set.intersection(*[{r['iter'] for r in run['rows']} for run in runs]))
    values = [[{r['iter']: r[key] for r in run['rows']}[it] for it in common] for run in runs]
    per_iter = list(zip(*values))
    return common, [_mean(v) for v in per_iter], [min(v) for v in per_iter], [max(v) for v in per_iter]


def _save(fig, path):
    tmp = f"{path}.{os.getpid()}.tmp.png"  # several shards may write the report at once
    fig.savefig(tmp, dpi=110, bbox_inches='tight')
    os.replace(tmp, path)


def cells_table(groups, class_names, label, shown):
    """report.md's per-cell-group table (mean over finished seeds, [min-max] over seeds), with the
    regularisers side by side (lr·wd·steps for decay, l2) and flags: 'no learning' when every seed's peak
    ICL is within 2 standard errors of chance, 'ends below chance' when the mean final ICL is more than
    2 standard errors under it (a bias toward one of the two context labels, not ICL)."""
    lines = ["## Cells (mean over finished seeds; [min-max] over seeds)", "",
             "| cell | seeds | peak ICL [min-max] | step of peak | final ICL | final IWL | ECE @peak | attn image @peak | "
             "attn label @peak | lr·wd·steps | l2 | flags |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (width, cls, wd), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], class_names.index(kv[0][1]), kv[0][2])):
        done = shown(runs)
        s = [r['stats'] for r in done]
        peaks = [x['peak_icl'] for x in s]
        exps = [r['exponent'] for r in done if r['exponent'] is not None]
        l2s = sorted({r['summary']['config'].get('l2', 0.0) for r in done if r['summary']})
        final = _mean([x['final_icl'] for x in s])
        flags = (['no learning'] if all(x['no_learning'] for x in s) else []) + \
            (['ends below chance'] if final < _mean([x['chance'] - 2 * x['icl_se'] for x in s]) else [])
        lines.append(
            f"| {label(width, cls, wd)} | {sum(1 for r in runs if r['summary'])}/{len(runs)} | {_mean(peaks):.3f} "
            f"[{min(peaks):.3f}-{max(peaks):.3f}] | {_mean([x['peak_iter'] for x in s]):.0f} "
            f"[{min(x['peak_iter'] for x in s)}-{max(x['peak_iter'] for x in s)}] | "
            f"{final:.3f} | {_mean([x['final_iwl'] for x in s]):.3f} | "
            f"{_mean([x['ece_at_peak'] for x in s]):.3f} | {_mean([x['attn_image_at_peak'] for x in s]):.2f} | "
            f"{_mean([x['attn_label_at_peak'] for x in s]):.2f} | {_fmt(_mean(exps) if exps else None, '.3g')} | "
            f"{', '.join(f'{v:g}' for v in l2s) or '-'} | {', '.join(flags) or '-'} |")
    return lines


def write_report(root_dir, threshold=0.9):
    """Figures and report.md from every cell in root_dir. Returns the verdict dicts (one per width)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cells = [c for c in load_cells(root_dir) if c['rows']]
    if not cells:
        print(f"grid: no cell with metrics in {root_dir}: no report")
        return []
    fig_dir = os.path.join(root_dir, 'figures')
    os.makedirs(fig_dir, exist_ok=True)
    widths_seen = sorted({c['width'] for c in cells})
    class_names = [k for k in ('few', 'many') if any(c['classes'] == k for c in cells)] + \
        sorted({c['classes'] for c in cells} - {'few', 'many'})
    decays = sorted({c['weight_decay'] for c in cells})
    groups = {}  # (width, classes, wd) -> cells (seeds)
    for c in cells:
        c['stats'] = run_stats(c['rows'])
        c['exponent'] = (c['weight_decay'] * lr_sum(c['summary']['config'])) if c['summary'] else None
        groups.setdefault((c['width'], c['classes'], c['weight_decay']), []).append(c)
    colors = plt.get_cmap('viridis')
    color_of = {wd: colors(i / max(1, len(decays) - 1) * 0.9) for i, wd in enumerate(decays)}
    chance = _mean([c['stats']['chance'] for c in cells])  # measured on the ICL episodes (0.5 when balanced)

    def label(width, cls, wd=None):
        return ' '.join(s for s in (cls.capitalize(), width, None if wd is None else f"wd={wd:g}") if s)

    # 1. per group: ICL and IWL vs steps, mean over seeds with min-max band, peak and final ICL marked
    group_figs = []
    def shown(runs):  # finished seeds (all of one length); the running ones only while none has finished
        return [r for r in runs if r['summary']] or runs

    for (width, cls, wd), runs in sorted(groups.items()):
        runs = shown(runs)
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharex=True)
        for ax, key, title in [(axes[0], 'icl_acc', 'ICL (held-out classes)'), (axes[1], 'iwl_acc', 'IWL (seen classes)')]:
            it, mean, lo, hi = _curves(runs, key)
            ax.fill_between(it, lo, hi, alpha=0.25, color='C0', label=f'min-max over {len(runs)} seeds')
            ax.plot(it, mean, color='C0', label='mean')
            if key == 'icl_acc':  # the numbers of the report table: each seed's peak, the mean final
                peaks = [r['stats'] for r in runs]
                ax.plot([p['peak_iter'] for p in peaks], [p['peak_icl'] for p in peaks], 'v', color='C3', ms=8,
                        label=f"seed peaks: mean {_mean([p['peak_icl'] for p in peaks]):.3f} "
                              f"@ {_mean([p['peak_iter'] for p in peaks]):.0f}")
                ax.plot(it[-1], mean[-1], 'o', color='k', ms=7, label=f'final {mean[-1]:.3f}')
            ax.axhline(chance if key == 'icl_acc' else 0, color='gray', lw=0.8, ls=':')
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel('step')
            ax.legend(fontsize=7, loc='best')
        fig.suptitle(label(width, cls, wd), fontsize=11)
        name = f"group_{cls}_{wd_name(wd)}" + (f"_{width}" if width else '') + '.png'
        _save(fig, os.path.join(fig_dir, name))
        plt.close(fig)
        group_figs.append(name)

    # 2. ICL (and IWL) vs steps for every decay, Few and Many side by side: transience shows here
    columns = [(w, cls) for w in widths_seen for cls in class_names]
    fig, axes = plt.subplots(2, len(columns), figsize=(4.6 * len(columns), 6.4), sharex=True, sharey=True,
                             squeeze=False)
    for j, (width, cls) in enumerate(columns):
        for i, (key, name) in enumerate([('icl_acc', 'ICL'), ('iwl_acc', 'IWL')]):
            ax = axes[i, j]
            for wd in decays:
                runs = groups.get((width, cls, wd))
                if not runs:
                    continue
                it, mean, lo, hi = _curves(shown(runs), key)
                ax.fill_between(it, lo, hi, alpha=0.12, color=color_of[wd])
                ax.plot(it, mean, color=color_of[wd], label=f"wd={wd:g}")
            ax.set_title(f"{label(width, cls)}: {name}", fontsize=10)
            ax.axhline(chance if key == 'icl_acc' else 0, color='gray', lw=0.8, ls=':')
            if i == 1:
                ax.set_xlabel('step')
            if j == 0:
                ax.set_ylabel(f"{name} accuracy")
    axes[0, -1].legend(fontsize=8, loc='best')
    fig.suptitle('mean over seeds, band = min-max', fontsize=10)
    _save(fig, os.path.join(root_dir, 'icl_vs_steps.png'))
    plt.close(fig)

    # 3. peak ICL vs weight decay, Few and Many bars, error bars = seed min-max
    fig, axes = plt.subplots(1, len(widths_seen), figsize=(max(6, 1.1 * len(decays) + 2) * len(widths_seen), 3.8),
                             squeeze=False)
    for j, width in enumerate(widths_seen):
        ax = axes[0, j]
        bar_w = 0.8 / len(class_names)
        for k, cls in enumerate(class_names):
            xs, heights, err_lo, err_hi = [], [], [], []
            for x, wd in enumerate(decays):
                runs = groups.get((width, cls, wd))
                if not runs:
                    continue
                peaks = [r['stats']['peak_icl'] for r in shown(runs)]
                xs.append(x + (k - (len(class_names) - 1) / 2) * bar_w)
                heights.append(_mean(peaks))
                err_lo.append(_mean(peaks) - min(peaks))
                err_hi.append(max(peaks) - _mean(peaks))
            bars = ax.bar(xs, heights, bar_w, yerr=[err_lo, err_hi], capsize=3, label=label('', cls), color=f"C{k}")
            ax.bar_label(bars, fmt='%.2f', fontsize=7, padding=4)
        base = groups.get((width, 'many', 0.0))
        if base:
            ref = threshold * _mean([r['stats']['peak_icl'] for r in base])
            ax.axhline(ref, color='C3', ls='--', lw=1, label=f"{threshold:g} x Many wd=0 peak")
        ax.axhline(chance, color='gray', lw=0.8, ls=':', label=f'chance {chance:.3f}')
        ax.set_xticks(range(len(decays)), [f"{wd:g}" for wd in decays])
        ax.set_xlabel('weight decay')
        ax.set_ylabel('peak ICL accuracy (mean over seeds)')
        ax.set_ylim(0, 1.1)
        ax.set_title(f"peak ICL vs weight decay{' (' + width + ')' if width else ''}", fontsize=10)
        ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.18), ncol=4, frameon=False)
    _save(fig, os.path.join(root_dir, 'peak_icl.png'))
    plt.close(fig)

    # 4. report.md
    finished = [c for c in cells if c['summary']]
    lines = [f"# Grid report: {root_dir}", "",
             f"{len(finished)} of {len(cells)} cells with metrics are finished"
             + (f" (still running or interrupted: {', '.join(c['name'] for c in cells if not c['summary'])})"
                if len(finished) < len(cells) else '') + ".", ""]
    if finished:
        configs = [c['summary']['config'] for c in finished]
        differing = sorted(k for k in configs[0] if k not in VARYING_KEYS and len({repr(cf.get(k)) for cf in configs}) > 1)
        cf = configs[0]
        lines += [f"Same in every finished cell: dataset {cf['dataset']}, data_seed {cf['data_seed']} (holdout classes, "
                  f"label vocabulary of {cf['n_labels']} ({cf['label_mode']}), eval episodes), {cf['max_iters']} steps x "
                  f"batch {cf['batch_size']} x {2 * cf['context_len'] + 1} tokens, lr {cf['learning_rate']:g} "
                  f"({cf['lr_schedule']}), {cf['n_layer']} layers."]
        if differing:
            lines += ["", "**Warning: these config keys differ between cells (they should not):** "
                      + ", ".join(f"{k} ({sorted({repr(c.get(k)) for c in configs})})" for k in differing)]
        lines += [""]
    verdicts = []
    for width in widths_seen:
        vgroups = {(cls, wd): [r['stats'] for r in runs if r['summary']]
                   for (w, cls, wd), runs in groups.items() if w == width}
        head = f"## Verdict{' (' + width + ')' if width else ''}"
        try:
            v = verdict(vgroups, threshold)
        except ValueError as e:
            lines += [head, "", f"No verdict yet: {e}.", ""]
            continue
        v['width'] = width
        verdicts.append(v)
        lines += [head, "", f"**{v['verdict']}**: {v['reason']}.", "",
                  f"Many+wd=0 baseline: peak ICL {v['baseline_peak']:.3f}, attn_match_label at peak "
                  f"{v['baseline_attn_label']:.2f}. Few+wd=0 reaches {v['few_wd0_ratio']:.3f} of it "
                  f"(final IWL {v['few_wd0_final_iwl']:.3f}).", "",
                  "| Few cell | peak ICL / Many wd=0 peak (seed range) | final ICL / Many wd=0 final | "
                  "attn_match_label @peak | attn ok | final IWL | IWL ok |",
                  "|---|---|---|---|---|---|---|"]
        for c in v['candidates']:
            lines.append(f"| wd={c['weight_decay']:g} | {c['ratio']:.3f} ({c['ratio_lo']:.3f}-{c['ratio_hi']:.3f}) | "
                         f"{'-' if c['final_ratio'] is None else format(c['final_ratio'], '.3f')} | "
                         f"{c['attn_label']:.2f} | {'yes' if c['attn_ok'] else 'no'} | {c['final_iwl']:.3f} | "
                         f"{'yes' if c['iwl_ok'] else 'no'} |")
        lines.append("")
    lines += ["Rule: ratio = mean-over-seeds peak ICL of a Few+wd>0 cell / mean peak ICL of Many+wd=0 (same width); "
              "its seed range is [min Few seed peak / max Many seed peak, max Few seed peak / min Many seed peak]. "
              "A cell counts only *without collapse*: (i) at its peak, attn_match_label (query attention on the label "
              "after the matching context image, best layer) is >= 0.5 x the Many+wd=0 value at its peak, so its ICL runs "
              "on the same induction circuit and not on a shortcut; (ii) its final IWL is >= 0.5 x the Few+wd=0 final IWL, "
              "so decay shifted the ICL/IWL balance instead of erasing what the network can store in its weights.  "
              f"SUPPORTED if some Few+wd>0 cell without collapse has its whole seed range >= {threshold:g}; else "
              f"INCONCLUSIVE if the range of some cell without collapse straddles {threshold:g}; else NOT SUPPORTED "
              "(all below, or the cells that reach it collapse).", ""]

    lines += cells_table(groups, class_names, label, shown)
    lines += ["", "seeds: finished/with metrics. lr·wd·steps = wd x (sum of the learning rate over all steps, "
              "from the config's schedule): decayed weights that get no gradient shrink by exp(-lr·wd·steps).", "",
              "## Runs", "",
              "| run | last step | peak ICL | step of peak | final ICL | final IWL | ECE @peak | attn label @peak | log |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: c['name']):
        s = c['stats']
        lines.append(f"| {c['name']} | {s['final_iter']}{'' if c['summary'] else ' (running)'} | {s['peak_icl']:.3f} | "
                     f"{s['peak_iter']} | {s['final_icl']:.3f} | {s['final_iwl']:.3f} | {s['ece_at_peak']:.3f} | "
                     f"{s['attn_label_at_peak']:.2f} | {c['name']}/train.log |")
    lines += ["", "## Figures", "", "![ICL and IWL vs steps](icl_vs_steps.png)", "",
              "![peak ICL vs weight decay](peak_icl.png)", ""]
    lines += [f"- [{name}](figures/{name})" for name in group_figs]
    text = '\n'.join(lines) + '\n'
    for name, content in [('report.md', text), ('verdict.json', json.dumps(verdicts, indent=2))]:
        tmp = os.path.join(root_dir, f"{name}.{os.getpid()}.tmp")
        with open(tmp, 'w') as f:
            f.write(content)
        os.replace(tmp, os.path.join(root_dir, name))
    return verdicts


def finish_report(root_dir):
    """The phase diagram (phase=True, phase.py) or the verdict report, from what is in root_dir."""
    if not phase:
        print_verdicts(write_report(root_dir), root_dir)
        return
    from phase import write_phase_report
    cells = [c for c in load_cells(root_dir) if c['rows']]
    for c in cells:
        c['stats'] = run_stats(c['rows'])
    write_phase_report(root_dir, cells, icl_threshold)


def print_verdicts(verdicts, root_dir):
    for v in verdicts:
        print(f"VERDICT{' (' + v['width'] + ')' if v['width'] else ''}: {v['verdict']} - {v['reason']}")
    print(f"grid: report in {os.path.join(root_dir, 'report.md')}; figures {os.path.join(root_dir, 'icl_vs_steps.png')}, "
          f"{os.path.join(root_dir, 'peak_icl.png')}, {os.path.join(root_dir, 'figures')}/")


# -----------------------------------------------------------------------------
if __name__ == '__main__':
    if not grid_dir:  # out* is git-ignored; a paper-scale grid never shares a folder with the synthetic one
        grid_dir = 'out_grid' + ''.join('_' + os.path.splitext(os.path.basename(cf))[0] for cf in train_configs)
    root_dir = os.path.abspath(grid_dir)
    if report:
        finish_report(root_dir)
        sys.exit(0)
    class_names = [s.strip() for s in classes.split(',') if s.strip()]
    for cls in class_names:
        if cls not in ('few', 'many') and not (cls.isdigit() and int(cls) > 0):
            fail(f"classes={classes!r}: each entry must be 'few', 'many' or a number of training classes")
    decays = split_list('weight_decays', weight_decays, float)
    if any(wd < 0 for wd in decays):
        fail(f"weight_decays={weight_decays!r} must all be >= 0")
    if regularizers:
        decays = parse_regularizers(regularizers)
    seed_list = split_list('seeds', seeds, int)
    width_list = split_list('widths', widths, str)
    for cf in train_configs + [os.path.join('config', f'{w}.py') for w in width_list if not w.isdigit()]:
        if not os.path.isfile(os.path.join(ROOT, cf)) and not os.path.isfile(cf):
            fail(f"config file not found: {cf}")
    # cells run in ROOT: keep paths relative to it when they are inside it (shorter cmd.txt), else absolute
    train_configs = [os.path.relpath(os.path.abspath(cf), ROOT) if os.path.isfile(cf)
                     and not os.path.relpath(os.path.abspath(cf), ROOT).startswith('..')
                     else os.path.abspath(cf) if os.path.isfile(cf) else cf for cf in train_configs]
    if train_configs:  # paper scale: Few/Many are config files
        for cf in (few_config, many_config):
            if not os.path.isfile(os.path.join(ROOT, cf)):
                fail(f"config file not found: {cf} (few_config / many_config)")
        class_args = {'few': [few_config], 'many': [many_config]}
        common = []
    else:  # the embedded synthetic grid
        class_args = {'few': shlex.split(synthetic_few), 'many': shlex.split(synthetic_many)}
        common = shlex.split(synthetic_args)
    common += shlex.split(train_args)
    cells = enumerate_cells(class_names, decays, seed_list, width_list, train_configs, class_args, common)
    try:
        index, count = parse_shard(shard, os.environ)
    except ValueError as e:
        fail(str(e))
    mine = shard_cells(cells, index, count)
    if jobs < 0 or threads < 0:
        fail("jobs and threads must be >= 0")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    n_jobs = jobs
    if n_jobs == 0:
        import torch
        n_jobs = 1 if torch.cuda.is_available() else cores
    n_threads = threads or max(1, cores // n_jobs)
    finished = sum(is_finished(os.path.join(root_dir, c['name'])) for c in mine)
    print(f"grid: {len(cells)} cells in {root_dir}; shard {index}/{count} has {len(mine)} "
          f"({finished} finished); {n_jobs} at a time, {n_threads} threads each")
    if dry_run:
        for unit in pack_units(mine, root_dir, group_size):
            print(f"{', '.join(c['name'] for c in unit)}: {shlex.join(unit_command(unit, root_dir))}")
        sys.exit(0)
    os.makedirs(root_dir, exist_ok=True)
    t0 = time.time()
    result = run_grid(mine, root_dir, n_jobs, n_threads, group_size)
    print(f"grid: {len(result['done'])} run, {len(result['skipped'])} already finished, {len(result['busy'])} "
          f"busy elsewhere, {len(result['interrupted'])} interrupted, {len(result['failed'])} failed "
          f"in {(time.time() - t0) / 60:.1f} min")
    for name, rc, log_path in result['failed']:
        print(f"grid: FAILED {name} (exit code {rc}); log: {log_path}; rerun grid.py to retry it")
    finish_report(root_dir)
    sys.exit(1 if result['failed'] else 0)
