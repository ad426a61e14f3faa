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
After each cell a progress line: 'grid: 12/30 done, 2 running, 1 failed, ~9 min left'. Cells whose train.py
arguments turn wandb_log on get --wandb_group=<grid folder name>: one wandb group per grid, a run per cell.
"""
import contextlib
import io
import json
import math
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time

from report import _fmt, cached_decay_exponent, load_cells, reg_name, run_stats, verdict, wd_name, write_report  # noqa: F401 (tests use grid.*)

_here = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------
# defaults: the axis values and Few/Many meaning live in config/grid.py (applied first, always)
grid_dir = ''               # one sub-folder per cell, plus the report; '' = out_grid (synthetic), out_grid_omniglot, ...
classes = 'few,many'
weight_decays = '0'
decay_exponents = ''        # '' = the weight_decays axis; else (replacing it) decay exponents wd * (sum of lr over the run), e.g.
                            # '0,0.3,3,30': each becomes the weight_decay that gives it under the cells' lr schedule
exponent_iters = 0          # the steps the exponents' sum of lr is taken over; 0 = the cells' max_iters (a grid that
                            # continues a shorter one's cells, extend_from, names that grid's max_iters to keep their decay)
seeds = '0'
widths = ''                 # '' = no width axis; 'd48,d96' -> config/d48.py, config/d96.py; '48' -> --n_embd=48
few_config = 'config/few.py'
many_config = 'config/many.py'
synthetic_few = '--n_train_classes=100'
synthetic_many = '--n_train_classes=1600'
synthetic_args = ''
train_args = ''             # extra train.py arguments for every cell, e.g. "--device=cuda:0 --compile=False"
train_script = 'train.py'   # what a cell runs (the tests put a fake trainer here)
group_size = 0              # > 1: train up to this many cells (at the same step) as one stacked model in one
                            # train.py group (member-batched; pays on a GPU, not on a CPU); 0 or 1: one train.py each
axes = ''                   # any train.py keys as extra axes, crossed with everything else: 'p_bursty=0.5,0.9;zipf_alpha=0,1'
regularizers = ''           # '' = the weight_decays axis; else e.g. 'none,wd=0.1,l2=1e-3,wd=1@mlp+head,swap=0.2+wd=1@mlp'
                            # (decay, classical L2, on chosen modules, label swap; parse_regularizer has the syntax)
extend_from = ''            # a finished grid at a shorter max_iters: a cell not started here whose namesake finished
                            # there is copied in and resumed to this grid's max_iters (the first steps are not run
                            # twice; exact for the constant and inverse_sqrt schedules, refused for cosine)
extra_cells = ''            # cells beside the classes x regularizers cross, each at every seed: 'classes:regularizer'
                            # pairs split by ';', e.g. '1600:none;100:swap=0.8+swap_to=all'
phase = False               # report a phase diagram (class count x regularizer heatmaps) instead of the verdict
icl_threshold = 0.8         # phase diagram: ICL 'appears' at the first class count whose peak ICL reaches this
jobs = 0                    # cells at a time on this machine; 0 = number of CPU cores (1 when CUDA is present)
threads = 0                 # OMP_NUM_THREADS per cell; 0 = the cores the machine's load leaves free // jobs (>= 1)
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


REG_SHORTHANDS = {'wd': 'weight_decay', 'l2': 'l2', 'swap': 'label_swap', 'swap_to': 'label_swap_to'}
REG_SYNTAX = ("'none', or terms joined by '+': wd=<float>, l2=<float> (either may end in @<modules>, e.g. "
              "wd=1@mlp+head; modules: encoder, attn, mlp, head), swap=<p in [0, 1]>, swap_to=train|all, "
              "or <train.py key>=<value> (a *_modules key's list joined by '+' too: forget_modules=label_embedding+head)")


def parse_regularizer(entry):
    """'swap=0.2+wd=1@mlp+head' -> {'label_swap': 0.2, 'weight_decay': 1.0, 'decay_modules': 'mlp,head'}:
    the train.py keys one regularizers entry sets. A '+' piece without '=' continues the module list."""
    from model import parse_decay_modules
    from training import train_defaults
    defaults = train_defaults()
    setting, last = {}, None
    for piece in [p.strip() for p in entry.split('+')]:
        if entry.strip() == 'none':
            return {}
        if '=' not in piece:  # the module list of wd=<v>@ or l2=<v>@, or of a *_modules key, goes on
            listed = 'decay_modules' if last in ('weight_decay', 'l2') else last
            if not (listed or '').endswith('_modules') or listed not in setting or not piece:
                raise ValueError(f"{entry!r}: {piece!r} is no term (a module list follows wd=<v>@, l2=<v>@ or "
                                 f"<key>_modules=)")
            setting[listed] += ',' + piece
            continue
        kind, _, value = piece.partition('=')
        value, _, modules = value.partition('@')
        key = REG_SHORTHANDS.get(kind.strip(), kind.strip())
        if key not in defaults or key in setting:
            raise ValueError(f"{entry!r}: {kind!r} is {'set twice' if key in setting else 'no train.py key'}")
        default = defaults[key]
        try:
            setting[key] = (value == 'True') if isinstance(default, bool) else type(default)(value)
        except ValueError:
            raise ValueError(f"{entry!r}: {key}={value!r} is not a {type(default).__name__}")
        if key in ('weight_decay', 'l2', 'label_swap') and not setting[key] > 0:
            raise ValueError(f"{entry!r}: {kind}={value} must be > 0 (write 'none' for no regulariser)")
        if modules:
            if key not in ('weight_decay', 'l2') or setting.get('decay_modules', modules) != modules:
                raise ValueError(f"{entry!r}: '@modules' goes on wd or l2, once")
            setting['decay_modules'] = modules
        last = key
    if 'decay_modules' in setting:
        setting['decay_modules'] = ','.join(parse_decay_modules(setting['decay_modules']))
    if setting.get('label_swap', 0) > 1:
        raise ValueError(f"{entry!r}: swap={setting['label_swap']} must be in [0, 1]")
    from training import check_config
    try:  # the rules a cell's train.py would apply, on the grid's train configs (REGULARIZER_BASE), before any cell runs
        check_config({**defaults, **REGULARIZER_BASE, **setting})
    except ValueError as e:
        raise ValueError(f"{entry!r}: {e}")
    return setting


REGULARIZER_BASE = {}  # the train.py config of the grid's train config files: what a regularizer is checked on


def train_config_base(train_configs):
    """The train.py config the grid's train config files give (config/omniglot.py: dataset='omniglot', ...), so an entry
    is checked as its cells will run it (augment=0.5 is refused on the synthetic default, not on Omniglot)."""
    from training import parse_train_args
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return parse_train_args(rooted(train_configs))
        except SystemExit:  # the configurator printed the key and its source
            fail("the grid's train configs are refused (above); no cell was started")


def parse_regularizers(text):
    """'none,wd=0.01,wd=1@mlp,swap=0.2+wd=1@mlp' -> [(cell name part, setting), ...], the setting being the
    train.py keys the entry sets ({} for none); a clear error naming the entry otherwise (REG_SYNTAX)."""
    regs = []
    for entry in [s.strip() for s in text.split(',') if s.strip()]:
        try:
            setting = parse_regularizer(entry)
        except ValueError as e:
            fail(f"regularizers: {e}; each entry is {REG_SYNTAX}")
        regs.append((reg_name(setting), setting))
    if len({name for name, _ in regs}) != len(regs):
        fail(f"regularizers={text!r} lists a value twice")
    return regs


def parse_axes(text):
    """'p_bursty=0.5,0.9;zipf_alpha=0,1' -> the settings of their product, as (name part, setting) pairs:
    [('p_bursty_0.5_zipf_alpha_0', {'p_bursty': 0.5, 'zipf_alpha': 0.0}), ...]. Each axis is one train.py
    key and its values; a cell's setting (and so its report label and column) is its regulariser's plus these."""
    import itertools
    axes = []
    for part in [p.strip() for p in text.split(';') if p.strip()]:
        key, _, values = part.partition('=')
        if not values:
            fail(f"axes: {part!r} must look like key=v1,v2 (axes are separated by ';')")
        try:
            settings = [parse_regularizer(f"{key.strip()}={v.strip()}") for v in values.split(',') if v.strip()]
        except ValueError as e:
            fail(f"axes: {e}")
        axes.append(settings)
    combos = []
    for settings in itertools.product(*axes):
        merged = {k: v for s in settings for k, v in s.items()}
        combos.append((reg_name(merged), merged))
    return combos


def cross(regs, axis_settings):
    """Every regulariser entry with every combination of the generic axes (names joined by '_')."""
    if not axis_settings:
        return regs
    out = []
    for name, setting in regs:
        for axis_name, axis_setting in axis_settings:
            overlap = set(setting) & set(axis_setting)
            if overlap:
                fail(f"axes and regularizers both set {', '.join(sorted(overlap))}")
            merged = {**setting, **axis_setting}
            out.append((reg_name(merged), merged))
    return out


def _arg(key, value):
    return f"--{key}={value!r}" if isinstance(value, float) else f"--{key}={value}"


def class_cell_args(cls, class_args):
    """train.py arguments that set a cell's classes: 'few'/'many' from class_args, a number N = N classes."""
    return class_args[cls] if cls in class_args else [f'--n_train_classes={int(cls)}']


