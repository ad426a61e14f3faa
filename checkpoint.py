"""
A run directory's files, written so that a kill at any moment loses nothing (and a saved run's config read
with the keys newer than it filled in, saved_config):
- ckpt.pt is replaced atomically (write ckpt.pt.tmp, fsync, rename); the one before it is kept as
  ckpt_prev.pt and used if ckpt.pt turns out unreadable;
- metrics.jsonl gets one fsync'd JSON line per eval; a torn last line (killed mid-append) is
  dropped on read, and resume cuts the file back to the checkpoint's last eval.
"""
import difflib
import json
import os
import signal
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CKPT = 'ckpt.pt'
PREV_CKPT = 'ckpt_prev.pt'
METRICS = 'metrics.jsonl'


# Fault injection for the tests: BURSTYICL_FAULT='<point>:<n>' SIGKILLs this process the n-th time
# it reaches fault_point('<point>'), so kills land exactly mid-checkpoint or mid-append.
_fault = os.environ.get('BURSTYICL_FAULT', '').partition(':')
_fault_hits = {}


def fault_point(name):
    if _fault[0] == name:
        _fault_hits[name] = _fault_hits.get(name, 0) + 1
        if _fault_hits[name] == int(_fault[2] or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def _fsync_write(path, write):
    with open(path, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(out_dir, state, name=CKPT):
    path = os.path.join(out_dir, name)
    tmp = path + '.tmp'
    _fsync_write(tmp, lambda f: torch.save(state, f))
    fault_point('checkpoint_written')
    if name == CKPT and os.path.exists(path):
        os.replace(path, os.path.join(out_dir, PREV_CKPT))
    fault_point('checkpoint_rotated')   # ckpt.pt is absent here: resume must fall back to ckpt_prev.pt
    os.replace(tmp, path)


def load_checkpoint(out_dir, name=CKPT, map_location='cpu'):
    """The newest readable checkpoint; falls back to ckpt_prev.pt (with a message) when ckpt.pt is
    missing or corrupt. Raises FileNotFoundError naming the paths when there is none."""
    candidates = [name] + ([PREV_CKPT] if name == CKPT else [])
    problems = []
    for candidate in candidates:
        path = os.path.join(out_dir, candidate)
        if not os.path.exists(path):
            problems.append(f"{path}: missing")
            continue
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
            if not isinstance(state, dict) or 'model' not in state or 'iter_num' not in state:
                raise ValueError("not a burstyicl checkpoint")
            if 'config' in state:
                state['config'] = saved_config(state['config'])
        except Exception as e:  # truncated zip, unpickling error, wrong file
            problems.append(f"{path}: unreadable ({type(e).__name__}: {e})")
            print(f"warning: checkpoint {path} is unreadable ({type(e).__name__}); trying the previous one")
            continue
        return state
    raise FileNotFoundError("no usable checkpoint: " + "; ".join(problems))


def _train_globals():
    """train.py's globals block (its embedded default config), run from its source so nothing drifts."""
    source = open(os.path.join(HERE, 'train.py')).read()
    start = source.index('# default config')
    namespace = {}
    exec(source[source.index('\n', start):source.index('config_keys =')], namespace)
    return namespace


def train_defaults(namespace=None):
    """train.py's config keys and their defaults (from its globals block, or that block's namespace)."""
    return {k: v for k, v in (namespace or _train_globals()).items()
            if not k.startswith('_') and isinstance(v, (int, float, bool, str))}


def saved_config(config):
    """A saved run's config with every key newer than the run filled in: its train.py default, or its entry in
    train.py's older_runs where runs from before the key behaved otherwise. So a new key is one global in
    train.py, and old runs still resume, evaluate and report."""
    namespace = _train_globals()
    older = {k: namespace['older_runs'].get(k, v) for k, v in train_defaults(namespace).items()}
    return {**older, **config}


class KeyReads(dict):
    """A run's config (every train.py key) that notes which keys were read (config[key] or config.get):
    data.build_run_data keys its cache on the keys building the data read, and train.py stops a run or a group when a
    key was read by nothing. A read of a key train.py lacks stops the process at once, naming both spellings: with a default
    (config.get('item_drop', 0.0) for item_dropout) it would train without the lever, without one it would stop with a
    traceback."""

    def __init__(self, config):
        super().__init__(config)
        self.read = set()

    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._note(key)
        return super().get(key, default)

    def _note(self, key):
        if key not in self:
            close = difflib.get_close_matches(str(key), list(self), n=1, cutoff=0.6)
            print(f"error: the code reads config key {key!r}, which train.py does not define"
                  + (f" (its key is {close[0]!r}?)" if close else '') + ": read a key by its train.py name",
                  file=sys.stderr)
            raise SystemExit(2)
        self.read.add(key)


def has_checkpoint(out_dir):
    return any(os.path.exists(os.path.join(out_dir, n)) for n in (CKPT, PREV_CKPT))


def read_metrics(out_dir):
    """Rows of metrics.jsonl, skipping a torn final line."""
    path = os.path.join(out_dir, METRICS)
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # only a kill mid-append produces this, and only on the last line
    return rows


def append_metrics(out_dir, row):
    line = json.dumps(row) + '\n'
    half = len(line) // 2
    with open(os.path.join(out_dir, METRICS), 'a') as f:
        f.write(line[:half])
        f.flush()
        fault_point('metrics_append')   # a kill here leaves a torn line, as a real kill mid-write would
        f.write(line[half:])
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(out_dir, last_iter):
    """Keep only rows up to last_iter (those the checkpoint has seen), atomically."""
    rows = [r for r in read_metrics(out_dir) if r['iter'] <= last_iter]
    path = os.path.join(out_dir, METRICS)
    if not os.path.exists(path):
        return rows
    text = ''.join(json.dumps(r) + '\n' for r in rows).encode()
    _fsync_write(path + '.tmp', lambda f: f.write(text))
    os.replace(path + '.tmp', path)
    return rows


def write_json(path, obj):
    text = json.dumps(obj, indent=2).encode()
    _fsync_write(path + '.tmp', lambda f: f.write(text))
    os.replace(path + '.tmp', path)
