"""Every train.py key, member for solo: for each key a group may vary, a 2-step group of two members that differ only
in that key gives each member its solo run's numbers and files, and the key acts: the second member differs from the
first (members of one group compute alike to the last bit, so a key that changes nothing leaves them equal). A group
whose members differ in a key of training.GROUP_SHARED is refused at start-up, naming it. The keys come from train.py
itself, so a new key is covered the moment it exists: its other value is derived from its type and its check (a string
key from the quoted options its check names), or declared below. Runs go through train.py in this process (runpy) to
stay fast."""
import contextlib
import io
import os
import re
import runpy
import signal
import sys

import pytest
import torch

from conftest import ROOT
from test_group import assert_close, patched_repo, run_in
from test_train import TINY, metrics
from training import GROUP_SHARED, RESUMABLE_KEYS, check_config, parse_train_args, train_defaults

# both members: tiny, 2 steps, decay and label swap on, more labels than training classes (so keys that refine them
# act: label_swap_to='train' and 'all' are one draw when the training classes own every label)
BASE = [*TINY, '--max_iters=2', '--eval_interval=2', '--n_eval_episodes=16', '--warmup_iters=0',
        '--learning_rate=1e-2', '--weight_decay=0.1', '--label_swap=0.3', '--n_labels=256']
# the keys whose other value is not derived: {key: the second member's settings}
DECLARED = {'eval_ways': {'eval_ways': 4, 'eval_shots': 2}, 'eval_shots': {'eval_ways': 1, 'eval_shots': 8},
            'keep_checkpoints': {'keep_checkpoints': '2'}, 'context_len': {'context_len': 16, 'eval_shots': 8},
            'label_mode': {'label_mode': 'per_class', 'n_train_classes': 30}, 'decay_modules': {'decay_modules': 'mlp'},
            'device': {'device': 'cpu'}, 'forget_modules': {'forget_modules': 'head', 'forget_every': 1},
            'forget_until': {'forget_until': 2, 'forget_every': 1}, 'curvature_every': {'curvature_every': 1},
            'curvature_rho': {'curvature_rho': 0.5, 'curvature_every': 1},
            'curvature_modules': {'curvature_modules': 'head', 'curvature_every': 1},
            'curvature_start': {'curvature_start': 1, 'curvature_every': 1},
            'curvature_sequences': {'curvature_sequences': 32, 'curvature_every': 1},
            'relabel_every': {'relabel_every': 1}}  # 2 steps: only a map from step 1 on is trained on
NO_EFFECT = {'init_from', 'overwrite', 'keep_checkpoints'}  # no numbers change (keep_checkpoints: the files do)
SKIPPED = {'out_dir': "every member's own",
           'data_dir': 'Omniglot only (needs the data set)', 'cache_dir': 'Omniglot only (needs the data set)',
           'omniglot_classes': 'Omniglot only (needs the data set)',
           'augment': 'Omniglot only (tests/test_augment.py: member as solo under the vmap; test_cuda_on_cpu.py)',
           'wandb_project': 'wandb_log=True only', 'wandb_group': 'wandb_log=True only',
           'wandb_run_name': 'wandb_log=True only'}


def run_train(argv):
    """(exit code, stderr) of `python train.py argv`, run in this process on one thread (as the other tests' runs: two
    threads on a busy core are 10x slower here)."""
    saved, handler, threads = sys.argv, signal.getsignal(signal.SIGTERM), torch.get_num_threads()
    sys.argv, err = ['train.py', *argv], io.StringIO()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            runpy.run_path(os.path.join(ROOT, 'train.py'), run_name='__main__')
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = saved
        signal.signal(signal.SIGTERM, handler)
        torch.set_num_threads(threads)
    return code, err.getvalue()


def candidates(key, value):
    """Other values of the key's type: near the default for numbers; for a string, the options its check quotes."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):  # +2 first: 1 is often a no-op (a warmup of one step)
        return [value + 2, value + 1, value * 2, value - 1]
    if isinstance(value, float):
        return [value * 2, value / 2] if value else [0.5, 0.1]
    try:
        check_config({**base_config(), key: '?'})
    except ValueError as e:
        return [s for s in re.findall(r"'([^']*)'", str(e).replace("'?'", '')) if s != value]
    return []


def base_config():
    with contextlib.redirect_stdout(io.StringIO()):
        return parse_train_args(BASE)


def other_setting(key):
    """The second member's settings for `key`: declared, or the first derived value its check accepts."""
    if key in DECLARED:
        return DECLARED[key]
    config = base_config()
    for value in candidates(key, config[key]):
        try:
            check_config({**config, key: value})
            return {key: value}
        except ValueError:
            continue
    raise AssertionError(f"no valid value other than {config[key]!r} derives for {key}: declare one in "
                         f"tests/test_keys.py's DECLARED")


