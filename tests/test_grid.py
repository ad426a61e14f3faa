"""grid.py: cell enumeration and sharding, skip/resume/retry with a fake trainer, the per-cell lock,
the report from hand-written metrics, the verdict rule on crafted inputs, and one tiny real cell."""
import importlib
import json
import math
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT

# A stand-in for train.py: writes metrics rows and summary.json like train.py, records each call in
# $FAKE_CALLS, sleeps $FAKE_SLEEP seconds, and fails (exit 3) when $FAKE_FAIL names its cell.
FAKE_TRAIN = r'''
import json, os, sys, time
args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--'))
out = args['out_dir']
name = os.path.basename(out)
os.makedirs(out, exist_ok=True)
resumed = os.path.exists(os.path.join(out, 'ckpt.pt'))
with open(os.environ['FAKE_CALLS'], 'a') as f:
    f.write(f"{name} init_from={args['init_from']} resumed={resumed} threads={os.environ.get('OMP_NUM_THREADS')}\n")
open(os.path.join(out, 'ckpt.pt'), 'w').close()
time.sleep(float(os.environ.get('FAKE_SLEEP', '0')))
if os.environ.get('FAKE_FAIL') == name:
    print('boom: fake failure', file=sys.stderr)
    sys.exit(3)
wd, many = float(args['weight_decay']), args.get('n_train_classes') == '16000'
rows = [{'iter': it, 'icl_acc': 0.5 + (0.45 if many else wd * 20) * it / 100, 'iwl_acc': 0.0 if many else 0.9,
         'ece': 0.1, 'attn_match_image': 0.2, 'attn_match_label': 0.8 if many else 0.3} for it in (0, 50, 100)]
with open(os.path.join(out, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
config = {'learning_rate': 1e-3, 'warmup_iters': 0, 'max_iters': 100, 'lr_schedule': 'constant', 'min_lr': 0.0,
          'weight_decay': wd, 'seed': int(args['seed']), 'dataset': 'synthetic', 'data_seed': 0, 'n_labels': 32,
          'label_mode': 'shared', 'batch_size': 8, 'context_len': 8, 'n_layer': 1}
json.dump({'peak_icl_acc': max(r['icl_acc'] for r in rows), 'final_iwl_acc': rows[-1]['iwl_acc'], 'config': config},
          open(os.path.join(out, 'summary.json'), 'w'))
'''


@pytest.fixture(scope='module')
def grid():
    """grid.py imported as a module (its configurator reads sys.argv, so give it a clean one)."""
    argv = sys.argv
    sys.argv = ['grid.py']
    try:
        sys.modules.pop('grid', None)
        return importlib.import_module('grid')
    finally:
        sys.argv = argv


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / 'fake_train.py'
    script.write_text(FAKE_TRAIN)
    calls = tmp_path / 'calls.txt'
    calls.write_text('')
    return {'script': str(script), 'calls': calls, 'dir': tmp_path / 'grid'}


def run_grid(fake, *args, env=None, wait=True):
    cmd = [sys.executable, os.path.join(ROOT, 'grid.py'), f"--grid_dir={fake['dir']}",
           f"--train_script={fake['script']}", '--seeds=0,1', '--weight_decays=0,1e-3', '--jobs=2', *args]
    full_env = {**os.environ, 'FAKE_CALLS': str(fake['calls']), 'MPLBACKEND': 'Agg', **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)


def calls(fake):
    return [line.split()[0] for line in fake['calls'].read_text().splitlines()]


# ---- enumeration and sharding ----------------------------------------------------------------------

def test_enumerate_cells_names_args_and_fixed_keys(grid):
    cells = grid.enumerate_cells(['few', 'many'], [0.0, 3e-4, 1e-3, 3e-3, 1e-2], [0, 1, 2], [], [],
                                 {'few': ['--n_train_classes=100'], 'many': ['--n_train_classes=16000']},
                                 ['--max_iters=4000'])
    assert len(cells) == 30 and len({c['name'] for c in cells}) == 30
    first = cells[0]
    assert first['name'] == 'few_wd0_s0'
    assert first['args'] == ['--n_train_classes=100', '--max_iters=4000', '--weight_decay=0.0', '--seed=0']
    assert {c['name'] for c in cells} >= {'many_wd0.0003_s2', 'few_wd0.01_s1'}
    for c in cells:  # only classes, decay and seed vary; nothing sets data_seed
        assert not any('data_seed' in a for a in c['args'])
    wide = grid.enumerate_cells(['few'], [0.0], [0], ['d48', '96'], ['config/omniglot.py'],
                                {'few': ['config/few.py']}, [])
    assert [c['name'] for c in wide] == ['few_wd0_s0_d48', 'few_wd0_s0_96']
    assert wide[0]['args'][:3] == ['config/omniglot.py', 'config/few.py', os.path.join('config', 'd48.py')]
    assert '--n_embd=96' in wide[1]['args']


@pytest.mark.parametrize('count', [1, 3, 4, 7, 30, 31])
def test_shards_cover_every_cell_exactly_once(grid, count):
    cells = grid.enumerate_cells(['few', 'many'], [0.0, 3e-4, 1e-3, 3e-3, 1e-2], [0, 1, 2], [], [],
                                 {'few': [], 'many': []}, [])
    names = [c['name'] for i in range(count) for c in grid.shard_cells(cells, i, count)]
    assert sorted(names) == sorted(c['name'] for c in cells)


def test_shard_from_flag_and_slurm(grid):
    assert grid.parse_shard('', {}) == (0, 1)
    assert grid.parse_shard('2/5', {'SLURM_ARRAY_TASK_ID': '0', 'SLURM_ARRAY_TASK_COUNT': '3'}) == (2, 5)
    assert grid.parse_shard('', {'SLURM_ARRAY_TASK_ID': '2', 'SLURM_ARRAY_TASK_COUNT': '3'}) == (2, 3)
    assert grid.parse_shard('', {'SLURM_ARRAY_TASK_ID': '11', 'SLURM_ARRAY_TASK_COUNT': '4',
                                 'SLURM_ARRAY_TASK_MIN': '8'}) == (3, 4)
    assert grid.parse_shard('', {'SLURM_ARRAY_TASK_ID': '6', 'SLURM_ARRAY_TASK_COUNT': '4',
                                 'SLURM_ARRAY_TASK_MIN': '0', 'SLURM_ARRAY_TASK_STEP': '2'}) == (3, 4)
    for bad in ('3/3', 'a/b', '1'):
        with pytest.raises(ValueError, match='shard'):
            grid.parse_shard(bad, {})
    with pytest.raises(ValueError, match='SLURM_ARRAY_TASK_ID'):
        grid.parse_shard('', {'SLURM_ARRAY_TASK_ID': '5', 'SLURM_ARRAY_TASK_COUNT': '4'})


@pytest.mark.slow
def test_slurm_array_runs_only_its_shard(fake):
    proc = run_grid(fake, env={'SLURM_ARRAY_TASK_ID': '1', 'SLURM_ARRAY_TASK_COUNT': '3'})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 8 cells in seed-major order; shard 1 of 3 takes cells 1, 4, 7
    assert sorted(calls(fake)) == sorted(['few_wd0.001_s0', 'few_wd0_s1', 'many_wd0.001_s1'])


# ---- running: skip, resume, fail and retry, threads ------------------------------------------------

