"""README's "now hack it" recipes, applied as README writes them (its <!-- patch:NAME --> blocks, so they cannot rot):
one lever of each kind (loss terms, a sampler rule, an optimizer-side change, a model-side random draw, an eval metric,
an intervention between steps), each checked at start-up, acting, and a group member equal to its solo run."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from test_group import assert_close, member_argv, patched_repo, run_in
from test_train import TINY, metrics

KINDS = {'loss term': ('l1',), 'sampler rule': ('item_noise',),
         'optimizer-side change': ('weight_cap',), 'model-side random draw': ('item_dropout',),
         'eval metric': ('icl_nll',), 'intervention between steps': ('shrink_every',)}
SNIPPETS = tuple(name for names in KINDS.values() for name in names)
# where the lines under a snippet's '# <place>' comment go: (file, the line they go next to, their indent, before it?)
PLACES = {'train.py': ('train.py', 'l2 = ', '', False),
          'train.py:start': ('train.py', 'interventions.forget_due(0, c), interventions.curvature_due(0, c)',
                             '        ', False),
          'train.py:loop': ('train.py', '    loss = train_step(train_model,', '    ', True),
          'training.check_config': ('training.py', '    check_data_config(config)', '    ', False),
          'step.StepTerms.__init__': ('step.py', 'l2_penalty(decayed, l2, self.member_shape))', '        ', False),
          'data.EpisodeSampler': ('data.py', '    TRAINING_ONLY = {', '    ', False),
          'data.EpisodeSampler.__init__:arguments': ('data.py', "                 zipf_alpha=0.0, seed=0, device='cpu'",
                                                     '                 ', True),
          'data.EpisodeSampler.__init__': ('data.py', 'self.label_swap, self.n_labels, self.p_copy = ', '        ', False),
          'data.EpisodeSampler.sample': ('data.py', 'items = self.bank.gather(classes, self.generator, self.copy_sou',
                                         '        ', False),
          'optimizer.AdamW.__init__': ('optimizer.py', 'self.param_groups = self.inner.param_groups', '        ', False),
          'optimizer.AdamW.step': ('optimizer.py', '        self.inner.step()', '        ', False),
          'model.ICLTransformer.forward': ('model.py', "item_tokens = edits['encoder'](item_tokens) if 'encoder'",
                                           '        ', False),
          'eval.evaluate': ('eval.py', '    model.train(was_training)', '    ', True),
          'interventions': ('interventions.py', 'def curvature_due(', '', True)}


def readme_patches(*names):
    """{file: [(anchor, lines inserted next to the line holding it)]} for README's snippets `names`."""
    with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    patches = {}
    for name in names:
        block = re.search(rf'<!-- patch:{name} -->\s*```python\n(.*?)```', readme, re.S)
        assert block, f"README.md has no python block after <!-- patch:{name} -->"
        for place, lines in re.findall(r'^# (\S+)\n(.*?)(?=^# |\Z)', textwrap.dedent(block.group(1)), re.S | re.M):
            file, anchor, indent, before = PLACES[place]
            patches.setdefault(file, []).append((anchor, textwrap.indent(lines, indent), before))
    return patches


def patched(tmp_path):
    """A copy of the project with every recipe applied (lines before or after their anchor line)."""
    repo = patched_repo(tmp_path, {})
    for name, edits in readme_patches(*SNIPPETS).items():
        text = (repo / name).read_text()
        for anchor, lines, before in edits:
            assert anchor in text, (name, anchor)
            at = text.index(anchor)
            at = text.rindex('\n', 0, at) + 1 if before else text.index('\n', at) + 1
            text = text[:at] + lines + text[at:]
        (repo / name).write_text(text)
    return repo


