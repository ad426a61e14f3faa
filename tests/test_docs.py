"""The documentation cannot drift: README.md / RESULTS.md's results blocks equal what scripts/results_table.py
generates from the report files committed under assets/results/ ('pending' where there are none), the README
stays under 16 KiB and RESULTS under 39 KiB, every `python ...` command in the README names a file that exists, CI
runs the README's full-suite command, the resume rule lists exactly training.RESUMABLE_KEYS, and links and figures
resolve."""
import importlib.util
import json
import os
import re

import pytest

from conftest import ROOT

README = os.path.join(ROOT, 'README.md')
RESULTS = os.path.join(ROOT, 'RESULTS.md')
IMAGE = re.compile(r'!\[[^\]]*\]\(([^)]+)\)')  # a markdown image's path


def _load_script(name='results_table'):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rt = _load_script()


def read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


# ---- the committed documents -----------------------------------------------------------------------

@pytest.mark.parametrize('doc, limit, where', [(README, 16384, 'RESULTS.md'),
                                               (RESULTS, 39936, 'the report a number comes from')])
def test_a_document_stays_under_its_size_limit(doc, limit, where):
    size = os.path.getsize(doc)
    assert size <= limit, f"{os.path.basename(doc)} is {size} bytes (limit {limit}); move detail into {where}"


@pytest.mark.parametrize('doc, names', [(README, {'summary'}), (RESULTS, {'posed', 'posed_omniglot', 'levers', 'omniglot_levers3',
                                                                         'omniglot_swap_five_long', 'levers_emergence'})])
def test_results_blocks_equal_the_report_files(doc, names):
    text = read(doc)
    blocks = rt.blocks_in(text)
    assert names <= set(blocks), f"{os.path.basename(doc)} lacks the blocks {names - set(blocks)}"
    for name, content in blocks.items():
        expected = rt.block(name)
        assert content == expected, (f"{os.path.basename(doc)}'s results:{name} block differs from the report files "
                                     f"in assets/results/; run python scripts/results_table.py --write")
        if not os.path.isdir(os.path.join(ROOT, 'assets', 'results', name)) and name != 'summary':
            assert content.startswith('pending'), name  # no report files: the block says so
    assert rt.render(text) == text


def _python_commands(text):
    """(line, [tokens]) of every `python ...` command in the text: code-block lines and inline code spans."""
    commands = []
    for line in text.splitlines():
        for m in re.finditer(r'(?:^|`)\s*(?:OMP_NUM_THREADS=\d+\s+)?python\s+([^`#\n]*)', line):
            commands.append((line, m.group(1).split()))
    return commands


def test_every_python_command_in_the_readme_names_a_file_that_exists():
    commands = _python_commands(read(README))
    assert len(commands) > 10
    for line, tokens in commands:
        assert tokens, line
        if tokens[0] == '-m':
            continue  # python -m pytest ...
        assert os.path.isfile(os.path.join(ROOT, tokens[0])), f"no file {tokens[0]} (README: {line.strip()})"
        for t in tokens[1:]:
            if t.startswith('-') or '<' in t:
                continue
            if t.endswith(('.py', '.sh')) or t.startswith(('config/', 'scripts/')):
                assert os.path.isfile(os.path.join(ROOT, t)), f"no file {t} (README: {line.strip()})"
    for script in re.findall(r'bash\s+(\S+\.sh)', read(README)):
        assert os.path.isfile(os.path.join(ROOT, script)), script


def test_ci_runs_the_full_suite_command_the_readme_shows():
    readme = read(README)
    full = 'python -m pytest -q tests'
    assert re.search(r'^python -m pytest -q tests\s+# the full suite', readme, re.M)
    assert 'python -m pytest -q -m "not slow" tests' in readme
    ci = [line.strip() for line in read(os.path.join(ROOT, '.ci', 'run')).splitlines()]
    assert full in ci


def test_the_resume_rule_lists_exactly_the_resumable_keys():
    from training import RESUMABLE_KEYS
    text = ' '.join(read(README).split())
    m = re.search(r'On resume only (.*?) may change \(training\.RESUMABLE_KEYS\)', text)
    assert m, "README's resume rule ('On resume only ... may change (training.RESUMABLE_KEYS)') is gone"
    assert set(re.findall(r'`([a-z_]+)`', m.group(1))) == set(RESUMABLE_KEYS)