@pytest.mark.slow
def test_run_skip_resume_fail_and_retry(fake):
    d = fake['dir']
    (d / 'many_wd0_s1').mkdir(parents=True)
    (d / 'many_wd0_s1' / 'ckpt.pt').write_text('interrupted')        # a cell killed mid-run
    proc = run_grid(fake, env={'FAKE_FAIL': 'few_wd0.001_s0'})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"FAILED few_wd0.001_s0 (exit code 3); log: {d / 'few_wd0.001_s0' / 'train.log'}" in out
    assert 'boom: fake failure' in (d / 'few_wd0.001_s0' / 'train.log').read_text()
    lines = fake['calls'].read_text().splitlines()
    assert len(lines) == 8                                              # the failure stopped nothing else
    assert all('init_from=resume' in line and 'threads=' in line for line in lines)
    assert [line for line in lines if line.startswith('many_wd0_s1')][0].split()[2] == 'resumed=True'
    cmd = (d / 'few_wd0_s0' / 'cmd.txt').read_text()
    assert f"--out_dir={d / 'few_wd0_s0'}" in cmd and '--init_from=resume' in cmd and 'fake_train.py' in cmd
    assert not any(p.name == 'lock' for p in d.rglob('lock'))           # every lock released
    assert (d / 'report.md').exists()                                   # report written at the end of a run

    fake['calls'].write_text('')
    proc = run_grid(fake)                                               # next invocation: only the failed cell
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert calls(fake) == ['few_wd0.001_s0']
    assert '1 run, 7 already finished' in proc.stdout
    fake['calls'].write_text('')
    proc = run_grid(fake)
    assert calls(fake) == [] and '0 run, 8 already finished' in proc.stdout


@pytest.mark.slow
def test_threads_per_job_are_the_free_cores_over_jobs_as_the_grid_says(fake):
    proc = run_grid(fake, '--jobs=1', '--seeds=0', '--weight_decays=0', '--classes=few')
    said = re.search(r'1 at a time, (\d+) threads each \((\d+) cores, (\d+) busy', proc.stdout)
    assert said and int(said[1]) == max(1, int(said[2]) - int(said[3])), proc.stdout
    assert fake['calls'].read_text().split()[-1] == f"threads={said[1]}"


# ---- locks ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_lock_keeps_a_second_grid_off_a_running_cell(fake):
    args = ('--seeds=0', '--weight_decays=0', '--classes=few')
    # the first grid's cell outlasts the second grid's start-up even on a loaded machine (4 s did not at load 7)
    first = run_grid(fake, *args, env={'FAKE_SLEEP': '15'}, wait=False)
    lock = fake['dir'] / 'few_wd0_s0' / 'lock'
    deadline = time.time() + 30
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert lock.exists()
    assert lock.read_text().split()[1] == str(first.pid)
    second = run_grid(fake, *args)
    assert 'few_wd0_s0 is locked by' in second.stdout and '1 busy elsewhere' in second.stdout
    first.communicate(timeout=60)
    assert first.returncode == 0
    assert calls(fake) == ['few_wd0_s0']                                  # ran once
    assert not lock.exists()


def test_stale_lock_of_dead_pid_is_reclaimed(grid, tmp_path):
    import socket
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    lock = tmp_path / 'lock'
    lock.write_text(f"{socket.gethostname()} {dead.pid}\n")
    assert grid.acquire_lock(str(lock))
    assert lock.read_text() == f"{socket.gethostname()} {os.getpid()}\n"
    assert not grid.acquire_lock(str(lock))                 # held by a live pid (us): refused
    grid.release_lock(str(lock))
    assert not lock.exists()
    lock.write_text("otherhost 1\n")                        # another host's lock is never reclaimed
    assert not grid.acquire_lock(str(lock))


# ---- verdict ---------------------------------------------------------------------------------------

def runs(*peaks, attn=0.8, iwl=0.9, train=None):
    """run_stats-like dicts (chance 0.5 by default); train: train_dist_acc at the peak and at the end."""
    extra = {} if train is None else {'train_dist_at_peak': train, 'final_train_dist': train}
    return [{'peak_icl': p, 'attn_label_at_peak': attn, 'final_iwl': iwl, **extra} for p in peaks]


def base_groups(train=None):
    return {('many', 0.0): runs(0.96, 0.97, 0.98, attn=0.8, iwl=0.03, train=train),
            ('few', 0.0): runs(0.50, 0.51, 0.49, attn=0.2, iwl=1.0, train=train)}


def test_verdict_supported(grid):
    g = {**base_groups(), ('few', 1e-3): runs(0.60, 0.62, 0.61, attn=0.3), ('few', 1e-2): runs(0.95, 0.96, 0.97, attn=0.7)}
    v = grid.verdict(g)
    assert v['verdict'] == 'SUPPORTED' and v['decided_on'] == 'corrected ratio'
    assert v['best']['weight_decay'] == 1e-2
    assert v['best']['ratio'] == pytest.approx(0.96 / 0.97)                 # raw, kept beside the corrected one
    assert v['best']['ratio_lo'] == pytest.approx(0.95 / 0.98)
    assert v['best']['corrected'] == pytest.approx(0.46 / 0.47)             # (peak - chance) / (Many's - chance)
    assert v['best']['corrected_lo'] == pytest.approx(0.45 / 0.48)          # no episode counts: seed range only
    g[('few', 3e-3)] = runs(0.9, 1.0, 1.0)      # higher mean ratio, but its range straddles 0.9
    assert grid.verdict(g)['verdict'] == 'SUPPORTED' and grid.verdict(g)['best']['weight_decay'] == 1e-2


def test_a_family_across_grids_widens_the_some_lever_interval(grid):
    """family=N (scripts/family.py: the levers tried on the scale across grids) widens each lever's family interval to
    1 - 0.05 / N; a family smaller than the grid's own levers changes nothing."""
    g = {**base_groups(), ('few', 1e-3): runs(0.60, 0.62, 0.61, attn=0.3), ('few', 1e-2): runs(0.95, 0.96, 0.97, attn=0.7)}
    own, wide, small = grid.verdict(g), grid.verdict(g, family=82), grid.verdict(g, family=1)
    assert own['n_levers'] == 2 and wide['n_levers'] == 82 and small['n_levers'] == 2
    assert wide['best']['family_level'] == pytest.approx(1 - 0.05 / 82) and own['best']['family_level'] == 0.975
    assert 'over 82 levers' in wide['reason']


def test_verdict_not_supported(grid):
    g = {**base_groups(), ('few', 1e-3): runs(0.55, 0.60, 0.58), ('few', 1e-2): runs(0.70, 0.75, 0.72)}
    v = grid.verdict(g)
    assert v['verdict'] == 'NOT SUPPORTED' and v['best']['weight_decay'] == 1e-2
    assert v['few_wd0_ratio'] == pytest.approx(0.5 / 0.97)


def test_verdict_inconclusive_when_seed_range_straddles(grid):
    g = {**base_groups(), ('few', 1e-2): runs(0.80, 0.92, 0.96), ('few', 1e-3): runs(0.5, 0.55, 0.6)}
    v = grid.verdict(g)  # wd=1e-2: mean ratio 0.92, seed range 0.82-0.99
    assert v['verdict'] == 'INCONCLUSIVE'
    assert v['best']['ratio_lo'] < 0.9 <= v['best']['ratio_hi']


