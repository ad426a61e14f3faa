"""
Poor man's configurator, after nanoGPT, but with clear errors instead of asserts.
Run from inside a script that defines its config as module globals:

    exec(open('configurator.py').read())

and then on the command line:

    python train.py config/omniglot.py config/few.py --weight_decay=1e-3 --seed=1

Config files (plain Python assigning known names) are applied first-to-last, then every
--key=value. Values go through ast.literal_eval, so --lr=3e-4, --compile=False and
--zipf_alpha=0 work; anything that is not a Python literal is taken as a string.
A user error (unknown key, wrong type, missing file) prints one line and exits with code 2.
"""
import ast as _ast
import builtins as _builtins
import difflib as _difflib
import os as _os
import sys as _sys

_CONFIG_TYPES = (int, float, bool, str)
_known_keys = {k for k, v in globals().items()
               if not k.startswith('_') and isinstance(v, _CONFIG_TYPES)}


def _config_error(message):
    print(f"config error: {message}", file=_sys.stderr)
    _sys.exit(2)


def _check_and_set(key, value, source):
    if key not in _known_keys:
        close = _difflib.get_close_matches(key, sorted(_known_keys), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        _config_error(f"unknown key '{key}' (from {source}){hint}")
    default = globals()[key]
    expected = type(default)
    # bool is a subclass of int: refuse True for an int key and 1 for a bool key.
    ok = type(value) is expected or (expected is float and type(value) is int)
    if not ok:
        _config_error(f"key '{key}' (from {source}) expects {expected.__name__}, "
                      f"got {type(value).__name__} {value!r}")
    globals()[key] = float(value) if expected is float else value


for _arg in _sys.argv[1:]:
    if not _arg.startswith('--'):
        if not _os.path.isfile(_arg):
            _config_error(f"config file not found: {_arg}")
        _namespace = {k: globals()[k] for k in _known_keys}
        with open(_arg) as _f:
            _code = _f.read()
        try:
            exec(_builtins.compile(_code, _arg, 'exec'), _namespace)
        except Exception as _e:  # a typo in a config file is a user error too
            _config_error(f"could not run config file {_arg}: {type(_e).__name__}: {_e}")
        for _key, _value in _namespace.items():
            if _key.startswith('_') or type(_value).__name__ in ('module', 'function'):
                continue
            if _key not in _known_keys or _value != globals()[_key]:
                _check_and_set(_key, _value, _arg)
        print(f"config: applied {_arg}")
    else:
        _key, _sep, _raw = _arg[2:].partition('=')
        if not _sep:
            _config_error(f"argument '{_arg}' must look like --key=value")
        if isinstance(globals().get(_key), str):
            _value = _raw  # string keys take the text as it is: --out_dir=runs/2024
        else:
            try:
                _value = _ast.literal_eval(_raw)
            except (SyntaxError, ValueError):
                _value = _raw  # not a literal: reported as a str if the key wants another type
        _check_and_set(_key, _value, 'command line')
        print(f"config: {_key} = {globals()[_key]!r}")
