"""No run lost to bad input: every key is checked before out_dir is created or touched, and an old
run is replaced only once the new one can start (data and model built), for train.py and group.py members."""
import re
import shutil

import pytest

from data import check_data_config
from test_group import group
from test_train import TINY, train
from training import check_config, train_defaults

# (bad arguments, what the one error line says): sampler, data, eval episodes and model settings
BAD = [
    ('--p_bursty=1.5', 'p_bursty=1.5 must be in [0, 1]'),
    ('--bursty_shots=5', 'bursty_shots*ways'),
    ('--ways=0', 'ways=0 must be >= 1'),
    ('--zipf_alpha=-1', 'zipf_alpha=-1.0 must be >= 0'),
    ('--label_swap=0.5 --n_labels=1 --eval_ways=1 --eval_shots=8', 'label_swap=0.5 needs at least 2 labels'),
    ('--label_mode=per_class', 'n_labels=32 is smaller than n_train_classes=200'),
    ('--label_mode=random', "label_mode='random'"),
    ('--dataset=mnist', "dataset='mnist' is not known"),
    ('--eval_shots=3', 'eval ways*shots=2*3 must equal context_len=8'),
    ('--n_holdout_classes=1', 'eval ways=2 is more than the 1 holdout classes'),
    ('--item_dim=0', 'item_dim=0 must be >= 1'),
    ('--n_head=3', 'n_embd=16 must be divisible by n_head=3'),
    ('--label_swap=0.5 --label_swap_to=none', "label_swap_to='none' must be 'train'"),
    ('--p_copy=1.5', 'p_copy=1.5 must be in [0, 1]'),
    ('--p_copy=0.5 --p_bursty=0', 'p_copy=0.5 turns bursty sequences into copies, but p_bursty=0 makes none'),
]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope='module')
def old_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('old') / 'run'
    train(out, '--max_iters=20')
    return out


@pytest.mark.slow
@pytest.mark.parametrize('arg, message', BAD[:2] + BAD[-1:])
def test_overwrite_with_a_bad_value_keeps_the_old_run(old_run, tmp_path, arg, message):
    out = tmp_path / 'run'
    shutil.copytree(old_run, out)
    before = snapshot(out)
    proc = train(out, '--max_iters=20', '--overwrite=True', *arg.split(), check=False)
    assert proc.returncode == 2 and message in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr
    assert snapshot(out) == before


@pytest.mark.parametrize('arg, message', BAD[:1] + [pytest.param(*bad, marks=pytest.mark.slow) for bad in BAD[1:]])
def test_a_bad_value_leaves_no_new_out_dir(tmp_path, arg, message):
    proc = train(tmp_path / 'run', *arg.split(), check=False)
    assert proc.returncode == 2 and message in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr
    assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_group_member_with_a_bad_value_keeps_old_runs_and_makes_no_dirs(old_run, tmp_path):
    shutil.copytree(old_run, tmp_path / 'a')
    before = snapshot(tmp_path / 'a')
    proc = group([tmp_path / 'a', tmp_path / 'b'], '--max_iters=20', '--overwrite=True', check=False,
                 members=[['--seed=0'], ['--seed=1', '--bursty_shots=5']])
    assert proc.returncode == 2 and 'bursty_shots*ways' in proc.stderr and 'Traceback' not in proc.stderr
    assert snapshot(tmp_path / 'a') == before and not (tmp_path / 'b').exists()


def config_with(**changes):
    tiny = {a[2:].split('=')[0]: a.split('=')[1] for a in TINY}
    config = train_defaults()
    config.update({k: type(config[k])(v) for k, v in tiny.items()})
    config.update(changes)
    return config


@pytest.mark.parametrize('changes, message', [
    (dict(p_bursty=-0.5), 'p_bursty'), (dict(bursty_shots=0), 'bursty_shots'), (dict(context_len=0), 'context_len'),
    (dict(ways=201, bursty_shots=1, context_len=256), 'ways=201 is more than the 200 training classes'),
    (dict(n_train_classes=1, p_bursty=0.0), 'IWL episodes need at least 2 training classes'),
    (dict(eval_ways=3, eval_shots=3, context_len=9, n_labels=2, label_mode='shared'), 'eval_ways=3 is more than'),
    (dict(n_eval_episodes=0), 'n_eval_episodes'), (dict(exemplars_per_class=-1), 'exemplars_per_class'),
    (dict(within_class_noise=-0.1), 'within_class_noise'), (dict(n_labels=0), 'n_labels=0 must be >= 1'),
    (dict(dataset='omniglot', image_size=4), 'image_size=4'),
    (dict(dataset='omniglot', omniglot_classes='flips'), 'omniglot_classes'),
    (dict(dataset='omniglot', omniglot_classes='augmented', n_holdout_classes=20), 'positive multiple of 8'),
    (dict(dataset='omniglot', n_train_classes=1601, n_holdout_classes=23), 'n_train_classes=1601 must be in [1, 1600]'),
])
def test_check_config_names_the_data_key(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_config(config_with(**changes))


def test_good_configs_pass_the_data_checks():
    check_data_config(train_defaults())
    check_data_config(config_with(dataset='omniglot', omniglot_classes='augmented', n_train_classes=12800,
                                  n_holdout_classes=184, n_labels=12800, label_mode='per_class',
                                  bursty_shots=3, ways=2, eval_ways=2, eval_shots=4, image_size=28))