def test_verdict_ignores_collapsed_cells(grid):
    # wd=1e-2 reaches the baseline but its attention circuit is gone; wd=3e-3 no longer solves its training
    # sequences (train_dist_acc 0.2 against Few wd=0's 1.0): neither counts
    g = {**base_groups(train=1.0), ('few', 1e-2): runs(0.97, 0.97, 0.97, attn=0.1, train=1.0),
         ('few', 3e-3): runs(0.97, 0.97, 0.97, train=0.2), ('few', 1e-3): runs(0.6, 0.6, 0.6, train=0.9)}
    v = grid.verdict(g)
    assert v['verdict'] == 'NOT SUPPORTED' and v['best']['weight_decay'] == 1e-3
    assert {c['weight_decay']: c['eligible'] for c in v['candidates']} == {1e-3: True, 3e-3: False, 1e-2: False}
    assert 'collapsed: wd=0.003 (training-distribution accuracy), wd=0.01 (attention)' in v['reason']
    assert 'collapse judged on attention and training-distribution accuracy' in v['reason']
    # a low IWL is no collapse: suppressing memorisation is the mechanism under test
    v = grid.verdict({**base_groups(), ('few', 3e-3): runs(0.97, 0.97, 0.97, iwl=0.02)})
    assert v['verdict'] == 'SUPPORTED' and v['best']['collapse_judged_on'] == 'attention only'
    v = grid.verdict({**base_groups(), ('few', 1e-2): runs(0.97, 0.97, 0.97, attn=0.1)})
    assert v['verdict'] == 'NOT SUPPORTED' and 'fails the collapse check' in v['reason']
    # a cell that straddles but collapsed does not make the verdict INCONCLUSIVE; an eligible one does
    v = grid.verdict({**base_groups(), ('few', 1e-2): runs(0.85, 0.90, 0.95, attn=0.1), ('few', 1e-3): runs(0.6)})
    assert v['verdict'] == 'NOT SUPPORTED'
    v = grid.verdict({**base_groups(), ('few', 1e-2): runs(0.85, 0.90, 0.95), ('few', 1e-3): runs(0.99, attn=0.1)})
    assert v['verdict'] == 'INCONCLUSIVE' and v['best']['weight_decay'] == 1e-2


def test_verdict_takes_l2_cells_as_candidates(grid):
    """A classical-L2 Few cell is a regularised cell like a decayed one; (wd, l2) keys keep it apart from wd=0."""
    g = {('many', (0.0, 0.0)): runs(0.96, 0.97, 0.98, iwl=0.03), ('few', (0.0, 0.0)): runs(0.50, 0.51, 0.49, iwl=1.0),
         ('few', (0.1, 0.0)): runs(0.6), ('few', (0.0, 1e-3)): runs(0.95, 0.96, 0.97)}
    v = grid.verdict(g)
    assert v['verdict'] == 'SUPPORTED' and v['best']['regularizer'] == 'l2=0.001' and v['best']['l2'] == 1e-3
    assert v['few_wd0_ratio'] == pytest.approx(0.5 / 0.97) and 'l2=0.001, its peak ICL' in v['reason']
    assert [c['regularizer'] for c in v['candidates']] == ['wd=0.1', 'l2=0.001']

def test_verdict_needs_the_baselines(grid):
    with pytest.raises(ValueError, match='many wd=0'):
        grid.verdict({('few', 0.0): runs(0.5), ('few', 1e-2): runs(0.9)})


def test_the_decay_exponent_follows_the_schedule(grid):
    cfg = {'learning_rate': 2e-3, 'warmup_iters': 0, 'max_iters': 4000, 'lr_schedule': 'constant', 'min_lr': 0.0,
           'weight_decay': 1.0}
    assert grid.cached_decay_exponent({**cfg, 'weight_decay': 1e-2}) == pytest.approx(2e-3 * 1e-2 * 4000)
    warm = {**cfg, 'warmup_iters': 200}
    assert grid.cached_decay_exponent(warm) == pytest.approx(2e-3 * (3800 + 201 / 2))
    cos = {**cfg, 'lr_schedule': 'cosine'}
    assert grid.cached_decay_exponent(cos) == pytest.approx(2e-3 * 4000 / 2, rel=1e-3)


# ---- report ----------------------------------------------------------------------------------------

def write_cell(root, name, cls, wd, seed, icl, iwl, attn, finished=True):
    d = root / name
    d.mkdir(parents=True)
    (d / 'cell.json').write_text(json.dumps({'name': name, 'classes': cls, 'weight_decay': wd, 'seed': seed, 'width': ''}))
    rows = [{'iter': 100 * i, 'icl_acc': a, 'iwl_acc': b, 'ece': 0.05, 'attn_match_image': 0.1,
             'attn_match_label': attn * a} for i, (a, b) in enumerate(zip(icl, iwl))]
    (d / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    if finished:
        config = {'learning_rate': 1e-3, 'warmup_iters': 0, 'max_iters': 100 * (len(rows) - 1),
                  'lr_schedule': 'constant', 'min_lr': 0.0, 'weight_decay': wd, 'seed': seed, 'dataset': 'synthetic',
                  'data_seed': 0, 'n_labels': 32, 'label_mode': 'shared', 'batch_size': 64, 'context_len': 8,
                  'n_layer': 2, 'n_train_classes': 16000 if cls == 'many' else 100}
        (d / 'summary.json').write_text(json.dumps({'config': config}))


def test_report_figures_table_and_verdict(grid, tmp_path):
    root = tmp_path / 'g'
    for seed in range(3):
        for wd in (0.0, 1e-3, 1e-2):
            write_cell(root, f'many_{grid.wd_name(wd)}_s{seed}', 'many', wd, seed,
                       [0.5, 0.6] + [0.97 - 0.01 * seed] * 3 + [0.9], [0.0, 0.02, 0.03, 0.03, 0.03, 0.03], 0.9)
            few_peak = {0.0: 0.55, 1e-3: 0.7, 1e-2: 0.95}[wd]
            write_cell(root, f'few_{grid.wd_name(wd)}_s{seed}', 'few', wd, seed,
                       [0.5] + [few_peak - 0.01 * seed] * 3 + [0.52, 0.5], [0.1, 0.9, 1.0, 1.0, 1.0, 1.0], 0.8)
    write_cell(root, 'few_wd0.01_s3', 'few', 1e-2, 3, [0.5, 0.4], [0.1, 0.2], 0.5, finished=False)  # still running
    verdicts = grid.write_report(str(root))
    for f in ('icl_vs_steps.png', 'peak_icl.png', 'report.md', 'verdict.json',
              'figures/group_few_wd0.01.png', 'figures/group_many_wd0.png'):
        assert (root / f).stat().st_size > 0, f
    assert len(list((root / 'figures').glob('group_*.png'))) == 6
    text = (root / 'report.md').read_text()
    assert '**SUPPORTED**' in text and 'wd=0.01' in text
    assert verdicts[0]['verdict'] == 'SUPPORTED'
    # table: one row per cell group, peak ICL with the seed min-max, lr*wd*steps = 1e-3 * 1e-2 * 500
    row = [line for line in text.splitlines() if line.startswith('| Few wd=0.01 |')][0]
    assert '3/4' in row and '[0.930-0.950]' in row and '0.005' in row
    assert 'still running or interrupted: few_wd0.01_s3' in text
    assert 'attn_match_label' in text and 'Rules.' in text and (root / 'attention.png').stat().st_size > 0
    assert '| few_wd0_s1 | 500 | 0.540 | 200 |' in text              # the 3-eval peak, at its middle eval


def test_report_keeps_l2_cells_apart_from_no_regulariser(grid, tmp_path):
    """An l2 cell has weight_decay 0: the report must not pool it with the wd=0 baseline."""
    root = tmp_path / 'g'
    for cls, icl in (('many', 0.95), ('few', 0.52)):
        write_cell(root, f'{cls}_wd0_s0', cls, 0.0, 0, [0.5, icl, icl], [0.0, 0.5, 0.9], 0.9)
        write_cell(root, f'{cls}_l2_0.001_s0', cls, 0.0, 0, [0.5, icl - 0.2, icl - 0.2], [0.0, 0.1, 0.2], 0.9)
        for name, l2 in ((f'{cls}_wd0_s0', 0.0), (f'{cls}_l2_0.001_s0', 1e-3)):
            for f, update in (('cell.json', lambda d: {**d, 'l2': l2}),
                              ('summary.json', lambda d: {'config': {**d['config'], 'l2': l2}})):
                (root / name / f).write_text(json.dumps(update(json.loads((root / name / f).read_text()))))
    verdicts = grid.write_report(str(root))
    text = (root / 'report.md').read_text()
    assert '| Many wd=0 | 1/1 | 0.950 ' in text and '| Many l2=0.001 | 1/1 | 0.750 ' in text
    assert '| Few l2=0.001 | 1/1 | 0.320 ' in text
    assert 'differ between cells' not in text                          # l2 is one of the grid's axes
    assert verdicts[0]['baseline_peak'] == pytest.approx(0.95) and verdicts[0]['best']['regularizer'] == 'l2=0.001'
    assert (root / 'figures' / 'group_few_l2_0.001.png').stat().st_size > 0

# ---- one tiny real cell: the command a cell runs is a working train.py command ----------------------

@pytest.mark.slow
def test_tiny_real_cell_runs_then_is_skipped(tmp_path):
    tiny = ('--n_train_classes=200 --n_holdout_classes=20 --item_dim=8 --n_layer=1 --n_embd=16 --n_head=2 '
            '--batch_size=16 --n_eval_episodes=32 --warmup_iters=5 --log_interval=10 --eval_interval=10 --max_iters=20')
    cmd = [sys.executable, os.path.join(ROOT, 'grid.py'), f'--grid_dir={tmp_path}', '--classes=many',
           '--weight_decays=1e-2', '--seeds=0', '--jobs=1', '--threads=1', f'--synthetic_args={tiny}']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, 'MPLBACKEND': 'Agg'})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.load(open(tmp_path / 'many_wd0.01_s0' / 'summary.json'))
    assert summary['config']['weight_decay'] == 1e-2 and summary['config']['n_train_classes'] == 200
    assert summary['config']['init_from'] == 'resume'
    assert 'No verdict yet' in (tmp_path / 'report.md').read_text()
    os.remove(tmp_path / 'report.md')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), f'--grid_dir={tmp_path}', '--report'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and (tmp_path / 'report.md').exists(), proc.stdout + proc.stderr
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert '0 run, 1 already finished' in proc.stdout