def rooted(args):
    """A cell's train.py arguments as a process outside ROOT must pass them: config files joined to ROOT, where cells
    run."""
    return [a if a.startswith('--') else os.path.join(ROOT, a) for a in args]


def exponent_decays(exponents, args):
    """[(cell name, setting)] for each decay exponent E: weight_decay = E / (sum of the lr a cell with these train.py
    arguments takes over its max_iters, or over exponent_iters steps when set), to 4 significant digits, so the
    cell's lr*wd*steps is E. Cells are named exp<E>; every cell of a grid shares its lr schedule and step budget, so
    one sum serves all."""
    from training import parse_train_args
    if exponent_iters:
        args = [*args, f'--max_iters={exponent_iters}']
    with contextlib.redirect_stdout(io.StringIO()):
        total = cached_decay_exponent({**parse_train_args(rooted(args)), 'weight_decay': 1.0})  # linear in wd
    return [(f"exp{e:g}", {'weight_decay': float(f"{e / total:.4g}")} if e else {}) for e in exponents]


def check_cells(cells):
    """Every cell's train.py arguments parsed and checked as train.py would (configurator, then
    training.check_config), before any cell starts: a mistyped key in a config file or --train_args stops the grid
    with the configurator's one line naming the key and where it came from."""
    from training import check_config, parse_train_args
    seen = set()
    for cell in cells:
        args = tuple(rooted(cell['args']))
        if args in seen:
            continue
        seen.add(args)
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                config = parse_train_args(list(args))
            except SystemExit:  # the configurator printed the key and its source
                fail(f"cell {cell['name']}: its train.py arguments are refused (above); no cell was started")
        try:
            check_config(config)
        except ValueError as e:
            fail(f"cell {cell['name']}: {e}; no cell was started")


