"""
Does a run trained under an erasing lever still hold its memorisation where the lever cuts? The curvature edit of
the lever (rho 0.5 on the MLPs, K-FAC over 256 training sequences with sampled labels: curvature_every=50's setting)
applied once to the final checkpoint of every Few cell of a grid, with and without the lever, seeds 0-2: ICL and
IWL before and after, the curvature mass removed and the share of components kept (curvature.py --edit on each cell), and
what the lever's edits cost the cell (their seconds, from its train.log, over its wall time).

    python scripts/after_edit.py out_curvature assets/results/curvature/after_edit
    python scripts/after_edit.py out_curvature_long assets/results/curvature_long/after_edit
    python scripts/after_edit.py out_erase_omniglot assets/results/erase_omniglot/after_edit

Writes <output>/<cell>/curvature.json (and .png) and <output>/summary.md.
"""
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EDIT, SEQUENCES = 'curvature:1,0.5@mlp', 256


def edit_cost(cell_dir):
    """'<n> edits, <s> s, <share> of the run' from the cell's train.log and metrics.jsonl ('-' without edits)."""
    with open(os.path.join(cell_dir, 'train.log')) as f:
        seconds = [float(x) for x in re.findall(r'^curvature edit .*?, ([0-9.]+) s$', f.read(), re.M)]
    if not seconds:
        return '-'
    with open(os.path.join(cell_dir, 'metrics.jsonl')) as f:
        wall = [json.loads(line) for line in f][-1]['wall_s']
    return f"{len(seconds)} edits, {sum(seconds):.0f} s, {sum(seconds) / wall:.1%} of the run"


def main(grid_dir, out_root):
    from curvature import run_cli
    rows = []
    cells = sorted(c for c in os.listdir(grid_dir) if c.startswith('c100_')
                   and os.path.exists(os.path.join(grid_dir, c, 'summary.json')))
    if not cells:
        sys.exit(f"{grid_dir}: no finished c100_* cells")
    for cell in cells:
        start = time.time()
        result = run_cli(os.path.join(grid_dir, cell), 'ckpt.pt', 'cpu', EDIT, SEQUENCES,
                         edit_out=os.path.join(out_root, cell))
        b, r = result['baseline'], result['sets'][0]['rows'][-1]
        rows.append(f"| {cell} | {result['iter']} | {b['icl_acc']:.2f} / {b['iwl_acc']:.2f} | {r['icl_acc']:.2f} / "
                    f"{r['iwl_acc']:.2f} | {r['mass_removed']:.2f} | {r['components_kept']:.4f} | "
                    f"{edit_cost(os.path.join(grid_dir, cell))} | {time.time() - start:.0f} s |")
    lines = [f"The lever's edit ({EDIT}, {SEQUENCES} training sequences, labels sampled from the model) applied once to "
             f"the final checkpoint of each Few cell of {os.path.basename(os.path.abspath(grid_dir))}. ICL / IWL before "
             "and after; mass removed: mean over the MLP weights of the curvature mass dropped; kept: mean share of "
             "components kept.", '',
             '| cell | iter | unedited | edited (rho 0.5) | mass removed | kept | the lever\'s edits in training | wall |',
             '|---|---|---|---|---|---|---|---|',
             *rows]
    os.makedirs(out_root, exist_ok=True)
    with open(os.path.join(out_root, 'summary.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit('usage: python scripts/after_edit.py <grid folder> <output folder>')
    main(sys.argv[1], sys.argv[2])