@pytest.mark.slow
def test_group_size_trains_cells_as_one_group_with_solo_files(tmp_path):
    """--group_size=3: three cells (Few and Many, two decays) in one train.py group; each cell folder gets
    the files of a solo run, the report reads them, and its cmd.txt still holds the cell's own train.py line."""
    tiny = ('--n_holdout_classes=20 --item_dim=8 --n_layer=1 --n_embd=16 --n_head=2 --batch_size=16 '
            '--n_eval_episodes=32 --warmup_iters=5 --log_interval=10 --eval_interval=10 --max_iters=20')
    cmd = [sys.executable, os.path.join(ROOT, 'grid.py'), f'--grid_dir={tmp_path}', '--classes=few,many',
           '--weight_decays=0,1e-2', '--seeds=0', '--jobs=1', '--threads=1', '--group_size=3',
           '--synthetic_many=--n_train_classes=300', f'--synthetic_args={tiny}']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, env={**os.environ, 'MPLBACKEND': 'Agg'})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count('one group') == 1 and proc.stdout.count('grid: started') == 2   # 3 + 1 cells
    names = ['few_wd0_s0', 'few_wd0.01_s0', 'many_wd0_s0', 'many_wd0.01_s0']
    for name in names:
        summary = json.load(open(tmp_path / name / 'summary.json'))
        assert summary['final_iter'] == 20
        assert 'train.py' in (tmp_path / name / 'cmd.txt').read_text()
    assert 'in a group of 3' in (tmp_path / 'few_wd0.01_s0' / 'train.log').read_text()
    assert 'group: 3 members' in (tmp_path / 'few_wd0_s0' / 'train.log').read_text()
    assert '## Verdict' in (tmp_path / 'report.md').read_text()


# ---- class-count and regulariser axes, chance flags, the phase diagram -----------------------------

def test_regularizers_and_class_counts_make_cells(grid):
    regs = grid.parse_regularizers('none, wd=0.1, l2=1e-3')
    assert regs == [('wd0', {}), ('wd0.1', {'weight_decay': 0.1}), ('l2_0.001', {'l2': 1e-3})]
    cells = grid.enumerate_cells(['100', 'many'], regs, [0], [], [], {'many': ['--n_train_classes=16000']}, [])
    assert [c['name'] for c in cells] == ['c100_wd0_s0', 'c100_wd0.1_s0', 'c100_l2_0.001_s0',
                                          'many_wd0_s0', 'many_wd0.1_s0', 'many_l2_0.001_s0']
    assert cells[2]['args'] == ['--n_train_classes=100', '--weight_decay=0.0', '--l2=0.001', '--seed=0']
    assert cells[1]['l2'] == 0.0 and cells[2]['l2'] == 1e-3 and cells[2]['regularizer'] == 'l2_0.001'


def test_a_modules_key_takes_its_list_joined_by_plus(grid):
    from report import reg_label
    regs = grid.parse_regularizers('forget_every=50+forget_modules=label_embedding+head,wd=1@mlp+head+swap=0.2')
    assert regs == [('forget_every_50_forget_modules_label_embedding-head',
                     {'forget_every': 50, 'forget_modules': 'label_embedding,head'}),
                    ('swap0.2_wd1-mlp-head', {'weight_decay': 1.0, 'decay_modules': 'mlp,head', 'label_swap': 0.2})]
    assert reg_label(regs[0][1]) == 'forget_every=50+forget_modules=label_embedding+head'
    with pytest.raises(ValueError, match="'head' is no term"):
        grid.parse_regularizer('forget_every=50+head')


@pytest.mark.slow
@pytest.mark.parametrize('bad', ['l1=0.1', 'wd=-1', 'l2=x', 'none,wd=0'])
def test_bad_regularizers_are_a_clear_error(tmp_path, bad):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), f'--grid_dir={tmp_path}',
                           f'--regularizers={bad}', '--dry_run'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'regularizers' in proc.stderr and 'Traceback' not in proc.stderr


