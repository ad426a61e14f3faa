"""README's "now hack it" penalties, applied as README writes them (its <!-- patch:NAME --> blocks, so they cannot
rot): L1 on the decayed weights, the query's attention entropy and L2 on the MLPs' hidden activations are each a
train.py global, a check and a StepTerms term of the forward's record, and work solo, per group member (= its solo
run) and as a grid axis."""
import os
import re
import subprocess
import sys
import textwrap
import types

import pytest
import torch

from conftest import ROOT
from test_group import assert_close, insert_lines, member_argv, patched_repo, run_in
from test_train import TINY, metrics

SNIPPETS = ('l1', 'attn_entropy', 'act_l2')
# where the lines under a snippet's '# <place>' comment go: (file, the line they follow, their indent)
PLACES = {'train.py': ('train.py', 'l2 = ', ''),
          'training.check_config': ('training.py', '    check_data_config(config)', '    '),
          'training.StepTerms.__init__': ('training.py', 'l2_penalty(decayed, l2, self.member_shape))', '        ')}


def readme_patches(*names):
    """{file: [(anchor, lines inserted after the line holding it)]} for README's snippets `names`."""
    with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    patches = {}
    for name in names:
        block = re.search(rf'<!-- patch:{name} -->\s*```python\n(.*?)```', readme, re.S)
        assert block, f"README.md has no python block after <!-- patch:{name} -->"
        for place, lines in re.findall(r'^# (\S+)\n(.*?)(?=^# |\Z)', textwrap.dedent(block.group(1)), re.S | re.M):
            file, anchor, indent = PLACES[place]
            patches.setdefault(file, []).append((anchor, textwrap.indent(lines, indent)))
    return patches


def patched_text(name, patches):
    with open(os.path.join(ROOT, name)) as f:
        return insert_lines(f.read(), patches[name])


@pytest.fixture
def training(tmp_path, monkeypatch):
    """training.py with README's penalties, as a module whose train.py defaults are the patched train.py's."""
    import checkpoint
    patches = readme_patches(*SNIPPETS)
    (tmp_path / 'train.py').write_text(patched_text('train.py', patches))
    monkeypatch.setattr(checkpoint, 'HERE', str(tmp_path))   # train_defaults reads tmp_path/train.py
    module = types.ModuleType('training')
    module.__file__ = os.path.join(ROOT, 'training.py')
    exec(compile(patched_text('training.py', patches), 'training.py', 'exec'), module.__dict__)
    return module


def test_the_snippets_apply_as_written_check_their_keys_and_act(training):
    from model import ICLTransformer, ModelConfig
    defaults = training.train_defaults()
    for key in SNIPPETS:
        with pytest.raises(ValueError, match=f'{key}=-1.0 must be >= 0'):
            training.check_config({**defaults, key: -1.0})
    # a config without the new keys (tests/test_l2.py builds one) reads their defaults: no term, no KeyError
    assert training.StepTerms([{'batch_size': 8, 'grad_clip': 0.0, 'l2': 0.0}], []).terms == []
    model = ICLTransformer(ModelConfig(n_labels=16, item_shape=(8,), n_layer=2, n_head=2, n_embd=16))
    out = model(torch.randn(4, 9, 8), torch.randint(0, 16, (4, 9)), record=('attention', 'mlp_hidden'))
    decayed = model.decayed_parameters()[0]
    l1 = training.StepTerms([{**defaults, 'l1': 0.01}], decayed)
    assert not l1.record and torch.allclose(l1.penalty(out), 0.01 * sum(p.abs().sum() for p in decayed))
    entropy = training.StepTerms([{**defaults, 'attn_entropy': 0.5}], decayed)
    assert entropy.record == {'attention'} and 0 < entropy.penalty(out) < 0.5 * 2 * torch.log(torch.tensor(17.0))
    act = training.StepTerms([{**defaults, 'act_l2': 0.1}], decayed)
    assert act.record == {'mlp_hidden'} and len(out['mlp_hidden']) == 2  # one [B, S, 4C] per layer
    assert torch.allclose(act.penalty(out), 0.1 * sum(h.pow(2).mean() for h in out['mlp_hidden']))


@pytest.mark.slow
def test_readme_penalties_work_solo_in_a_group_and_as_a_grid_axis(tmp_path):
    repo = patched_repo(tmp_path, readme_patches(*SNIPPETS))
    members = [['--seed=0', '--l1=0.002', f'--out_dir={tmp_path}/g0'], ['--seed=1', f'--out_dir={tmp_path}/g1'],
               ['--seed=2', '--l1=0.01', '--decay_modules=mlp', '--attn_entropy=0.05', f'--out_dir={tmp_path}/g2'],
               ['--seed=3', '--attn_entropy=0.2', '--act_l2=0.5', f'--out_dir={tmp_path}/g3']]
    proc = run_in(repo, 'train.py', member_argv(members))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for k, member in enumerate(members):
        solo = run_in(repo, 'train.py', [*TINY, '--max_iters=40', *member[:-1], f'--out_dir={tmp_path}/s{k}'])
        assert solo.returncode == 0, solo.stderr[-2000:]
        assert_close(metrics(tmp_path / f'g{k}'), metrics(tmp_path / f's{k}'))
    assert metrics(tmp_path / 'g0')[-1]['weight_norm'] < metrics(tmp_path / 'g1')[-1]['weight_norm'] - 0.05  # it acts
    assert metrics(tmp_path / 'g3') != metrics(tmp_path / 'g1')
    grid = subprocess.run([sys.executable, str(repo / 'grid.py'), f'--grid_dir={tmp_path}/grid', '--dry_run',
                           '--axes=attn_entropy=0,0.05', '--seeds=0', '--classes=few'], capture_output=True, text=True,
                          cwd=repo, timeout=120)
    assert grid.returncode == 0 and '--attn_entropy=0.05' in grid.stdout, grid.stdout + grid.stderr
