"""train.py end to end on tiny CPU configs: outputs, resume, refusals, non-finite loss, SIGTERM."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT

TINY = ['--n_train_classes=200', '--n_holdout_classes=20', '--n_labels=32', '--item_dim=8',
        '--n_layer=1', '--n_embd=16', '--n_head=2', '--batch_size=16', '--n_eval_episodes=64',
        '--warmup_iters=5', '--log_interval=10', '--eval_interval=20']


def run_script(script, *argv, check=True, timeout=180, env=None):
    """A project script run as a user runs it, one thread; check=True fails on a non-zero exit with its output."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def train(out_dir, *args, check=True, timeout=180, env=None):
    return run_script('train.py', f'--out_dir={out_dir}', *TINY, *args, check=check, timeout=timeout, env=env)


def eval_cli(out_dir, *args, check=True):
    """eval.py on a run's checkpoint, one thread like the run."""
    return run_script('eval.py', f'--out_dir={out_dir}', *args, check=check, timeout=120)


def printed_row(proc):
    """The metrics row eval.py prints last (one JSON line)."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


def metrics(out_dir, drop=('wall_s',)):
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('ref')
    train(out, '--max_iters=60')
    return out


def test_run_writes_metrics_summary_and_checkpoint(reference_run):
    rows = metrics(reference_run, drop=())
    assert [r['iter'] for r in rows] == [0, 20, 40, 60]
    for key in ('iter', 'tokens', 'train_loss', 'lr', 'icl_acc', 'icl_acc_open', 'iwl_acc', 'ece',
                'attn_match_image', 'attn_match_label', 'attn_match_image_by_layer',
                'attn_match_label_by_layer', 'weight_norm', 'wall_s'):
        assert key in rows[-1], key
    assert rows[1]['tokens'] == 20 * 16 * 17
    assert rows[0]['train_loss'] is None and rows[1]['train_loss'] > 0
    summary = json.load(open(os.path.join(reference_run, 'summary.json')))
    assert summary['final_iter'] == 60
    assert summary['peak_icl_acc'] == max(r['icl_acc'] for r in rows[1:])   # step 0 is never a peak
    assert summary['peak_icl_iter'] > 0
    assert summary['weight_decay'] == 0.0 and summary['l2'] == 0.0
    assert summary['config']['n_layer'] == 1
    assert summary['tokens_per_step'] == 16 * 17
    assert summary['exposure']['query']['max'] >= summary['exposure']['query']['min']
    exposure = json.load(open(os.path.join(reference_run, 'exposure.json')))
    assert sum(exposure['query_count']) == 60 * 16
    assert sum(exposure['seen_count']) == 60 * 16 * 9
    assert os.path.exists(os.path.join(reference_run, 'ckpt.pt'))
    assert summary['torch_version'] and summary['device'] == 'cpu'
    assert re.fullmatch(r'[0-9a-f]{40}(-dirty)?', summary['git_commit'])   # the suite runs in a git checkout
    assert isinstance(summary['code_changes'], list)   # tracked files that differ from it, [] when clean
    assert summary['git_commit'].endswith('-dirty') == any(f.endswith('.py') for f in summary['code_changes'])
    assert summary['cpu_capability'] == torch.backends.cpu.get_cpu_capability() and summary['cpu_model']
    keys = ('git_commit', 'code_changes', 'torch_version', 'device', 'threads', 'cpu_capability', 'cpu_model')
    assert summary['numerics_segments'] == [{'from_iter': 0, **{k: summary[k] for k in keys}}]   # one part: this one


def test_a_run_continued_under_other_numerics_records_each_part(tmp_path):
    """A run continued to a longer budget (or resumed) under another thread count records both parts: its summary's
    own numerics name only the process that finished it."""
    train(tmp_path, '--max_iters=40')
    train(tmp_path, '--max_iters=60', '--init_from=resume', env={'OMP_NUM_THREADS': '2'})
    summary = json.load(open(os.path.join(tmp_path, 'summary.json')))
    parts = summary['numerics_segments']
    assert [(p['from_iter'], p['threads']) for p in parts] == [(0, 1), (40, 2)] and summary['threads'] == 2
    assert {k: v for k, v in parts[1].items() if k != 'from_iter'} == {k: summary[k] for k in parts[0] if k != 'from_iter'}


def test_numerics_segments_adds_a_part_only_where_the_numerics_change():
    from training import numerics, numerics_segments
    now = numerics('cpu')
    assert numerics_segments(None, 0, 'cpu') == [{'from_iter': 0, **now}]
    same = {'numerics_segments': [{'from_iter': 0, **now}]}
    assert numerics_segments(same, 500, 'cpu') == same['numerics_segments']
    other = {'numerics_segments': [{'from_iter': 0, **now, 'threads': now['threads'] + 1}]}
    assert numerics_segments(other, 500, 'cpu') == other['numerics_segments'] + [{'from_iter': 500, **now}]
    assert numerics_segments({'iter_num': 500}, 500, 'cpu') == [{'from_iter': 0, 'numerics': 'not recorded'},
                                                                {'from_iter': 500, **now}]   # a checkpoint from before


def test_code_state_names_the_changed_files_and_says_so_outside_a_git_checkout(tmp_path):
    """In a git checkout: HEAD's commit and the tracked files that differ from it (a changed .py makes it -dirty).
    In a copy without .git (a downloaded ZIP): 'none (not a git checkout)' and no file list, not a crash."""
    import shutil
    probe = "import training; print(repr(training.code_state()))"
    for name in [n for n in os.listdir(ROOT) if n.endswith('.py')]:   # the top-level modules, as a ZIP has them
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    env = {**os.environ, 'GIT_CEILING_DIRECTORIES': str(tmp_path.parent)}
    out = subprocess.run([sys.executable, '-c', probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == repr(("none (not a git checkout)", None))
    subprocess.run(['git', 'init', '-q'], cwd=tmp_path, check=True)
    subprocess.run(['git', 'add', '.'], cwd=tmp_path, check=True)
    subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'c'], cwd=tmp_path, check=True)
    (tmp_path / 'notes.md').write_text('x')   # untracked: not a change to the code
    with open(tmp_path / 'model.py', 'a') as f:
        f.write('# edited\n')
    out = subprocess.run([sys.executable, '-c', probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    commit, changed = eval(out.stdout.strip())
    assert re.fullmatch(r'[0-9a-f]{40}-dirty', commit) and changed == ['model.py'], out.stdout + out.stderr


@pytest.mark.slow
def test_same_seed_same_metrics(reference_run, tmp_path):
    train(tmp_path, '--max_iters=60')
    assert metrics(tmp_path) == metrics(reference_run)


@pytest.mark.slow
def test_resume_continues_exactly(reference_run, tmp_path):
    train(tmp_path, '--max_iters=40')
    proc = train(tmp_path, '--max_iters=60', '--init_from=resume')
    assert 'resumed from iter 40' in proc.stdout
    assert metrics(tmp_path) == metrics(reference_run)


@pytest.mark.slow
def test_killed_run_resumes_without_duplicate_or_missing_rows(reference_run, tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), f'--out_dir={tmp_path}', *TINY, '--max_iters=60']
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    deadline = time.time() + 120
    path = os.path.join(tmp_path, 'metrics.jsonl')
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path) and len(open(path).readlines()) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    train(tmp_path, '--max_iters=60', '--init_from=resume')
    assert metrics(tmp_path) == metrics(reference_run)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), f'--out_dir={tmp_path}', *TINY, '--max_iters=1000000',
           '--eval_interval=1000000']
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    path = os.path.join(tmp_path, 'metrics.jsonl')
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(path):
        time.sleep(0.01)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stopped_at = int(re.search(r'SIGTERM: checkpointed at iter (\d+)', out).group(1))
    assert stopped_at > 0
    train(tmp_path, f'--max_iters={stopped_at + 10}', '--eval_interval=1000000', '--init_from=resume')
    rows = metrics(tmp_path)
    assert [r['iter'] for r in rows] == [0, stopped_at + 10]


@pytest.mark.slow
def test_refuses_existing_run_and_different_config(reference_run, tmp_path):
    before = open(os.path.join(reference_run, 'metrics.jsonl')).read()
    proc = train(reference_run, '--max_iters=60', check=False)
    assert proc.returncode == 2 and 'already holds a run' in proc.stderr
    proc = train(reference_run, '--max_iters=80', '--init_from=resume', '--learning_rate=0.5', check=False)
    assert proc.returncode == 2 and 'learning_rate' in proc.stderr and 'different config' in proc.stderr
    assert open(os.path.join(reference_run, 'metrics.jsonl')).read() == before


@pytest.mark.slow
def test_non_finite_loss_stops_with_iter_and_keeps_checkpoint(tmp_path):
    proc = train(tmp_path, '--max_iters=200', '--learning_rate=1e12', '--warmup_iters=0',
                 '--lr_schedule=constant', check=False)
    assert proc.returncode == 1
    assert 'loss became non-finite at iter' in proc.stderr
    assert os.path.exists(os.path.join(tmp_path, 'ckpt.pt'))


@pytest.mark.slow
@pytest.mark.parametrize('arg, message', [
    ('--weight_decay=-1', 'weight_decay=-1.0 must be >= 0'),
    ('--n_layers=3', "unknown key 'n_layers'"),
    ('--batch_size=3.5', "key 'batch_size' (from command line) expects int, got float"),
    ('--ways=201 --bursty_shots=0', 'bursty_shots=0 must be >= 1'),
    ('--p_bursty=2', 'p_bursty=2.0 must be in [0, 1]'),
    ('--lr_schedule=linear', "lr_schedule='linear'"),
    ('--bursty_shots=5', 'bursty_shots*ways'),
    ('--l2=-0.1', 'l2=-0.1 must be >= 0'),
])
def test_bad_values_fail_with_one_line_and_no_output_dir_damage(tmp_path, arg, message):
    proc = train(tmp_path / 'run', *arg.split(), check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not os.path.exists(tmp_path / 'run' / 'metrics.jsonl')


@pytest.mark.slow
def test_icl_emerges_on_a_tiny_config(tmp_path):
    """The induction circuit forms after a plateau (~1500 steps here): holdout ICL well above 0.5."""
    train(tmp_path, '--max_iters=2500', '--eval_interval=500', '--n_embd=32', '--n_head=4', '--n_layer=2',
          '--batch_size=32', '--learning_rate=3e-3', '--lr_schedule=constant', '--n_train_classes=4000',
          '--n_eval_episodes=256', '--warmup_iters=200', timeout=300)
    rows = metrics(tmp_path)
    assert rows[0]['icl_acc'] < 0.6
    assert max(r['icl_acc'] for r in rows) >= 0.75
    assert rows[-1]['attn_match_label'] > rows[0]['attn_match_label'] + 0.2   # the query looks up the label


@pytest.mark.slow
def test_eval_cli_reproduces_the_logged_metrics(reference_run):
    printed = printed_row(eval_cli(reference_run))
    logged = metrics(reference_run)[-1]
    assert printed['iter'] == logged['iter'] == 60
    for key in ('icl_acc', 'icl_acc_open', 'iwl_acc', 'ece', 'attn_match_image', 'attn_match_label_by_layer'):
        assert printed[key] == logged[key], key


@pytest.mark.slow
def test_eval_cli_without_checkpoint_is_a_clear_error(tmp_path):
    proc = eval_cli(tmp_path, check=False)
    assert proc.returncode == 1
    assert 'no usable checkpoint' in proc.stderr and 'Traceback' not in proc.stderr


def test_cpu_model_tells_apart_two_cpus_of_one_name(tmp_path):
    """A virtual machine names an AVX2-only and an AVX512 EPYC alike; the family and model numbers tell them apart
    (their floats differ), and a CPU without them (an ARM board names its Model in a block of its own) keeps its name."""
    from training import cpu_model
    x86 = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: {}\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\nmodel\t\t: 99\n"
    for model in (1, 17):
        (tmp_path / f'x86_{model}').write_text(x86.format(model))
    assert cpu_model(str(tmp_path / 'x86_1')) == 'AMD EPYC (family 25, model 1)'
    assert cpu_model(str(tmp_path / 'x86_17')) == 'AMD EPYC (family 25, model 17)'
    (tmp_path / 'arm').write_text("processor\t: 0\nBogoMIPS\t: 108.00\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4\n")
    assert cpu_model(str(tmp_path / 'arm')) == 'Raspberry Pi 4'
    assert cpu_model(str(tmp_path / 'missing')) not in ('', None)