def test_run_stats_skips_step_zero_and_flags_chance(grid):
    rows = [{'iter': 0, 'icl_acc': 0.52, 'iwl_acc': 0.0, 'ece': 0.1, 'attn_match_image': 0.1, 'attn_match_label': 0.1,
             'icl_chance': 0.5, 'icl_episodes': 512},
            {'iter': 100, 'icl_acc': 0.49, 'iwl_acc': 0.9, 'ece': 0.1, 'attn_match_image': 0.1, 'attn_match_label': 0.1},
            {'iter': 200, 'icl_acc': 0.44, 'iwl_acc': 1.0, 'ece': 0.1, 'attn_match_image': 0.1, 'attn_match_label': 0.1}]
    s = grid.run_stats(rows)
    assert s['raw_peak_icl'] == 0.49 and s['raw_peak_iter'] == 100    # the untrained model's 0.52 is no peak
    assert s['peak_icl'] == pytest.approx((0.49 + 0.44) / 2)          # fewer evals than the window: their mean
    assert s['icl_se'] == pytest.approx((0.25 / 512) ** 0.5)
    assert s['no_learning'] and s['below_chance']                     # 0.44 < 0.5 - 2 * 0.022
    rows[2]['icl_acc'] = 0.97
    s = grid.run_stats(rows)
    assert not s['no_learning'] and not s['below_chance'] and s['peak_iter'] == 200


def test_phase_report_heatmaps_and_thresholds(grid, tmp_path):
    from phase import write_phase_report
    root = tmp_path / 'p'
    peaks = {'wd0': {100: 0.5, 1600: 0.7, 16000: 0.95}, 'l2_0.001': {100: 0.5, 1600: 0.9, 16000: 0.97}}
    for reg, by_count in peaks.items():
        for n, peak in by_count.items():
            name = f'c{n}_{reg}_s0'
            write_cell(root, name, f'c{n}', 0.0, 0, [0.5, peak, peak, peak, peak - 0.05],
                       [0.0, 0.5, 0.5, 0.5, 1.0 if n == 100 else 0.1], 0.8)
            cell = json.loads((root / name / 'cell.json').read_text())
            (root / name / 'cell.json').write_text(json.dumps({**cell, 'regularizer': reg, 'l2': 0.001 if 'l2' in reg else 0}))
    cells = grid.load_cells(str(root))
    for c in cells:
        c['stats'] = grid.run_stats(c['rows'])
    first = write_phase_report(str(root), cells, threshold=0.8)
    assert first == {'wd0': 16000, 'l2_0.001': 1600}
    for f in ('phase.png', 'phase_curves.png', 'phase.md', 'phase.json'):
        assert (root / f).stat().st_size > 0, f
    text = (root / 'phase.md').read_text()
    assert ('| none | - | 16000 | 0.50° / 1.00 (chance 1/32) | 0.70 / 0.10 (chance 1/32) | 0.95 / 0.10 (chance 1/32) |'
            in text)                                                   # ° no learning; IWL beside its chance
    assert '| l2=0.001 | 1600 | 1 | 0.900 [0.900-0.900] | - | 0.900 | 0.500 |' in text   # no episode counts: no CI
    assert 'fewer than 3 in some cells (l2=0.001, none); declare seeds 0,1,2' in text
    assert '## Emergence over time (ICL >= 0.8)' in text and (root / 'emergence.png').stat().st_size > 0
    # the verdict with the smallest count as Few and 1600 as Many: l2's Few cell (0.5) gets no share of the gain
    verdicts = json.loads((root / 'verdict.json').read_text())
    assert '## Verdict: Few = 100 classes, Many = 1600 classes' in text
    assert verdicts[0]['baseline_peak'] == pytest.approx(0.7) and verdicts[0]['verdict'] == 'NOT SUPPORTED'


def test_emergence_table_counts_seeds_reaching_icl_by_each_step():
    """Time, not one budget: per cell the share of seeds at ICL >= 0.8 by each step and the median first step."""
    from phase import emergence_lines

    def cell(seed, accs):
        rows = [{'iter': 1000 * i, 'icl_acc': a} for i, a in enumerate(accs)]
        return {'classes': 'c100', 'seed': seed, 'weight_decay': 0.0, 'setting': {'label_swap': 0.8},
                'summary': {'config': {'label_swap_to': 'train'}}, 'rows': rows,
                'stats': {'peak_icl': max(accs[1:]), 'peak_iter': 1000 * accs.index(max(accs[1:]), 1),
                          'final_icl': accs[-1], 'final_iwl': 0.25}}
    cells = [cell(0, [0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.6]),   # early, then fades
             cell(1, [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.85, 0.9, 0.9, 0.9, 0.9]),  # late
             cell(2, [0.5] * 11)]                                                # never
    reg = (('label_swap', 0.8),)
    text = '\n'.join(emergence_lines(cells, [reg], [100], 0.8))
    assert '| by 1000 | by 2000 | by 4000 | by 6000 | by 8000 | by 10000 |' in text
    assert ('| swap=0.8 | 100 | 0/3 | 0/3 | 1/3 | 1/3 | 2/3 | 2/3 | 8000 [6000] | 0.90 (1000) -> 0.60, '
            '0.90 (7000) -> 0.90, 0.50 (1000) -> 0.50 | 0.25, 0.25, 0.25 |') in text  # peak (its step) -> final
    cells[1]['rows'] = cells[2]['rows']
    assert '| 1/3 | never [never] |' in '\n'.join(emergence_lines(cells, [reg], [100], 0.8))


def test_a_peak_just_below_the_threshold_is_not_printed_as_reaching_it():
    """0.796 beside 'ICL >= 0.8 from: never' must not read 0.80 in phase.md or the RESULTS block."""
    from phase import peak_text
    assert [peak_text(p, 0.8) for p in (0.796, 0.7949, 0.8, 0.804, 0.5)] == ['0.796', '0.79', '0.80', '0.80', '0.50']


def test_extra_cells_join_the_cross_at_every_seed_in_seed_major_order(grid):
    cells = grid.enumerate_cells(['100'], grid.parse_regularizers('none,swap=0.8'), [0, 1], [], [], {}, [])
    cells = grid.add_extra_cells(cells, '1600:none;100:swap=0.8+swap_to=all;100:none', [0, 1], [], [], {}, [])
    assert [c['name'] for c in cells] == ['c100_wd0_s0', 'c100_swap0.8_s0', 'c1600_wd0_s0', 'c100_swap0.8_to_all_s0',
                                          'c100_wd0_s1', 'c100_swap0.8_s1', 'c1600_wd0_s1', 'c100_swap0.8_to_all_s1']
    assert '--label_swap_to=all' in cells[3]['args'] and '--n_train_classes=1600' in cells[2]['args']


@pytest.mark.parametrize('bad', ['1600', 'lots:none', '100:bogus=1'])
def test_bad_extra_cells_are_a_clear_error(tmp_path, bad):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), f'--extra_cells={bad}', '--dry_run',
                           f'--grid_dir={tmp_path}/g'], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and ('extra_cells' in proc.stderr or 'regularizers' in proc.stderr), proc.stderr
    assert 'Traceback' not in proc.stderr


def test_extend_from_copies_finished_cells_without_their_summary(grid, tmp_path):
    import torch
    source, target = tmp_path / 'short', tmp_path / 'long'
    cells = grid.enumerate_cells(['100'], grid.parse_regularizers('none,swap=0.8'), [0], [], [], {}, [])
    done, running = source / cells[0]['name'], source / cells[1]['name']
    for d in (done, running):
        d.mkdir(parents=True)
        torch.save({'model': {}, 'iter_num': 10, 'config': {'lr_schedule': 'constant'}}, d / 'ckpt.pt')
        (d / 'metrics.jsonl').write_text('{"iter": 10}\n')
    (done / 'summary.json').write_text('{}')
    target.mkdir()
    assert grid.extend_cells(cells, str(target), str(source)) == [cells[0]['name']]   # only the finished one
    copied = target / cells[0]['name']
    assert (copied / 'ckpt.pt').exists() and (copied / 'metrics.jsonl').exists() and not (copied / 'summary.json').exists()
    assert grid.extend_cells(cells, str(target), str(source)) == []                   # started here: left alone
    torch.save({'model': {}, 'iter_num': 10, 'config': {'lr_schedule': 'cosine'}}, running / 'ckpt.pt')
    (running / 'summary.json').write_text('{}')
    with pytest.raises(SystemExit):
        grid.extend_cells(cells, str(target), str(source))                             # cosine depends on max_iters