def class_cell_name(cls):
    return cls if cls in ('few', 'many') else f"c{int(cls)}"


def enumerate_cells(class_names, decays, seed_list, width_list, train_configs, class_args, common_args):
    """Every cell of the grid as a dict; seed-major order, so a partial grid covers all conditions early.
    class_args: {'few': [...], 'many': [...]} train.py arguments that make a cell Few or Many (a class
    entry may also be a number of classes). decays: weight decays, or (name, weight_decay, l2) triples
    from parse_regularizers."""
    regs = [r if isinstance(r, tuple) else (wd_name(r), {'weight_decay': r} if r else {}) for r in decays]
    cells = []
    for seed in seed_list:
        for width in width_list or ['']:
            for cls in class_names:
                for reg, setting in regs:
                    name = f"{class_cell_name(cls)}_{reg}_s{seed}" + (f"_{width}" if width else '')
                    width_args = ([] if not width else [f'--n_embd={int(width)}'] if width.isdigit()
                                  else [os.path.join('config', f'{width}.py')])
                    wd, l2 = setting.get('weight_decay', 0.0), setting.get('l2', 0.0)
                    others = [_arg(k, v) for k, v in setting.items() if k not in ('weight_decay', 'l2')]
                    args = [*train_configs, *class_cell_args(cls, class_args), *width_args, *common_args,
                            f'--weight_decay={wd!r}', *([f'--l2={l2!r}'] if l2 else []), *others, f'--seed={seed}']
                    cells.append({'name': name, 'classes': class_cell_name(cls), 'weight_decay': wd, 'l2': l2,
                                  'setting': setting, 'regularizer': reg, 'seed': seed, 'width': width, 'args': args})
    return cells


