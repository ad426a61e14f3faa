"""
The curvature map of the proxy runs that matter (seed 0 only): curvature.py's sweep on each
checkpoint below, one folder of curvature.json / curvature.png per checkpoint, and summary.md / summary.json
beside them (a table of ICL and IWL per module set and rho, and the wall time of each sweep).

    python scripts/curvature_map.py runs_curv assets/results/curvature_map

The runs (one thread each, keep_checkpoints every 250 steps so a peak can be picked afterwards):

    K=$(seq -s, 250 250 12000); S='--n_eval_episodes=512 --eval_interval=250 --log_interval=250 --seed=0'
    python train.py --n_train_classes=100 --max_iters=4000 $S --keep_checkpoints=$K --out_dir=runs_curv/few
    python train.py --n_train_classes=1600 --max_iters=12000 $S --keep_checkpoints=$K --out_dir=runs_curv/many
    python train.py --n_train_classes=800 --max_iters=4000 $S --weight_decay=1.0 --decay_modules=mlp,head \\
        --keep_checkpoints=$K --out_dir=runs_curv/c800_wd1_mlp_head
    python train.py --n_train_classes=100 --max_iters=12000 $S --label_swap=0.8 --keep_checkpoints=$K \\
        --out_dir=runs_curv/few_swap0.8

Every sweep takes the K-FAC factors over N = 65536 training sequences. Then the same sweep on the mlp and all sets of
three of them with the other choices curvature.py offers (CHECKS): positions='reduce' (A of the position-mean of a,
G of the position-sum of g) and labels='true' (the empirical Fisher), into checks/<name>_<positions>_<labels>/; and
on the mlp set with fewer and more sequences (CONVERGENCE), into checks/<name>_n<N>/.

With --expected, the map again with labels='expected' (the exact expectation over the model's softmax instead of
one sampled label per sequence) over 16384 sequences, into expected/<name>/ and summary_expected.md: a confident
model's sampled labels are nearly always its answers, so one sample per sequence leaves G to rare draws, a
heavy-tailed estimate that decides the Few runs' low-curvature tail.

    python scripts/curvature_map.py runs_curv assets/results/curvature_map --expected

With --omniglot, the map of the Omniglot runs at 10k (OMNIGLOT_RUNS: the dose grid's cells without decay, seed 0)
over 32768 sequences with one sampled label each, into omniglot/<name>/ and summary_omniglot.md:

    python scripts/curvature_map.py out_dose_omniglot assets/results/curvature_map --omniglot

A checkpoint named 'peak' is the middle eval of the run's best mean of 3 consecutive evals of ICL (the rule of the
reports), step 0 excluded.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RUNS = [  # (name, run folder, checkpoint: an iter or 'peak', what it is)
    ('few_4k', 'few', 4000, 'Few (100 classes), no decay, at the posed budget: memorised, ICL at chance'),
    ('many_peak', 'many', 'peak', 'Many (1600 classes), no decay, at its peak ICL'),
    ('many_12k', 'many', 12000, 'Many at 12k, after its ICL fades as IWL takes over'),
    ('few_swap0.8_12k', 'few_swap0.8', 12000, 'Few with label swap 0.8 at 12k: ICL and IWL side by side'),
    ('c800_wd1_mlp_head_peak', 'c800_wd1_mlp_head', 'peak', '800 classes, wd=1 on mlp+head, at its peak ICL'),
]
RHOS = '1,0.999,0.99,0.95,0.9,0.8,0.5,0.2'
# Omniglot (--omniglot): the final (10k) checkpoints of the dose grid's cells without decay, seed 0
OMNIGLOT_RUNS = [('few_10k', 'few_exp0_s0', 'Few (100 classes), no decay, 10k steps: memorised, ICL at chance'),
                 ('many_10k', 'many_exp0_s0', 'Many (1600 classes), no decay, 10k steps: ICL still rising')]
OMNIGLOT_RHOS = '1,0.99,0.9,0.5'
SETS = 'mlp,head,attn,all'
TABLE_RHOS = (0.99, 0.9, 0.5)
N = 65536
CONVERGENCE = [('many_12k', n) for n in (4096, 16384, 262144)] + [(name, n) for name in ('few_4k', 'few_swap0.8_12k')
                                                                   for n in (4096, 262144)]
CHECKS = [(name, positions, labels) for name in ('few_4k', 'many_12k', 'few_swap0.8_12k')
          for positions, labels in (('reduce', 'sampled'), ('expand', 'true'))]


def peak_iter(run_dir):
    from checkpoint import read_metrics
    rows = [r for r in read_metrics(run_dir) if r['iter'] > 0]
    means = [(sum(r['icl_acc'] for r in rows[i:i + 3]) / 3, rows[i + 1]['iter']) for i in range(len(rows) - 2)]
    return max(means)[1]


def sweep(run_dir, it, sets, folder, positions='expand', labels='sampled', n=N, rhos=RHOS, ckpt=None):
    """One sweep, condensed for the summary (the full result is the folder's curvature.json)."""
    from curvature import run_cli
    start = time.time()
    result = run_cli(run_dir, ckpt or f'ckpt_{it}.pt', 'cpu', f'curvature:{rhos}@{sets}', n, edit_out=folder,
                     positions=positions, labels=labels)
    return {'run': run_dir, 'iter': result['iter'], 'positions': positions, 'labels': labels, 'n_sequences': n,
            'wall_s': round(time.time() - start, 1),
            'baseline': {k: result['baseline'][k] for k in ('icl_acc', 'iwl_acc', 'train_dist_acc')},
            'sets': {s['name']: [{k: r[k] for k in ('rho', 'mass_removed', 'components_kept', 'icl_acc', 'iwl_acc',
                                                     'train_dist_acc', 'attn_match_label')} for r in s['rows']]
                     for s in result['sets']}}


def table(summary):
    lines = ['| checkpoint | set | unedited | ' + ' | '.join(f'rho={r:g}' for r in TABLE_RHOS) + ' |',
             '|---|---|---|' + '---|' * len(TABLE_RHOS)]
    for s in summary:
        b = s['baseline']
        for set_name, rows in s['sets'].items():
            cells = [f"{r['icl_acc']:.2f} / {r['iwl_acc']:.2f} ({r['train_dist_acc']:.2f}) [{r['components_kept']:.3f}]"
                     for rho in TABLE_RHOS for r in rows if r['rho'] == rho]
            lines.append(f"| {s['name']} (iter {s['iter']}) | {set_name} | {b['icl_acc']:.2f} / {b['iwl_acc']:.2f} "
                         f"({b['train_dist_acc']:.2f}) | " + ' | '.join(cells) + ' |')
    return lines


def expected_map(runs_root, out_root, n=16384):
    summary = []
    for name, folder, which, what in RUNS:
        run_dir = os.path.join(runs_root, folder)
        it = peak_iter(run_dir) if which == 'peak' else which
        summary.append({'name': name, 'what': what, **sweep(run_dir, it, SETS, os.path.join(out_root, 'expected', name),
                                                             labels='expected', n=n)})
    write_summary(out_root, 'summary_expected', {'rhos': RHOS, 'sets': SETS, 'n_sequences': n, 'labels': 'expected'},
                  summary, "ICL / IWL (training-distribution accuracy) after keeping rho of each weight's curvature "
                  f"mass, seed 0; share of components kept in brackets. K-FAC 'expand' weighting over {n} training "
                  "sequences, G the exact expectation over the model's softmax (labels='expected').", n, RHOS)


def write_summary(out_root, stem, meta, summary, intro, n, rhos):
    """<stem>.json (meta and the runs) and <stem>.md (intro, the table, each sweep's wall time), printed too."""
    with open(os.path.join(out_root, f'{stem}.json'), 'w') as f:
        json.dump({**meta, 'runs': summary}, f, indent=1)
    lines = [intro, '', *table(summary), '',
             f'Wall time per sweep (one thread, {n} sequences, 4 sets x {len(rhos.split(","))} rhos): '
             + ', '.join(f"{s['name']} {s['wall_s']:.0f} s" for s in summary)]
    with open(os.path.join(out_root, f'{stem}.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


def omniglot_map(runs_root, out_root, n=32768):
    """The map of the Omniglot runs at 10k (OMNIGLOT_RUNS, final checkpoints): one label sampled per sequence (the
    paper's Fisher; the exact expectation would take 1623 backward passes a batch), over n sequences."""
    summary = []
    for name, folder, what in OMNIGLOT_RUNS:
        summary.append({'name': name, 'what': what,
                        **sweep(os.path.join(runs_root, folder), None, SETS, os.path.join(out_root, 'omniglot', name),
                                n=n, rhos=OMNIGLOT_RHOS, ckpt='ckpt.pt')})
    write_summary(out_root, 'summary_omniglot',
                  {'rhos': OMNIGLOT_RHOS, 'sets': SETS, 'n_sequences': n, 'labels': 'sampled'}, summary,
                  "Omniglot (14x14, 4 layers, 10k steps, no decay), seed 0: ICL / IWL (training-distribution accuracy) "
                  "after keeping rho of each weight's curvature mass; share of components kept in brackets. K-FAC "
                  f"'expand' weighting over {n} training sequences, one label per sequence sampled from the model. The "
                  "ResNet encoder has no Linear: it is never edited.", n, OMNIGLOT_RHOS)


def main(runs_root, out_root):
    summary, checks, where = [], [], {}
    for name, folder, which, what in RUNS:
        run_dir = os.path.join(runs_root, folder)
        it = peak_iter(run_dir) if which == 'peak' else which
        where[name] = (run_dir, it)
        summary.append({'name': name, 'what': what, **sweep(run_dir, it, SETS, os.path.join(out_root, name))})
    for name, positions, labels in CHECKS:
        run_dir, it = where[name]
        folder = os.path.join(out_root, 'checks', f'{name}_{positions}_{labels}')
        checks.append({'name': f'{name} {positions}/{labels}',
                       **sweep(run_dir, it, 'mlp,all', folder, positions, labels)})
    for name, n in CONVERGENCE:
        run_dir, it = where[name]
        checks.append({'name': f'{name} n={n}', **sweep(run_dir, it, 'mlp', os.path.join(out_root, 'checks',
                                                                                        f'{name}_n{n}'), n=n)})
    with open(os.path.join(out_root, 'summary.json'), 'w') as f:
        json.dump({'rhos': RHOS, 'sets': SETS, 'n_sequences': N, 'seed': 0, 'runs': summary, 'checks': checks},
                  f, indent=1)
    lines = ["ICL / IWL (training-distribution accuracy) after keeping rho of each weight's curvature mass, seed 0; "
             f"share of components kept in brackets. K-FAC 'expand' weighting over {N} training sequences, labels "
             "sampled from the model.", '',
             *table(summary), '',
             f'Wall time per sweep (one thread, {N} sequences, 4 sets x 8 rhos): '
             + ', '.join(f"{s['name']} {s['wall_s']:.0f} s" for s in summary), '',
             "Checks: positions 'reduce' or the true labels (empirical Fisher) instead, and other numbers of "
             "sequences (n=...; the others take 65536).", '', *table(checks), '',
             'Wall time per check: ' + ', '.join(f"{s['name']} {s['wall_s']:.0f} s" for s in checks)]
    with open(os.path.join(out_root, 'summary.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    modes = {(): main, ('--expected',): expected_map, ('--omniglot',): omniglot_map}
    if len(sys.argv) < 3 or tuple(sys.argv[3:]) not in modes:
        sys.exit('usage: python scripts/curvature_map.py <runs folder> <output folder> [--expected | --omniglot]')
    modes[tuple(sys.argv[3:])](sys.argv[1], sys.argv[2])