def _anchor(heading):
    text = heading.strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def test_a_grid_that_continues_another_comes_after_it_in_the_index():
    """scripts/all_grids.sh runs index.json's commands in order: a grid whose config sets extend_from must follow
    the entry whose grid folder it continues, or a fresh clone reruns that grid's first steps from 0."""
    order = {r['out'].rstrip('/'): i for i, r in enumerate(rt.RESULTS) if r.get('out')}
    continuing = 0
    for entry in [r for r in rt.RESULTS if r.get('command')]:
        for config in entry['command'].split()[2:]:
            source = re.search(r"^extend_from = '([^']+)'", read(os.path.join(ROOT, config)), re.M)
            if source:
                continuing += 1
                assert source.group(1) in order, f"{config} continues {source.group(1)}, which no index entry makes"
                assert order[source.group(1)] < order[entry['out'].rstrip('/')], (
                    f"{entry['report']} continues {source.group(1)} but comes before it in index.json")
    assert continuing >= 3  # the three continued Omniglot grids were looked at


def test_links_to_results_sections_and_figures_resolve():
    anchors = {_anchor(h) for h in re.findall(r'^#+ (.*)$', read(RESULTS), re.M)}
    for doc in (README, RESULTS):
        text = read(doc)
        for anchor in re.findall(r'RESULTS\.md#([\w\-]+)', text):
            assert anchor in anchors, f"{os.path.basename(doc)} links to RESULTS.md#{anchor}, which is no heading"
        for image in IMAGE.findall(text):
            assert os.path.isfile(os.path.join(ROOT, image)), f"{os.path.basename(doc)} shows a missing {image}"
    reports = os.path.join(ROOT, 'assets', 'results')
    for name in os.listdir(reports):  # a committed report shows only figures committed beside it
        for md in ('phase.md', 'report.md'):
            path = os.path.join(reports, name, md)
            for image in IMAGE.findall(read(path)) if os.path.isfile(path) else []:
                assert os.path.isfile(os.path.join(reports, name, image)), f"{name}/{md} shows a missing {image}"
    results = read(RESULTS)
    for png in os.listdir(os.path.join(ROOT, 'assets')):
        if png.endswith('.png'):
            assert f'assets/{png}' in results, f"assets/{png} is not described in RESULTS.md"


def test_results_is_by_question_and_the_answer_comes_first():
    headings = re.findall(r'^## (.*)$', read(RESULTS), re.M)
    assert headings[:2] == ['The answer', 'The experiment as posed'], headings
    for want in ('What can replace rare classes', 'Over time', 'Mechanism', 'Methods', 'Reproducing'):
        assert want in headings, want
    first_screen = read(README)[:3000]
    for must in ('as posed', 'chance-corrected', 'seeds 0, 1, 2', 'CPU', 'paper scale'):
        assert must in first_screen, f"README's first screen does not say {must!r}"


USER_FILES = ([README, RESULTS, os.path.join(ROOT, 'assets', 'results', 'README.md')]
              + [os.path.join(ROOT, 'config', f) for f in os.listdir(os.path.join(ROOT, 'config'))]
              + [os.path.join(ROOT, 'assets', 'results', d, f) for d in os.listdir(os.path.join(ROOT, 'assets', 'results'))
                 if os.path.isdir(os.path.join(ROOT, 'assets', 'results', d))
                 for f in os.listdir(os.path.join(ROOT, 'assets', 'results', d)) if f.endswith('.md')])


