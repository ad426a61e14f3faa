"""A committed cell reruns bit for bit from its recorded settings: tests/data/reference_cell holds the metrics of a
short run and what its numbers depend on (torch version, device, CPU threads). RESULTS.md's promise that a grid
cell rerun with its recorded torch and threads repeats its numbers rests on this."""
import json
import os
import shlex
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, 'tests', 'data', 'reference_cell')


def rows(path):
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k != 'wall_s'} for line in f if line.strip()]


@pytest.mark.slow
def test_the_reference_cell_reruns_bit_for_bit_with_its_recorded_settings(tmp_path):
    recorded = json.load(open(os.path.join(REF, 'summary.json')))
    if torch.__version__ != recorded['torch_version']:
        pytest.skip(f"recorded with torch {recorded['torch_version']}, this is {torch.__version__}: only the seed "
                    f"spread is promised across torch versions")
    env_part, *cmd = shlex.split(recorded['command'])
    assert env_part == f"OMP_NUM_THREADS={recorded['threads']}" and cmd[:2] == ['python', 'train.py']
    env = {**os.environ, 'OMP_NUM_THREADS': str(recorded['threads']), 'MKL_NUM_THREADS': str(recorded['threads'])}
    subprocess.run([sys.executable, *cmd[1:], f'--out_dir={tmp_path / "cell"}'], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    summary = json.load(open(tmp_path / 'cell' / 'summary.json'))
    assert summary['threads'] == recorded['threads'] and summary['torch_version'] == recorded['torch_version']
    assert rows(tmp_path / 'cell' / 'metrics.jsonl') == rows(os.path.join(REF, 'metrics.jsonl'))