def test_python_grid_py_is_the_experiment_as_posed(tmp_path):
    """`python grid.py` lists the posed grid: Few (100) / Many (1600) x the five decays x seeds 0, 1, 2 (30 cells)."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), f'--grid_dir={tmp_path}', '--dry_run'],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    cells = [line for line in proc.stdout.splitlines() if ': ' in line and 'train.py' in line]
    assert proc.returncode == 0 and len(cells) == 30, proc.stdout
    names = {line.split(':')[0] for line in cells}
    assert names == {f"{c}_wd{wd}_s{s}" for c in ('few', 'many') for wd in ('0', '0.0003', '0.001', '0.003', '0.01')
                     for s in (0, 1, 2)}
    assert all('--n_train_classes=100 ' in line for line in cells if line.startswith('few_'))
    assert all('--n_train_classes=1600 ' in line for line in cells if line.startswith('many_'))


@pytest.mark.parametrize('configs, exponents, lr', [
    (['config/grid_dose.py'], (0, 0.1, 0.3, 1, 3, 10, 30), 2e-3),
    (['config/grid_dose.py', 'config/grid_dose_lr2x.py'], (0, 0.3, 3, 30), 4e-3),
    (['config/omniglot.py', 'config/omniglot_small.py', 'config/grid_dose_omniglot.py'], (0, 0.3, 3, 30), 1e-3)])
def test_the_dose_response_grids_set_decay_by_its_exponent(tmp_path, configs, exponents, lr):
    """--decay_exponents: Few and Many x each exponent x seeds 0-2, each cell's weight_decay the one that makes
    wd * (sum of its lr over max_iters) the exponent (to 4 significant digits)."""
    from model import decay_exponent
    from training import parse_train_args
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), *configs, f'--grid_dir={tmp_path}', '--dry_run'],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    cells = {line.split(':')[0]: line.split(': ', 1)[1].split()[2:] for line in proc.stdout.splitlines()
             if ': ' in line and 'train.py' in line}
    assert proc.returncode == 0, proc.stderr
    assert set(cells) == {f"{c}_exp{e:g}_s{s}" for c in ('few', 'many') for e in exponents for s in (0, 1, 2)}
    for name, args in cells.items():
        config = parse_train_args([a for a in args if not a.startswith(('--out_dir', '--init_from'))])
        exponent = float(name.split('_exp')[1].split('_')[0])
        assert config['learning_rate'] == lr
        assert decay_exponent(config) == pytest.approx(exponent, rel=1e-3), name
        assert config['n_train_classes'] == (100 if name.startswith('few') else 1600)


FORGET, CURVATURE = ('forget_every', 'forget_until'), ('curvature_every', 'curvature_rho', 'curvature_sequences')


@pytest.mark.parametrize('config, keys, schedules, steps', [
    ('config/grid_forget.py', FORGET, [(0, 0), (20, 0), (50, 0), (250, 0), (50, 2000)], 4000),
    ('config/grid_forget_long.py', FORGET, [(0, 0), (50, 0), (50, 6000)], 12000),
    ('config/grid_curvature.py', CURVATURE, [(0, 0.9, 1024), (250, 0.5, 1024), (50, 0.5, 256)], 4000),
    ('config/grid_curvature_long.py', CURVATURE, [(0, 0.9, 1024), (250, 0.5, 1024), (50, 0.5, 256)], 12000)])
def test_the_erasing_grids_list_few_with_each_schedule_and_many_at_seeds_0_to_2(tmp_path, config, keys, schedules,
                                                                                 steps):
    from training import parse_train_args
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), config, f'--grid_dir={tmp_path}', '--dry_run'],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cells = {line.split(':')[0]: parse_train_args([a for a in line.split(': ', 1)[1].split()[2:]
                                                   if not a.startswith(('--out_dir', '--init_from'))])
             for line in proc.stdout.splitlines() if ': ' in line and 'train.py' in line}
    got = {(c['n_train_classes'], *(c[k] for k in keys), c['seed']) for c in cells.values()}
    assert got == ({(100, *v, s) for v in schedules for s in (0, 1, 2)}
                   | {(1600, *schedules[0], s) for s in (0, 1, 2)})
    assert {c['max_iters'] for c in cells.values()} == {steps} and {c['data_seed'] for c in cells.values()} == {0}


def test_decay_exponents_and_regularizers_are_one_axis_or_the_other(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), '--decay_exponents=0,1', '--regularizers=none,wd=1',
                           f'--grid_dir={tmp_path}', '--dry_run'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'decay_exponents and regularizers' in proc.stderr
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), '--decay_exponents=0,-1',
                           f'--grid_dir={tmp_path}', '--dry_run'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'decay_exponents' in proc.stderr


@pytest.mark.parametrize('where', ['train_args', 'config file'])
def test_a_mistyped_key_stops_the_grid_before_any_cell(tmp_path, where):
    """Every cell's train.py arguments are checked before the first starts, in --dry_run and in a real run alike: a
    key train.py does not have stops grid.py with one line naming it and where it came from."""
    bad = tmp_path / 'typo.py'
    bad.write_text("weight_decy = 1.0\n")
    extra = ['--train_args=--weight_decy=1'] if where == 'train_args' else [str(bad)]
    for mode in (['--dry_run'], ['--jobs=1', '--threads=1']):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), *extra, f'--grid_dir={tmp_path}/g', *mode],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stdout
        assert "unknown key 'weight_decy'" in proc.stderr and (str(bad) in proc.stderr or where == 'train_args')
        assert 'no cell was started' in proc.stderr and not os.path.exists(tmp_path / 'g')


def test_group_size_groups_only_cells_that_agree_on_the_keys_a_group_shares(tmp_path):
    """dropout is applied once for a whole group (training.GROUP_SHARED): cells that differ in it never share a group,
    so --dry_run lists the groups a run would start, none mixing them (grid order would pair the first two)."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), f'--grid_dir={tmp_path}', '--dry_run',
                           '--axes=p_bursty=0.9,0.5;dropout=0,0.1', '--weight_decays=0', '--seeds=0', '--classes=few',
                           '--group_size=2'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    units = [line for line in proc.stdout.splitlines() if 'train.py' in line]
    assert len(units) == 2 and all(' :: ' in u for u in units), proc.stdout
    for unit in units:
        assert len(set(re.findall(r'--dropout=(\S+)', unit))) == 1, unit