@pytest.mark.parametrize('path', USER_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_user_facing_files_name_no_work_items_commits_or_machine_paths(path):
    text = read(path)
    assert not re.search(r'\bissues? ?#?\d+', text, re.I), f"{os.path.relpath(path, ROOT)} names a work item"
    assert not re.search(r'(^|[\s(`])/(work|root|home|tmp)/', text, re.M), f"{os.path.relpath(path, ROOT)} holds a machine path"
    text = re.sub(r'^Numerics: .*$', '', text, flags=re.M)  # a report's provenance line names its code commit
    assert not re.search(r'\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b', text), \
        f"{os.path.relpath(path, ROOT)} cites a commit hash"
    for script in os.listdir(os.path.join(ROOT, 'scripts')):
        assert not re.search(r'issue\d', script), script


def _report_numbers():
    """Every number in the committed report files, as it would print at 2 and 3 decimals."""
    found = set()
    base = os.path.join(ROOT, 'assets', 'results')
    for d, _, files in os.walk(base):
        for f in files:
            if f.endswith(('.md', '.json')):
                for x in re.findall(r'-?\d+\.\d+|-?\d+', read(os.path.join(d, f))):
                    v = float(x)
                    found |= {f"{v:.2f}", f"{v:.3f}", x}
    return found


def test_every_decimal_in_the_results_prose_is_a_report_files_number():
    """A number RESULTS.md's prose quotes (0.xx, 0.xxx) is one that a committed report holds (to the digits shown);
    generated blocks are checked against the files by the test above, code blocks are quoted command output."""
    text = rt.MARKER.sub('', read(RESULTS))
    text = re.sub(r'```.*?```', '', text, flags=re.S)
    known = _report_numbers()
    stray = sorted({x for x in re.findall(r'(?<![\d.])[01]\.\d{2,3}(?![\d])', text) if x not in known})
    assert not stray, f"RESULTS.md quotes numbers no committed report holds: {stray}"


# ---- the script on report files the real writers make ----------------------------------------------

def _cell(root, name, cls, icl, iwl, attn=0.8, setting=None, n_labels=32):
    setting = setting or {}
    d = root / name
    d.mkdir(parents=True)
    wd = setting.get('weight_decay', 0.0)
    (d / 'cell.json').write_text(json.dumps({'name': name, 'classes': cls, 'weight_decay': wd, 'l2': 0.0,
                                             'setting': setting, 'regularizer': name.split('_')[1], 'seed': 0,
                                             'width': ''}))
    rows = [{'iter': 100 * i, 'icl_acc': a, 'iwl_acc': b, 'ece': 0.05, 'attn_match_image': 0.1,
             'attn_match_label': attn * a} for i, (a, b) in enumerate(zip(icl, iwl))]
    (d / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    config = {'learning_rate': 1e-3, 'warmup_iters': 0, 'max_iters': 100 * (len(rows) - 1), 'lr_schedule': 'constant',
              'min_lr': 0.0, 'weight_decay': wd, 'seed': 0, 'dataset': 'synthetic', 'data_seed': 0,
              'n_labels': n_labels, 'label_mode': 'shared', 'batch_size': 64, 'context_len': 8, 'n_layer': 2,
              'n_train_classes': 16000 if cls == 'many' else 100 if cls == 'few' else int(cls[1:]),
              'label_swap_to': 'train'}  # a run of today's code (one without the key reads as swap_to=all)
    (d / 'summary.json').write_text(json.dumps({'config': config, 'wall_s': 1800.0, 'final_iter': config['max_iters'],
                                                'git_commit': 'abc123', 'torch_version': '2.14.1', 'device': 'cpu',
                                                'threads': 1, 'cpu_capability': 'AVX2', 'cpu_model': 'a CPU'}))


def _phase_grid(root):
    import report
    from phase import write_phase_report
    peaks = {'wd0': {100: 0.5, 400: 0.6, 1600: 0.95}, 'swap0.8': {100: 0.9, 400: 0.97, 1600: 0.99}}
    for reg, by_count in peaks.items():
        for n, peak in by_count.items():
            _cell(root, f'c{n}_{reg}_s0', f'c{n}', [0.5, peak, peak, peak, peak - 0.05],
                  [0.0, 0.5, 0.5, 0.5, 1.0 if n == 100 else 0.1],
                  setting={'label_swap': 0.8} if reg == 'swap0.8' else {})
    cells = report.load_cells(str(root))
    for c in cells:
        c['stats'] = report.run_stats(c['rows'], c['summary']['config'])
    write_phase_report(str(root), cells, threshold=0.8)


def test_phase_report_files_make_the_block_and_the_summary_row(tmp_path):
    grid_dir, repo = tmp_path / 'out_levers', tmp_path / 'repo'
    _phase_grid(grid_dir)
    assert rt.load('levers', str(repo)) is None
    assert rt.result_block('levers', str(repo)).startswith('pending')
    assert '| `python grid.py config/grid_levers.py` | pending | pending |' in rt.summary_block(str(repo))

    copied = rt.collect('levers', str(grid_dir), str(repo))
    assert {'phase.json', 'phase.md', 'cells.json'} <= set(copied)
    cells = json.loads((repo / 'assets' / 'results' / 'levers' / 'cells.json').read_text())
    final = {c['cell']: c['final'] for c in cells}['c400_swap0.8_s0']  # the last eval row's numbers, per cell
    assert final['iter'] == 400 and abs(final['icl_acc'] - 0.92) < 1e-9 and final['iwl_acc'] == 0.1
    data = json.loads((repo / 'assets' / 'results' / 'levers' / 'phase.json').read_text())
    assert data['first_class_count'] == {'wd0': 1600, 'swap0.8': 100}
    text = rt.result_block('levers', str(repo))
    assert '| regulariser | lr·wd·steps | ICL ≥ 0.8 from | 100 | 400 | 1600 |' in text
    assert '| none | - | 1600 | 0.50° / 1.00 | 0.60 / 0.10 | 0.95 / 0.10 |' in text  # ° = no learning
    assert '| swap=0.8 | - | 100 | 0.90 / 1.00 | 0.97 / 0.10 | 0.99 / 0.10 |' in text
    assert 'From `assets/results/levers/` (6 cells, 3.0 h summed; interim: fewer than 3 seeds in some cell)' in text
    assert '(assets/results/levers/emergence.png)' in text and 'phase.png' not in text  # one figure a block
    row = [r for r in rt.summary_block(str(repo)).splitlines() if 'config/grid_levers.py' in r][0]
    assert re.search(r"\| 6 cells, 3\.0 h \(interim\) \| posed (MET|NOT MET) \(swap=0\.8: "
                     r"0\.\d\d\); corrected (SUPPORTED|INCONCLUSIVE|NOT SUPPORTED) \(0\.\d\d\); ICL ≥ 0\.8 at fewer "
                     r"classes with swap=0\.8 \(100\); none: 1600 \|", row), row

    # a number in a document that is not the report file's is caught, and --write puts it back
    doc = f"x\n<!-- results:levers begin -->\n{text.replace('0.97 / 0.10', '0.98 / 0.10')}<!-- results:levers end -->\n"
    assert rt.render(doc, str(repo)) != doc
    assert rt.render(rt.render(doc, str(repo)), str(repo)) == rt.render(doc, str(repo))
    assert '0.97 / 0.10' in rt.render(doc, str(repo))


def test_report_files_that_disagree_are_an_error(tmp_path):
    grid_dir, repo = tmp_path / 'g', tmp_path / 'repo'
    _phase_grid(grid_dir)
    rt.collect('levers', str(grid_dir), str(repo))
    path = repo / 'assets' / 'results' / 'levers' / 'phase.json'
    data = json.loads(path.read_text())
    data['first_class_count']['wd0'] = 400
    path.write_text(json.dumps(data))
    with pytest.raises(rt.ReportError, match='appears at 1600 in phase.md, 400 in phase.json'):
        rt.result_block('levers', str(repo))


def test_verdict_report_files_make_the_block_and_the_summary_row(tmp_path):
    import report
    grid_dir, repo = tmp_path / 'out_omniglot_levers3', tmp_path / 'repo'
    _cell(grid_dir, 'many_wd0_s0', 'many', [0.5, 0.9, 0.9, 0.9, 0.88], [0.0, 0.02, 0.02, 0.02, 0.03], n_labels=1623)
    _cell(grid_dir, 'few_wd0_s0', 'few', [0.5, 0.52, 0.52, 0.52, 0.5], [0.1, 0.9, 0.9, 0.9, 1.0], n_labels=1623)
    _cell(grid_dir, 'few_swap0.8_s0', 'few', [0.5, 0.7, 0.7, 0.7, 0.68], [0.1, 0.3, 0.3, 0.3, 0.2],
          setting={'label_swap': 0.8},
          n_labels=1623)
    verdicts = report.write_report(str(grid_dir))
    rt.collect('omniglot_levers3', str(grid_dir), str(repo))
    text = rt.result_block('omniglot_levers3', str(repo))
    best = verdicts[0]['best']
    assert (f"**Verdict**: as posed {verdicts[0]['posed']['verdict']} (best swap=0.8: {verdicts[0]['posed']['ratio']:.2f} "
            f"of Many's peak); chance-corrected {verdicts[0]['verdict']} (best swap=0.8: {best['corrected']:.2f} of the "
            f"gain, interval [{best['corrected_lo']:.2f}, {best['corrected_hi']:.2f}]).") in text  # posed rule first
    assert re.search(r'^\| swap=0\.8 \| 0 \| 0\.700 \[0\.700-0\.700\] \| 0\.200 \| - \| - \|$', text, re.M), text
    assert "IWL's chance 1/1623." in text
    row = [r for r in rt.summary_block(str(repo)).splitlines() if 'grid_omniglot_levers.py' in r][0]
    assert f"posed {verdicts[0]['posed']['verdict']} (swap=0.8: " in row  # the lever best under both rules, named once
    assert f"corrected {verdicts[0]['verdict']} ({best['corrected']:.2f})" in row
    assert '| 3 cells, 1.5 h (interim) |' in row
    assert '1.5 h summed; interim: fewer than 3 seeds in some cell).' in text
    assert 'interim' not in rt.block('posed')  # a finished grid's block does not say it


def test_a_ratio_that_misses_the_bar_never_prints_as_the_bar():
    """0.896 is NOT MET: at 2 decimals it would read 0.90, the bar it misses, so it prints at 3."""
    assert [rt.peak_text(x, 0.9) for x in (0.8957, 0.8949, 0.92, 0.9, 0.52)] == ['0.896', '0.89', '0.92', '0.90', '0.52']
    v = {'posed': {'verdict': 'NOT MET', 'best': 'swap=0.8', 'ratio': 0.8957}, 'verdict': 'NOT SUPPORTED',
         'best': {'regularizer': 'swap=0.8', 'corrected': 0.762}, 'n_levers': 1}
    assert rt.rules_text(v, short=True) == 'posed NOT MET (swap=0.8: 0.896); corrected NOT SUPPORTED (0.76)'


# ---- provenance and one peak definition ---------------------------------------------------------------

def test_a_reports_numerics_line_names_what_it_depends_on_and_what_it_lacks():
    """report.numerics_line writes, and results_table reads back, the code commit, torch, device, threads and CPU
    capability; a key a cell did not record is named as missing."""
    from report import numerics_line
    full = {'git_commit': 'abc123', 'torch_version': '2.14.1+cu130', 'device': 'cpu', 'threads': 1,
            'cpu_capability': 'AVX2', 'cpu_model': 'AMD EPYC'}
    assert rt.provenance_missing({'md': numerics_line([full, {**full, 'threads': 2}])}) == []
    older = {k: v for k, v in full.items() if k not in ('git_commit', 'cpu_capability')}
    assert rt.provenance_missing({'md': numerics_line([full, older])}) == ['commit', 'CPU capability']
    assert rt.provenance_missing({'md': 'no numerics line'}) == list(rt.PROVENANCE.values())


def test_every_report_records_its_provenance():
    """Every committed report records the code commit, torch version, device, threads and CPU capability its cells
    ran with (a report that lacks one: rerun its grid and --collect it)."""
    reports = [rt.load(r['report']) for r in rt.RESULTS if r.get('report')]
    lacking = {report['name']: rt.provenance_missing(report) for report in reports if report is not None}
    assert len(lacking) >= 10 and not any(lacking.values()), {k: v for k, v in lacking.items() if v}


def test_a_run_on_changed_code_is_named_from_its_commit_or_its_changed_files():
    """A '-dirty' commit, or a Python file recorded as changed (training.code_state), marks a report as resting on
    uncommitted code; a clean commit with no changes, or changes outside the code, does not."""
    from report import numerics_line
    clean = {'git_commit': 'a' * 40, 'code_changes': [], 'torch_version': '2.14.1', 'device': 'cpu', 'threads': 1,
             'cpu_capability': 'AVX2', 'cpu_model': 'AMD EPYC'}
    assert rt.ran_on_changed_code({'md': numerics_line([clean])}) == []
    assert rt.ran_on_changed_code({'md': numerics_line([clean, {**clean, 'code_changes': ['README.md']}])}) == []
    assert rt.provenance_missing({'md': numerics_line([clean, {**clean, 'code_changes': None}])}) == []
    dirty = {**clean, 'git_commit': 'b' * 40 + '-dirty', 'code_changes': ['training.py']}
    assert rt.ran_on_changed_code({'md': numerics_line([clean, dirty])}) == ['b' * 40 + '-dirty', 'training.py']
    older = {k: v for k, v in dirty.items() if k != 'code_changes'}   # before the files were recorded: the commit
    assert rt.ran_on_changed_code({'md': numerics_line([older])}) == ['b' * 40 + '-dirty']


def test_a_cell_run_in_parts_counts_every_recorded_part_in_its_reports_numerics():
    """A cell continued on clean code after a first part on changed code and another thread count (training.
    numerics_segments): the report names both commits and thread counts and still flags the changed code; a part
    from before the record is said to be unrecorded without making the report lack provenance."""
    from report import numerics_line
    clean = {'git_commit': 'a' * 40, 'code_changes': [], 'torch_version': '2.14.1', 'device': 'cpu', 'threads': 1,
             'cpu_capability': 'AVX2', 'cpu_model': 'AMD EPYC'}
    first = {**clean, 'git_commit': 'b' * 40 + '-dirty', 'code_changes': ['training.py'], 'threads': 2}
    cell = {**clean, 'numerics_segments': [{'from_iter': 0, **first}, {'from_iter': 10000, **clean}]}
    line = numerics_line([cell, {**clean, 'numerics_segments': [{'from_iter': 0, **clean}]}])
    assert 'code ' + 'a' * 40 + ', ' + 'b' * 40 + '-dirty' in line and 'CPU threads per cell 1, 2' in line
    assert rt.ran_on_changed_code({'md': line}) == ['b' * 40 + '-dirty', 'training.py']
    assert '1 of 2 cells were resumed under other numerics' in line and rt.provenance_missing({'md': line}) == []
    resumed = {**clean, 'numerics_segments': [{'from_iter': 0, 'numerics': 'not recorded'}, {'from_iter': 500, **clean}]}
    line = numerics_line([resumed])
    assert rt.provenance_missing({'md': line}) == [] and rt.ran_on_changed_code({'md': line}) == []
    assert '1 of 1 cells were resumed under other numerics than they started with, or from a checkpoint older than ' \
           'this record (1, whose earlier parts are not recorded)' in line


# Reports some of whose cells ran with uncommitted changes to tracked Python files (recorded only as '-dirty', before
# runs named the changed files): each grid is to be rerun from committed code and --collected, and its name dropped.
RAN_ON_CHANGED_CODE = set()


def test_every_grid_is_counted_in_a_family_and_results_gives_each_size():
    """The "some lever" claim pays for every lever tried on its scale: each config/grid_*.py is counted in
    scripts/family.py's FAMILIES or listed there as having no Few lever, and RESULTS' methods give each family's size."""
    import glob
    family = _load_script('family')
    counted = [name.split()[0].removesuffix('.py') for grids in family.FAMILIES.values() for name in grids]
    configs = {os.path.basename(f)[:-3] for f in glob.glob(os.path.join(ROOT, 'config', 'grid*.py'))}
    assert configs - set(counted) - set(family.NO_FEW_LEVER) == set(), "grid configs in no family"
    assert set(family.NO_FEW_LEVER) <= configs and not set(family.NO_FEW_LEVER) & set(counted)
    sizes = re.search(r"`python scripts/family.py`: ([^)]*)\)", read('RESULTS.md')).group(1)
    assert [int(n) for n in re.findall(r'\b(\d+) (?:on|and|at)\b', sizes)] == \
        [sum(grids.values()) for grids in family.FAMILIES.values()], sizes


def test_no_report_rests_on_uncommitted_code_but_those_awaiting_their_rerun():
    """Every committed report ran committed code, except the listed ones, whose text says they are to be rerun; a
    listed report that has been rerun clean must leave the list."""
    reports = [rt.load(r['report']) for r in rt.RESULTS if r.get('report')]
    changed = {report['name'] for report in reports if report is not None and rt.ran_on_changed_code(report)}
    assert changed == RAN_ON_CHANGED_CODE, (f"ran on uncommitted code, not listed: {changed - RAN_ON_CHANGED_CODE}; "
                                            f"listed, now clean: {RAN_ON_CHANGED_CODE - changed}")


def test_every_report_and_row_uses_the_3_eval_peak():
    """Both rules and every table on the 3-eval peak: each committed phase.json says its window is 3, each verdict
    states the posed rule it was judged on, and every Few/Many row and block gives a judged chance-corrected verdict;
    a report from before that rule is refused, not recomputed."""
    judged = 0
    for entry in [r for r in rt.RESULTS if r.get('report')]:
        report = rt.load(entry['report'])
        if report is None:
            continue
        if report['kind'] == 'phase':
            assert report['phase']['peak_window'] == 3, entry['report']
        assert all(v.get('posed') for v in report['verdicts']), entry['report']
        texts = [rt.block(entry['report'])] + [line for line in rt.block('summary').splitlines()
                                               if line.startswith(f"| [{entry['title']}]")] if report['verdicts'] else []
        for text in texts:
            assert re.search(r'corrected(?: \([^)]*\))?\W{0,4}(SUPPORTED|INCONCLUSIVE|NOT SUPPORTED)', text), text[:200]
            judged += 1
    assert judged >= 10  # every Few/Many verdict block and row was looked at


def test_a_report_from_before_the_3_eval_rule_is_refused(tmp_path):
    folder = tmp_path / 'assets' / 'results' / 'levers'
    folder.mkdir(parents=True)
    (folder / 'phase.json').write_text(json.dumps({'threshold': 0.8, 'first_class_count': {}, 'table': []}))
    (folder / 'phase.md').write_text('| regulariser |\n|---|\n')
    with pytest.raises(rt.ReportError, match='predates the 3-eval peak rule'):
        rt.load('levers', str(tmp_path))
    (folder / 'phase.json').unlink()
    (folder / 'report.md').write_text('best mean of 3 consecutive evals')
    (folder / 'verdict.json').write_text(json.dumps([{'verdict': 'SUPPORTED', 'candidates': []}]))  # no 'posed'
    with pytest.raises(rt.ReportError, match='predates the 3-eval peak rule'):
        rt.load('levers', str(tmp_path))
    (folder / 'verdict.json').write_text(json.dumps([{'verdict': 'SUPPORTED', 'candidates': [], 'posed': {'verdict': 'MET'}}]))
    assert rt.load('levers', str(tmp_path))['kind'] == 'verdict'


def test_a_decay_axis_of_three_strengths_gets_the_dose_response_figure_and_table(tmp_path):
    """write_report on Few/Many x three decays: dose_response.png, and a table row per exponent with Few's and Many's
    numbers and Few's verdict under both rules (exponent = wd x sum of lr: 400 steps at lr 1e-3 = 0.4 x wd)."""
    import report
    for wd in (0.0, 1.0, 10.0):
        setting = {'weight_decay': wd} if wd else {}
        _cell(tmp_path, f"many_wd{wd:g}_s0", 'many', [0.5, 0.9, 0.9, 0.9, 0.88], [0.0, 0.1, 0.1, 0.1, 0.2], setting=setting)
        _cell(tmp_path, f"few_wd{wd:g}_s0", 'few', [0.5, 0.5, 0.52, 0.5, 0.5], [0.1, 0.9, 0.9, 1.0, 1.0 - wd / 20],
              setting=setting)
    verdicts = report.write_report(str(tmp_path))
    text = (tmp_path / 'report.md').read_text()
    assert (tmp_path / 'dose_response.png').stat().st_size > 0 and '![dose-response](dose_response.png)' in text
    rows = [line for line in text.split('## Dose-response')[1].splitlines() if line.startswith('| - |')]
    assert [r.split(' | ')[1:3] for r in rows] == [['0', '0'], ['0.4', '1'], ['4', '10']]
    few_iwl = [float(r.split(' | ')[4]) for r in rows]
    assert few_iwl == [1.0, 0.95, 0.5]
    by_wd = {c['weight_decay']: c for c in verdicts[0]['candidates']}
    assert rows[2].endswith(f"| {by_wd[10.0]['posed']} ({by_wd[10.0]['ratio']:.3f}) | "
                            f"{by_wd[10.0]['verdict']} ({by_wd[10.0]['corrected']:.3f}) |")
