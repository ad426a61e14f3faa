"""configurator.py: overrides, type checks and one-line errors with exit code 2."""
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

SCRIPT = textwrap.dedent("""
    import json, os
    lr = 0.001
    n_layer = 2
    compile = True
    out_dir = 'out'
    exec(open(os.path.join(%r, 'configurator.py')).read())
    print('RESULT', json.dumps({'lr': lr, 'n_layer': n_layer, 'compile': compile, 'out_dir': out_dir}))
""" % ROOT)


def run(tmp_path, *args):
    script = tmp_path / 'script.py'
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=tmp_path)


def result(proc):
    import json
    line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT')][0]
    return json.loads(line[len('RESULT '):])


def test_overrides_from_file_and_command_line(tmp_path):
    (tmp_path / 'cfg.py').write_text("n_layer = 12\nlr = 3e-4\n")
    proc = run(tmp_path, 'cfg.py', '--lr=1', '--compile=False', '--out_dir=runs/7')
    assert proc.returncode == 0, proc.stderr
    got = result(proc)
    assert got == {'lr': 1.0, 'n_layer': 12, 'compile': False, 'out_dir': 'runs/7'}
    assert isinstance(got['lr'], float)


@pytest.mark.parametrize('args, expected', [
    (['--n_layers=3'], "unknown key 'n_layers'"),
    (['--n_layers=3'], 'did you mean n_layer'),
    (['--n_layer=2.5'], "key 'n_layer' (from command line) expects int, got float"),
    (['--compile=1'], "key 'compile' (from command line) expects bool, got int"),
    (['--n_layer=True'], 'expects int, got bool'),
    (['--lr=fast'], 'expects float, got str'),
    (['missing/cfg.py'], 'config file not found: missing/cfg.py'),
    (['--lr'], 'must look like --key=value'),
])
def test_user_errors_are_one_line_with_exit_code_2(tmp_path, args, expected):
    proc = run(tmp_path, *args)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_name_in_config_file_is_reported_with_the_file(tmp_path):
    (tmp_path / 'cfg.py').write_text("n_layer = 4\nweight_dekay = 0.1\n")
    proc = run(tmp_path, 'cfg.py')
    assert proc.returncode == 2
    assert "unknown key 'weight_dekay' (from cfg.py)" in proc.stderr


def test_wrong_type_in_config_file(tmp_path):
    (tmp_path / 'cfg.py').write_text("n_layer = '12'\n")
    proc = run(tmp_path, 'cfg.py')
    assert proc.returncode == 2 and "expects int, got str" in proc.stderr


def test_broken_config_file_is_a_user_error(tmp_path):
    (tmp_path / 'cfg.py').write_text("n_layer = = 3\n")
    proc = run(tmp_path, 'cfg.py')
    assert proc.returncode == 2 and 'could not run config file cfg.py' in proc.stderr