UNIT = '''
import torch
from checkpoint import train_defaults
from model import ICLTransformer, ModelConfig
from step import StepTerms
from training import check_config
import optimizer  # noqa: F401 (its recipe compiles)
defaults = train_defaults()
for key in ('l1', 'item_noise', 'weight_cap', 'item_dropout', 'shrink_every'):
    try:
        check_config({**defaults, key: -1})
        raise SystemExit(key + ': check_config took -1')
    except ValueError as e:
        assert key in str(e), e
assert StepTerms([defaults], []).terms == [] and StepTerms([defaults], []).draws == {}  # off at their defaults
model = ICLTransformer(ModelConfig(n_labels=16, item_shape=(8,), n_layer=2, n_head=2, n_embd=16))
out = model(torch.randn(4, 9, 8), torch.randint(0, 16, (4, 9)))
decayed = model.decayed_parameters()[0]
l1 = StepTerms([{**defaults, 'l1': 0.01}], decayed)
direct, n = 0.01 * sum(p.abs().sum() for p in decayed), sum(p.numel() for p in decayed)
# sums of n positive terms in another order: <= n roundings of the total
assert not l1.record and (l1.penalty(out) - direct).abs() <= n * torch.finfo(torch.float32).eps * direct
drop = StepTerms([{**defaults, 'item_dropout': 0.5}], decayed)
keep = drop.drawn_at(3, 'cpu')['item_keep']
assert keep.shape == (defaults['batch_size'], defaults['context_len'] + 1) and set(keep.unique().tolist()) == {0.0, 2.0}
assert torch.equal(keep, drop.drawn_at(3, 'cpu')['item_keep']) and not torch.equal(keep, drop.drawn_at(4, 'cpu')['item_keep'])
print('ok')
'''


def test_each_kind_has_a_recipe_that_applies_as_written_and_checks_its_key(tmp_path):
    repo = patched(tmp_path)
    proc = subprocess.run([sys.executable, '-c', UNIT], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-3000:]


@pytest.mark.slow
def test_each_recipe_acts_and_a_member_equals_its_solo_run(tmp_path):
    """Every member alike but for its levers (seed 0): a lever acts when its member differs from the first, and each
    member's numbers are its solo run's; the eval metric lands in every row; a lever is a grid axis."""
    repo = patched(tmp_path)
    members = [[], ['--l1=0.002'], ['--item_noise=0.3'], ['--weight_cap=1.0'],
               ['--item_dropout=0.3'], ['--shrink_every=10']]
    proc = run_in(repo, 'train.py', member_argv([[*m, f'--out_dir={tmp_path}/g{k}'] for k, m in enumerate(members)]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for k, member in enumerate(members):
        solo = run_in(repo, 'train.py', [*TINY, '--max_iters=40', *member, f'--out_dir={tmp_path}/s{k}'])
        assert solo.returncode == 0, solo.stderr[-2000:]
        assert_close(metrics(tmp_path / f'g{k}'), metrics(tmp_path / f's{k}'))
        assert all('icl_nll' in row for row in metrics(tmp_path / f'g{k}'))
        if k:
            assert metrics(tmp_path / f'g{k}') != metrics(tmp_path / 'g0'), member
    grid = subprocess.run([sys.executable, str(repo / 'grid.py'), f'--grid_dir={tmp_path}/grid', '--dry_run',
                           '--axes=item_dropout=0,0.1', '--seeds=0', '--classes=few'], capture_output=True, text=True,
                          cwd=repo, timeout=120)
    assert grid.returncode == 0 and '--item_dropout=0.1' in grid.stdout, grid.stdout + grid.stderr


def test_no_import_circle():
    """No module imports, at the top or inside a function, one that imports it back (through any chain): each file
    reads on its own, and a lever's room imports only what lies below it."""
    import ast
    import glob
    names = {os.path.basename(f)[:-3] for f in glob.glob(os.path.join(ROOT, '*.py'))}
    imports = {}
    for name in names:
        with open(os.path.join(ROOT, name + '.py')) as f:
            tree = ast.parse(f.read())
        imports[name] = ({n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
                         | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}) & names - {name}

    def reach(name, seen):
        for other in imports[name] - seen:
            seen.add(other)
            reach(other, seen)
        return seen
    assert [name for name in sorted(names) if name in reach(name, set())] == []