def add_extra_cells(cells, text, seed_list, *cell_args):
    """cells plus the extra_cells pairs ('1600:none;100:swap=0.8+swap_to=all'), each at every seed, in seed-major
    order again; a pair that is already a cell of the cross adds nothing."""
    names = {c['name'] for c in cells}
    for pair in [p.strip() for p in text.split(';') if p.strip()]:
        cls, sep, entry = pair.partition(':')
        if not sep or not (cls.strip() in ('few', 'many') or cls.strip().isdigit()):
            fail(f"extra_cells: {pair!r} must look like <classes>:<regularizer>, e.g. 1600:none")
        for cell in enumerate_cells([cls.strip()], parse_regularizers(entry), seed_list, *cell_args):
            if cell['name'] not in names:
                cells.append(cell)
                names.add(cell['name'])
    return sorted(cells, key=lambda c: c['seed'])  # stable: the cross's order within a seed, extras after


def extend_cells(cells, root_dir, source_dir):
    """Copy each cell of source_dir that finished there into root_dir when root_dir has not started it, minus
    its summary, so that the grid resumes it to its own (longer) max_iters. Returns the names copied."""
    import shutil
    from checkpoint import has_checkpoint, load_checkpoint
    copied = []
    for cell in cells:
        source, target = os.path.join(source_dir, cell['name']), os.path.join(root_dir, cell['name'])
        if not is_finished(source) or has_checkpoint(target):
            continue
        schedule = load_checkpoint(source)['config']['lr_schedule']
        if schedule == 'cosine':
            fail(f"extend_from: {source} has a cosine schedule, which depends on max_iters; run it from scratch")
        shutil.copytree(source, target, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if n in ('summary.json', 'exposure.json', 'lock')])
        with open(os.path.join(target, 'train.log'), 'a') as f:
            f.write(f"=== grid.py: copied from {source} (finished at its max_iters) to be resumed here\n")
        copied.append(cell['name'])
    return copied


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
    """One train.py cell, or a train.py group whose members are the cells' own train.py arguments (split by '::')."""
    if len(unit) == 1:
        return cell_command(unit[0], os.path.join(root_dir, unit[0]['name']))
    argv = []
    for cell in unit:
        argv += [*cell_command(cell, os.path.join(root_dir, cell['name']))[2:], '::']
    return [sys.executable, train_script, *argv[:-1]]


def is_finished(cell_dir):
    return os.path.exists(os.path.join(cell_dir, 'summary.json'))


def cell_step(cell_dir):
    """The step a cell's checkpoint is at (0 without one): a group trains only cells at the same step."""
    from checkpoint import has_checkpoint, load_checkpoint
    if not has_checkpoint(cell_dir):
        return 0
    try:
        return load_checkpoint(cell_dir)['iter_num']
    except FileNotFoundError:
        return 0