def argv(setting):
    return [f'--{k}={v}' for k, v in setting.items()]


KEYS = [k for k in train_defaults() if k not in SKIPPED]


def test_every_key_is_tested_shared_or_skipped_with_a_reason():
    assert GROUP_SHARED <= set(train_defaults()) and not GROUP_SHARED & set(SKIPPED)
    assert set(DECLARED) | NO_EFFECT <= set(KEYS)


@pytest.mark.parametrize('key', sorted(k for k in KEYS if k in GROUP_SHARED))
def test_a_group_may_not_vary_a_shared_key(tmp_path, key):
    code, err = run_train([*BASE, f'--out_dir={tmp_path}/a', '::', *BASE, *argv(other_setting(key)),
                           f'--out_dir={tmp_path}/b'])
    assert code == 2 and 'members differ in ' in err and f' {key} (' in err, err  # (with a declared companion key)
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


@pytest.fixture(scope='module')
def first_solo(tmp_path_factory):
    out = tmp_path_factory.mktemp('first')
    assert run_train([*BASE, f'--out_dir={out}']) == (0, '')
    return out


@pytest.mark.parametrize('key', sorted(k for k in KEYS if k not in GROUP_SHARED))
def test_each_member_trains_at_its_own_value(tmp_path, first_solo, key):
    setting = other_setting(key)
    code, err = run_train([*BASE, f'--out_dir={tmp_path}/a', '::', *BASE, *argv(setting), f'--out_dir={tmp_path}/b'])
    assert code == 0, err
    assert run_train([*BASE, *argv(setting), f'--out_dir={tmp_path}/solo']) == (0, '')
    assert_close(metrics(tmp_path / 'a'), metrics(first_solo))
    assert_close(metrics(tmp_path / 'b'), metrics(tmp_path / 'solo'))
    assert sorted(os.listdir(tmp_path / 'b')) == sorted(os.listdir(tmp_path / 'solo'))
    # the key acts: the two members of one group, alike but for the key, differ. Members of one group compute alike
    # to the last bit, so a key no code applies (or applies under another name) leaves them equal and fails here
    # (a member and a solo run always differ in the last digits on a CPU: comparing those could not fail)
    if key in NO_EFFECT:
        assert metrics(tmp_path / 'b') == metrics(tmp_path / 'a'), key
    else:
        assert metrics(tmp_path / 'b') != metrics(tmp_path / 'a'), f"{key}={setting} changes nothing in 2 steps"


# ---- the silent paths of a new key: each stops start-up, naming the key, before out_dir is touched ------------------

def start(tmp_path, patches, *args):
    """(exit code, stderr) of a 2-step solo run of the project with `patches` ({file: [(anchor, lines)]}) applied."""
    proc = run_in(patched_repo(tmp_path, patches), 'train.py', [*BASE, *args, f'--out_dir={tmp_path}/a'])
    assert 'Traceback' not in proc.stderr and not (tmp_path / 'a').exists(), proc.stderr[-2000:]
    return proc.returncode, proc.stderr


def test_a_key_only_a_check_reads_stops_start_up(tmp_path):
    """check_config's read is no use: a key validated there but applied nowhere would train every run without it."""
    code, err = start(tmp_path, {'train.py': [('l2 = ', 'my_scale = 1.0\n')], 'training.py': [
        ('    check_data_config(config)', "    if config['my_scale'] < 0:\n        raise ValueError('my_scale < 0')\n")]})
    assert code == 2 and 'nothing reads my_scale' in err, err


@pytest.mark.parametrize('read', ["self.configs[0].get('item_drop', 0.0)", "self.values('item_drop')"])
def test_a_read_under_a_name_train_py_lacks_stops_at_once_naming_both(tmp_path, read):
    """The key is item_dropout, the code reads item_drop: with a default it would train without the lever."""
    code, err = start(tmp_path, {'train.py': [('l2 = ', 'item_dropout = 0.0\n')],
                                 'step.py': [('self.terms = []', f'        {read}\n')]}, '--item_dropout=0.1')
    assert code == 2 and len(err.strip().splitlines()[-1:]) == 1, err
    assert "config key 'item_drop', which train.py does not define (its key is 'item_dropout'?)" in err, err


def test_a_model_field_named_unlike_its_key_stops_start_up(tmp_path):
    code, err = start(tmp_path, {'train.py': [('l2 = ', 'item_dropout = 0.0\n')],
                                 'model.py': [('    pixel_noise: float = 0.0', '    item_drop: float = 0.0\n')]})
    assert code == 2 and "ModelConfig field 'item_drop' is no train.py key (is it 'item_dropout'?)" in err, err