def test_machine_spread_compares_run_sets_seed_by_seed(tmp_path):
    """scripts/machine_spread.py: per cell and seed the peak in each run set, the machine spread beside the seed
    spread, Few's ratio per run set, and the seeds a verdict needs so that a change of machine cannot flip it."""
    for run_set, shift in (('a', 0.0), ('b', 0.1)):   # Many moves by 0.1 between run sets, Few not at all
        for seed in range(3):
            write_cell(tmp_path / run_set, f'c1600_wd0_s{seed}', 'many', 0.0, seed, [0.5] + [0.85 + shift] * 3 + [0.8],
                       [0.0] * 5, 0.9)
            write_cell(tmp_path / run_set, f'c100_swap0.8_s{seed}', 'few', 0.0, seed,
                       [0.5] + [0.85 - 0.02 * seed] * 3 + [0.8], [0.1] * 5, 0.8)
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'machine_spread.py'), str(tmp_path / 'a'),
                           str(tmp_path / 'b'), f'--write={tmp_path / "out"}'], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / 'out' / 'machine.json').read_text())
    many, few = result['cells']['c1600_wd0'], result['cells']['c100_swap0.8']
    assert many['machine_spread_mean'] == pytest.approx(0.1) and few['machine_spread_mean'] == pytest.approx(0.0)
    assert few['seed_spread'] == {'a': pytest.approx(0.04), 'b': pytest.approx(0.04)}
    assert few['ratios'] == {'a': pytest.approx(0.83 / 0.85), 'b': pytest.approx(0.83 / 0.95)}
    f, m = 0.83, 0.9   # the means over run sets; Many's sigma^2 = 0.1^2 / 2, Few's 0
    assert few['seeds_needed'] == math.ceil(2 * (1.96 * (f / m) / 0.05) ** 2 * (0.1 ** 2 / 2) / m ** 2) == 17
    assert 'machine spread' in (tmp_path / 'out' / 'machine.md').read_text()
    for seed in range(3):   # a run set with Many only (Omniglot's second path): no Few row, and the table says why
        write_cell(tmp_path / 'c', f'c1600_wd0_s{seed}', 'many', 0.0, seed, [0.5] + [0.8] * 3 + [0.8], [0.0] * 5, 0.9)
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'machine_spread.py'), str(tmp_path / 'a'),
                           str(tmp_path / 'c')], capture_output=True, text=True)
    assert done.returncode == 0 and '| (none: only c1600_wd0 finished in every run set) |' in done.stdout, done.stderr
    m = (0.85 + 0.8) / 2   # Many's sigma^2 = 0.05^2 / 2: the bound for a ratio at the bar from Many's noise alone
    at_least = [math.ceil(2 * (1.96 * 0.9 / margin) ** 2 * (0.05 ** 2 / 2) / m ** 2) for margin in (0.05, 0.025)]
    assert at_least == [5, 19] and f'at least {at_least[0]} seeds at a margin of 0.05, {at_least[1]} at 0.025' in done.stdout


def dry_run_cells(tmp_path, *configs):
    from training import parse_train_args
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), *configs, f'--grid_dir={tmp_path}', '--dry_run'],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc, {line.split(':')[0]: parse_train_args([a for a in line.split(': ', 1)[1].split()[2:]
                                                       if not a.startswith(('--out_dir', '--init_from'))])
                  for line in proc.stdout.splitlines() if ': ' in line and 'train.py' in line}


RELABEL = [0, 10, 25, 50, 100, 400, 1600]


@pytest.mark.parametrize('configs, key, few_values, many_values, steps', [
    (['config/grid_relabel.py'], 'relabel_every', RELABEL, [0], 4000),
    (['config/grid_principle.py'], 'within_class_noise', [0.1, 0.25, 0.5, 1.0], [0.1, 0.25, 0.5, 1.0], 4000),
    (['config/omniglot.py', 'config/omniglot_small.py', 'config/grid_wrong_omniglot.py'], 'augment', [0, 0.5, 1.0], [0],
     10000)])
def test_the_wrong_memory_grids_list_their_levers_at_seeds_0_to_2(tmp_path, configs, key, few_values, many_values,
                                                                   steps):
    """Each lever's value at Few and at Many, every one at seeds 0-2 and one budget; an Omniglot-only key (augment)
    passes the check on the Omniglot grid, where its cells run, and is refused on the synthetic default."""
    _, cells = dry_run_cells(tmp_path, *configs)
    for n, values in ((100, few_values), (1600, many_values)):
        got = {(c[key], c['seed']) for c in cells.values() if c['n_train_classes'] == n}
        assert got == {(v, s) for v in values for s in (0, 1, 2)}
    assert {c['max_iters'] for c in cells.values()} == {steps}
    if key == 'augment':
        proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), '--regularizers=augment=0.5',
                               f'--grid_dir={tmp_path}', '--dry_run'], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "augment=0.5 must be >= 0, and 0 unless dataset='omniglot'" in proc.stderr
        assert {c['relabel_every'] for c in cells.values()} == {0, 50}


def test_wrong_memory_plots_each_lever_by_its_kind(tmp_path):
    """scripts/wrong_memory.py: a cell's share is the mean of its rows' wrong_memory (None rows left out), its peak
    ICL run_stats'; points are seed means per lever, each lever of its kind, and cells from before the measurement
    are counted out."""
    for seed in range(2):
        write_cell(tmp_path / 'g', f'c100_swap0.8_s{seed}', 'few', 0.0, seed, [0.5, 0.9, 0.9, 0.9, 0.8],
                   [0.0] * 5, 0.8)
        write_cell(tmp_path / 'g', f'c100_wd0_s{seed}', 'few', 0.0, seed, [0.5] * 5, [1.0] * 5, 0.2)
    for name, shares in (('c100_swap0.8', [None, 0.9, 0.95, 1.0, 0.95]), ('c100_wd0', [None, 0.1, 0.0, 0.0, 0.1])):
        for seed in range(2):
            d = tmp_path / 'g' / f'{name}_s{seed}'
            cell = json.loads((d / 'cell.json').read_text())
            (d / 'cell.json').write_text(json.dumps({**cell, 'setting': {'label_swap': 0.8, 'label_swap_to': 'train'} if 'swap' in name else {}}))
            rows = [json.loads(line) for line in (d / 'metrics.jsonl').read_text().splitlines()]
            (d / 'metrics.jsonl').write_text(''.join(json.dumps({**r, 'wrong_memory': s}) + '\n' for r, s in zip(rows, shares)))
    write_cell(tmp_path / 'g', 'c100_wd1_s0', 'few', 1.0, 0, [0.5] * 5, [1.0] * 5, 0.2)  # before the measurement
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'wrong_memory.py'), str(tmp_path / 'g'),
                           f'--write={tmp_path / "out"}'], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / 'out' / 'wrong_memory.json').read_text())
    points = {(r['lever'], r['kind']): r for r in result['rows']}
    assert set(points) == {('swap=0.8', 'wrong'), ('wd=0', 'none')} and result['skipped'] == 1
    assert points[('swap=0.8', 'wrong')]['wrong_memory'] == pytest.approx(0.95)
    assert points[('wd=0', 'none')]['wrong_memory'] == pytest.approx(0.05)
    assert points[('swap=0.8', 'wrong')]['peak_icl'] == pytest.approx(0.9) and points[('swap=0.8', 'wrong')]['seeds'] == [0, 1]
    assert (tmp_path / 'out' / 'wrong_memory.png').stat().st_size > 1000


@pytest.mark.parametrize('config, levers', [
    ('config/grid_depth12.py', {(n, ('weight_decay', wd)) for n in (100, 1600) for wd in (0.0, 3e-4, 1e-3, 3e-3, 1e-2)}),
    ('config/grid_depth12_levers.py', {(100, ('weight_decay', 0.0)), (100, ('label_swap', 0.8)),
                                       (100, ('relabel_every', 50)), (100, ('decay_modules', 'mlp,head')),
                                       (1600, ('weight_decay', 0.0))}),
    ('config/grid_depth12_dose.py', {(n, ('exponent', e)) for n in (100, 1600) for e in (0, 0.3, 3, 10, 30)}),
    ('config/grid_depth12_width.py', {(n, ('width', d, e)) for n in (100, 1600) for d in (48, 96) for e in (0, 3)})])