def pack_units(cells, root_dir, size):
    """The processes to run: [cell] each, or (size > 1) groups of up to `size` unfinished cells that agree on every
    key a group applies once for all its members (training.GROUP_SHARED, from each cell's parsed arguments) and are
    at the same step, in grid order, so an interrupted group resumes as the same group."""
    if size <= 1:
        return [[c] for c in cells]
    from training import GROUP_SHARED, parse_train_args
    plans = {}
    for c in cells:
        with contextlib.redirect_stdout(io.StringIO()):
            config = parse_train_args(rooted(c['args']))
        shared = tuple(repr(config[k]) for k in sorted(GROUP_SHARED))
        plans.setdefault((shared, cell_step(os.path.join(root_dir, c['name']))), []).append(c)
    return [group[i:i + size] for group in plans.values() for i in range(0, len(group), size)]


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
            json.dump({k: cell[k] for k in ('name', 'classes', 'weight_decay', 'l2', 'setting', 'regularizer', 'seed',
                                            'width')}, f)
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


def progress_line(result, n_cells, n_running, cell_times, n_jobs):
    """'grid: 12/30 done, 2 running, 1 failed, ~9 min left'. Done counts cells finished before this invocation;
    the time left is the median time of a cell finished in this invocation (a group's time over its members)
    times the rounds of n_jobs the cells left take, 'unknown' until one finished."""
    done = len(result['done']) + len(result['skipped'])
    left = n_cells - done - len(result['failed']) - len(result['busy']) - len(result['interrupted'])
    if left == 0:
        eta = 'none left'
    elif not cell_times:
        eta = 'time left unknown'
    else:
        seconds = statistics.median(cell_times) * math.ceil(left / n_jobs)
        eta = f"~{seconds / 60:.0f} min left" if seconds >= 60 else f"~{seconds:.0f} s left"
    return f"grid: {done}/{n_cells} done, {n_running} running, {len(result['failed'])} failed, {eta}"


def run_grid(cells, root_dir, n_jobs, n_threads, size=0):
    """Run the cells n_jobs processes at a time (each one train.py cell, or with size > 1 a train.py group),
    with a progress line after each. Returns {'done': [...], 'skipped': [...], 'busy': [...],
    'failed': [(name, returncode, log path)], 'interrupted': [...]}."""
    result = {'done': [], 'skipped': [], 'busy': [], 'failed': [], 'interrupted': []}
    env = {**os.environ, 'OMP_NUM_THREADS': str(n_threads), 'MKL_NUM_THREADS': str(n_threads)}
    pending = pack_units([c for c in cells if not is_finished(os.path.join(root_dir, c['name']))], root_dir, size)
    result['skipped'] = [c['name'] for c in cells if is_finished(os.path.join(root_dir, c['name']))]
    running = []  # (proc, log file, unit, start time)
    cell_times = []  # seconds per finished cell, this invocation
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
                    running.append((*start_unit(unit, root_dir, env, n_threads), unit, time.time()))
            time.sleep(0.2)
            for entry in list(running):
                proc, log, unit, started = entry
                if proc.poll() is None:
                    continue
                log.close()
                running.remove(entry)
                n_done = len(result['done'])
                finish_unit(unit, proc.returncode, root_dir, result)
                cell_times += [(time.time() - started) / len(unit)] * (len(result['done']) - n_done)
                print(progress_line(result, len(cells), sum(len(u) for _, _, u, _ in running), cell_times, n_jobs),
                      flush=True)
    finally:
        for proc, log, unit, _ in running:  # KeyboardInterrupt etc.: stop children first
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


