"""grid.py's progress line after each finished cell: counts (a resumed grid counts the cells already done)
and the time left from the median cell time of this invocation, with the fake trainer of test_grid."""
import re

import pytest

from test_grid import calls, fake, grid, run_grid  # noqa: F401 (fixtures)

PROGRESS = re.compile(r'^grid: (\d+)/(\d+) done, (\d+) running, (\d+) failed, (.*)$', re.M)


def test_progress_line_counts_and_time_left(grid):
    result = {'done': ['a'] * 10, 'skipped': ['b'] * 2, 'busy': [], 'failed': [('c', 1, 'log')], 'interrupted': []}
    # 30 - 12 done - 1 failed = 17 cells left, 2 at a time: 9 rounds of the median cell time (120 s)
    assert grid.progress_line(result, 30, 2, [60, 120, 600], 2) == 'grid: 12/30 done, 2 running, 1 failed, ~18 min left'
    assert grid.progress_line(result, 30, 2, [], 2).endswith('1 failed, time left unknown')
    assert grid.progress_line(result, 13, 0, [10.0], 1) == 'grid: 12/13 done, 0 running, 1 failed, none left'
    assert grid.progress_line(result, 14, 1, [10.0], 4).endswith('~10 s left')


@pytest.mark.slow
def test_grid_prints_progress_after_each_cell_and_counts_finished_ones(fake):
    proc = run_grid(fake, '--jobs=1', env={'FAKE_FAIL': 'few_wd0_s0'})       # the first cell fails
    lines = PROGRESS.findall(proc.stdout)
    assert len(lines) == 8 and calls(fake)[0] == 'few_wd0_s0', proc.stdout
    assert lines[0] == ('0', '8', '0', '1', 'time left unknown')            # no cell finished yet
    assert lines[1][:4] == ('1', '8', '0', '1') and re.fullmatch(r'~\d+ s left', lines[1][4])
    assert lines[-1] == ('7', '8', '0', '1', 'none left')
    proc = run_grid(fake, '--jobs=1')                                        # resumed: 7 already done
    assert PROGRESS.findall(proc.stdout) == [('8', '8', '0', '0', 'none left')]