def test_the_12_layer_grids_list_each_cell_at_seeds_0_to_2_and_the_declared_budget(tmp_path, config, levers):
    """The posed model's grids: every cell 12 layers, 8 heads, 4000 steps (the budget config/grid_depth12.py declares
    from Many's curve), data_seed 0, and each lever at Few or Many on seeds 0, 1 and 2 (an exponent to 2 significant
    digits: grid.py writes its weight_decay to 4)."""
    from model import decay_exponent
    _, cells = dry_run_cells(tmp_path, config)

    def lever(c):
        if 'width' in config:
            return ('width', c['n_embd'], float(f'{decay_exponent(c):.2g}'))
        if 'dose' in config:
            return ('exponent', float(f'{decay_exponent(c):.2g}'))
        for key, off in (('label_swap', 0.0), ('relabel_every', 0), ('decay_modules', 'all')):
            if c[key] != off:
                return (key, c[key])
        return ('weight_decay', c['weight_decay'])

    got = {(c['n_train_classes'], lever(c), c['seed']) for c in cells.values()}
    assert got == {(n, lv, s) for n, lv in levers for s in (0, 1, 2)}
    assert len(cells) == 3 * len(levers)
    assert {(c['n_layer'], c['n_head'], c['max_iters'], c['data_seed']) for c in cells.values()} == {(12, 8, 4000, 0)}


@pytest.mark.parametrize('config, steps', [('config/grid_omniglot_swap_five.py', 10000),
                                           ('config/grid_omniglot_swap_five_long.py', 25000)])
def test_the_omniglot_five_seed_swap_grids_list_one_run_set_at_seeds_0_to_4(tmp_path, config, steps):
    """Omniglot's knife-edge verdict: Few without a lever and with swap 0.8, Many without one, every cell at seeds 0-4
    on Omniglot 14x14 with 4 layers; the 25k grid continues the 10k grid's cells (one run set for both budgets)."""
    _, cells = dry_run_cells(tmp_path, 'config/omniglot.py', 'config/omniglot_small.py', config)
    got = {(c['n_train_classes'], c['label_swap'], c['seed']) for c in cells.values()}
    assert got == {(n, swap, s) for n, swap in ((100, 0.0), (100, 0.8), (1600, 0.0)) for s in range(5)}
    assert {(c['dataset'], c['image_size'], c['n_layer'], c['max_iters'], c['weight_decay']) for c in cells.values()} \
        == {('omniglot', 14, 4, steps, 0.0)}
    extends = {}
    exec(open(os.path.join(ROOT, config)).read(), {}, extends)
    assert extends.get('extend_from', '') == ('out_omniglot_swap_five' if steps == 25000 else '')


def test_the_omniglot_decay_continuation_keeps_each_10k_cells_weight_decay(tmp_path):
    """config/grid_dose_omniglot_long.py continues Few at exponents 0, 3 and 30 from the 10k dose grid to 25k: each of
    its Few cells has the name and the weight_decay of a 10k cell (exponent_iters=10000), which the 25k sum of lr alone
    would make 2.5x smaller and its resume refuse; Many without decay runs beside them at 25k, seeds 0-2."""
    omniglot = ('config/omniglot.py', 'config/omniglot_small.py')
    _, short = dry_run_cells(tmp_path / 'short', *omniglot, 'config/grid_dose_omniglot.py')
    _, long = dry_run_cells(tmp_path / 'long', *omniglot, 'config/grid_dose_omniglot_long.py')
    few = {name for name in long if name.startswith('few_')}
    assert few == {f"few_exp{e}_s{s}" for e in (0, 3, 30) for s in (0, 1, 2)}
    for name in few:
        assert long[name]['weight_decay'] == short[name]['weight_decay'] > 0 or '_exp0_' in name, name
        assert long[name]['max_iters'] == 25000 and short[name]['max_iters'] == 10000
    assert {(c['n_train_classes'], c['weight_decay'], c['max_iters'], c['seed']) for n, c in long.items()
            if n not in few} == {(1600, 0.0, 25000, s) for s in (0, 1, 2)}
    extends = {}
    exec(open(os.path.join(ROOT, 'config/grid_dose_omniglot_long.py')).read(), {}, extends)
    assert extends['extend_from'] == 'out_dose_omniglot'


def test_exponent_iters_without_decay_exponents_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'grid.py'), '--exponent_iters=1000',
                           f'--grid_dir={tmp_path}', '--dry_run'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'exponent_iters=1000' in proc.stderr and 'decay_exponents' in proc.stderr


def test_the_omniglot_12_layer_grid_lists_its_levers_at_seeds_0_to_2_and_the_declared_budget(tmp_path):
    """The posed model on Omniglot: Few without decay, at decay exponents 0.3, 3 and 30 over the declared 25k steps,
    and with swap 0.8, against Many without decay; every cell 12 layers over the 14x14 ResNet, seeds 0-2."""
    from model import decay_exponent
    _, cells = dry_run_cells(tmp_path, 'config/omniglot.py', 'config/omniglot_small.py', 'config/layers12.py',
                             'config/grid_omniglot_depth12.py')

    def lever(c):
        return ('swap', c['label_swap']) if c['label_swap'] else ('exponent', float(f'{decay_exponent(c):.2g}'))

    got = {(c['n_train_classes'], lever(c), c['seed']) for c in cells.values()}
    levers = [(100, ('exponent', e)) for e in (0, 0.3, 3, 30)] + [(100, ('swap', 0.8)), (1600, ('exponent', 0))]
    assert got == {(n, lv, s) for n, lv in levers for s in (0, 1, 2)} and len(cells) == 18
    assert {(c['dataset'], c['image_size'], c['n_layer'], c['n_embd'], c['max_iters']) for c in cells.values()} \
        == {('omniglot', 14, 12, 64, 25000)}


def test_the_12_layer_omniglot_five_seed_grid_continues_the_12_layer_grid_at_seeds_0_to_4(tmp_path):
    """The knife-edge swap verdict at 12 layers: Few without decay and with swap 0.8, Many without decay, at seeds 0-4;
    its seeds 0-2 have the 12-layer grid's names and settings, so that grid's finished cells are copied, not rerun."""
    layers12 = ('config/omniglot.py', 'config/omniglot_small.py', 'config/layers12.py')
    _, five = dry_run_cells(tmp_path / 'five', *layers12, 'config/grid_omniglot_depth12_five.py')
    _, grid = dry_run_cells(tmp_path / 'grid', *layers12, 'config/grid_omniglot_depth12.py')
    assert {(c['n_train_classes'], c['label_swap'], c['weight_decay'], c['seed']) for c in five.values()} \
        == {(n, swap, 0.0, s) for n, swap in ((100, 0.0), (100, 0.8), (1600, 0.0)) for s in range(5)}
    shared = {name for name, c in five.items() if c['seed'] < 3}
    assert len(shared) == 9 and all(five[name] == grid[name] for name in shared)
    assert {(c['n_layer'], c['max_iters']) for c in five.values()} == {(12, 25000)}
    extends = {}
    exec(open(os.path.join(ROOT, 'config/grid_omniglot_depth12_five.py')).read(), {}, extends)
    assert extends['extend_from'] == 'out_omniglot_depth12'