def logs_to_wandb(args):
    """Does a cell with these train.py arguments log to wandb (--wandb_log=True, or a config file setting it)?
    Arguments train.py would refuse count as no: the cell's own train.log says what is wrong with them."""
    args = rooted(args)
    if not any('wandb_log' in (a if a.startswith('--') else _read(a) or '') for a in args):
        return False  # nothing mentions it: the default, off (and no torch import for the grid)
    from training import parse_train_args
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return bool(parse_train_args(args)['wandb_log'])
        except SystemExit:
            return False


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
    seed_list = split_list('seeds', seeds, int)
    width_list = split_list('widths', widths, str)
    for cf in train_configs + [os.path.join('config', f'{w}.py') for w in width_list if not w.isdigit()]:
        if not os.path.isfile(os.path.join(ROOT, cf)) and not os.path.isfile(cf):
            fail(f"config file not found: {cf}")
    REGULARIZER_BASE.update(train_config_base(train_configs))
    if regularizers:
        decays = parse_regularizers(regularizers)
    if axes:
        decays = cross([r if isinstance(r, tuple) else (wd_name(r), {'weight_decay': r} if r else {})
                        for r in decays], parse_axes(axes))
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
    if exponent_iters and not decay_exponents:
        fail(f"exponent_iters={exponent_iters} sets the steps of decay_exponents, which this grid does not set")
    if decay_exponents:
        if regularizers:
            fail("decay_exponents and regularizers are two decay axes: set one of them")
        exponents = split_list('decay_exponents', decay_exponents, float)
        if any(e < 0 for e in exponents):
            fail(f"decay_exponents={decay_exponents!r} must all be >= 0")
        if exponent_iters < 0:
            fail(f"exponent_iters={exponent_iters} must be >= 0 (0: the cells' max_iters)")
        decays = exponent_decays(exponents, [*train_configs, *class_cell_args(class_names[0], class_args), *common])
        if axes:
            decays = cross(decays, parse_axes(axes))
    cells = enumerate_cells(class_names, decays, seed_list, width_list, train_configs, class_args, common)
    cells = add_extra_cells(cells, extra_cells, seed_list, width_list, train_configs, class_args, common)
    check_cells(cells)
    for cell in cells:  # a grid's cells share a wandb group named after its folder (runs are named after cells)
        if logs_to_wandb(cell['args']):
            cell['args'] = [*cell['args'], f'--wandb_group={os.path.basename(root_dir)}']
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
    # threads per cell: the cores other work leaves free (1-minute load), shared by the cells at a time; OpenMP
    # threads spinning on a busy core cost a CPU cell 30x (1.1 steps/s against 31-43 with one thread)
    busy = round(os.getloadavg()[0]) if hasattr(os, 'getloadavg') else 0
    n_threads = threads or max(1, (cores - busy) // n_jobs)
    finished = sum(is_finished(os.path.join(root_dir, c['name'])) for c in mine)
    print(f"grid: {len(cells)} cells in {root_dir}; shard {index}/{count} has {len(mine)} "
          f"({finished} finished); {n_jobs} at a time, {n_threads} threads each "
          + ("(--threads)" if threads else f"({cores} cores, {busy} busy with other work, over {n_jobs} jobs)"))
    if dry_run:  # each process to start: a cell, or a group (--group_size) of cells that agree on GROUP_SHARED
        for unit in pack_units(mine, root_dir, group_size):
            print(f"{', '.join(c['name'] for c in unit)}: {shlex.join(unit_command(unit, root_dir))}")
        sys.exit(0)
    os.makedirs(root_dir, exist_ok=True)
    if extend_from:
        copied = extend_cells(mine, root_dir, os.path.abspath(extend_from))
        print(f"grid: {len(copied)} cells copied from {extend_from} to be resumed to this grid's max_iters")
    t0 = time.time()
    result = run_grid(mine, root_dir, n_jobs, n_threads, group_size)
    print(f"grid: {len(result['done'])} run, {len(result['skipped'])} already finished, {len(result['busy'])} "
          f"busy elsewhere, {len(result['interrupted'])} interrupted, {len(result['failed'])} failed "
          f"in {(time.time() - t0) / 60:.1f} min")
    for name, rc, log_path in result['failed']:
        print(f"grid: FAILED {name} (exit code {rc}); log: {log_path}; rerun grid.py to retry it")
    finish_report(root_dir)
    sys.exit(1 if result['failed'] else 0)
