"""
Results tables that cannot drift from their report files.

README.md's summary table and RESULTS.md's per-result tables sit between markers

    <!-- results:NAME begin -->
    ...generated text...
    <!-- results:NAME end -->

and are generated here from the report files that grid.py / phase.py wrote, committed under
assets/results/<name>/ (phase.json + phase.md for a phase grid; report.md + verdict.json for a verdict grid;
cells.json, the cells' wall times and last evals, when --collect copied them in). tests/test_docs.py checks that every block
equals what this script generates, so a number in a block is always the report file's number.

    python scripts/results_table.py                          # print every block
    python scripts/results_table.py --write                  # rewrite the blocks in README.md and RESULTS.md
    python scripts/results_table.py --check                  # exit 1 if a block differs from the report files
    python scripts/results_table.py --collect levers out_levers   # copy a finished grid's report files into
                                                             # assets/results/levers/, then --write

Blocks: 'summary' (README.md: one row per result: question, scale, command, wall time, output folder, verdict)
and one per entry of RESULTS with a report (RESULTS.md: that grid's table). A result whose assets/results/<name>/
folder is missing (or incomplete) reads 'pending'. Results from before report files were committed (their out_*
folders are gone) are rows of recorded text below; their numbers are in RESULTS.md as recorded.
"""
import argparse
import json
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from phase import peak_text  # noqa: E402 (the repo's root is on the path only from here on)
DOCS = ('README.md', 'RESULTS.md')
ASSETS = os.path.join('assets', 'results')
REPORT_FILES = ('phase.json', 'phase.md', 'phase.png', 'phase_curves.png', 'emergence.png', 'report.md', 'verdict.json',
                'icl_vs_steps.png', 'peak_icl.png', 'attention.png', 'dose_response.png')
MARKER = re.compile(r'<!-- results:([a-z0-9_]+) begin -->\n(.*?)<!-- results:\1 end -->', re.S)

# One row of README's summary table per result, in order, each one command with all its seeds: title, anchor (its
# RESULTS.md section), report (the assets/results/<name>/ folder its numbers come from, and RESULTS.md's block of that
# name), question, scale, command, out (the grid folder), optionally seeds (those its config declares per cell, 3
# unless said: fewer finished in some cell marks the row interim), fading (a long run: peak -> final first) and
# summary (false: a RESULTS.md block only, no README row) and per_count (the row says peak -> final per cell).
with open(os.path.join(ROOT, ASSETS, 'index.json'), encoding='utf-8') as _f:
    RESULTS = json.load(_f)


class ReportError(ValueError):
    """The report files of a result are unreadable or disagree with each other."""


# ---- reading report files --------------------------------------------------------------------------

def md_table(text, first_header):
    """The rows (lists of cell strings) of the markdown table whose header's first cell is first_header,
    as {'header': [...], 'rows': [[...], ...]}; None when there is no such table."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = _cells(line)
        if cells and cells[0] == first_header and i + 1 < len(lines) and lines[i + 1].startswith('|---'):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith('|'):
                    break
                rows.append(_cells(row))
            return {'header': cells, 'rows': rows}
    return None


def _cells(line):
    if not line.startswith('|'):
        return None
    return [c.strip() for c in line.strip().strip('|').split('|')]


def _read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def load(name, root=ROOT):
    """The report files of assets/results/<name>/: {'kind': 'phase' | 'verdict', ...}, or None (pending). A report
    made before the 3-eval peak rule (a phase.json without 'peak_window', a verdict without 'posed') is refused:
    its peaks are single evals, so its grid is rerun, not its numbers recomputed."""
    folder = os.path.join(root, ASSETS, name)
    has = {f: os.path.isfile(os.path.join(folder, f)) for f in REPORT_FILES + ('cells.json',)}
    cells = json.loads(_read(os.path.join(folder, 'cells.json'))) if has['cells.json'] else None
    verdicts = json.loads(_read(os.path.join(folder, 'verdict.json'))) if has['verdict.json'] else []
    phase = json.loads(_read(os.path.join(folder, 'phase.json'))) if has['phase.json'] else {}
    if (has['phase.json'] and 'peak_window' not in phase) or any(not v.get('posed') for v in verdicts):
        raise ReportError(f"{folder} predates the 3-eval peak rule (phase.json without 'peak_window' or a verdict "
                          f"without 'posed'): rerun its grid, then --collect")
    if has['phase.json'] and has['phase.md']:
        return {'kind': 'phase', 'name': name, 'phase': phase, 'md': _read(os.path.join(folder, 'phase.md')),
                'cells': cells, 'figure': has['phase.png'], 'verdicts': verdicts}
    if has['report.md'] and has['verdict.json']:
        return {'kind': 'verdict', 'name': name, 'verdicts': verdicts,
                'md': _read(os.path.join(folder, 'report.md')), 'cells': cells, 'figure': has['icl_vs_steps.png']}
    return None


def phase_rows(report):
    """[(label, lr·wd·steps, first class count or None, {class count: entry})] in phase.md's order, numbers
    from phase.json; raises ReportError when phase.md and phase.json name different thresholds."""
    data = report['phase']
    table = md_table(report['md'], 'regulariser')
    if table is None:
        raise ReportError(f"{report['name']}: phase.md has no regulariser table")
    names = list(data['first_class_count'])
    if len(names) != len(table['rows']):
        raise ReportError(f"{report['name']}: phase.md has {len(table['rows'])} regularisers, phase.json {len(names)}")
    entries = {}
    for e in data['table']:
        entries.setdefault(e['regularizer'], {})[e['classes']] = e
    rows = []
    for name, md_row in zip(names, table['rows']):
        first = data['first_class_count'][name]
        if md_row[2] != ('never' if first is None else str(first)):
            raise ReportError(f"{report['name']}: {md_row[0]} appears at {md_row[2]} in phase.md, {first} in phase.json")
        rows.append((md_row[0], md_row[1], first, entries.get(name, {})))
    return rows


def peak_of(entry):
    """A phase.json entry's peak ICL: the mean over seeds of each seed's best mean of 3 consecutive evals."""
    return entry['peak_icl']


def class_counts(report):
    return sorted({e['classes'] for e in report['phase']['table']})


def verdict_cells(report):
    """report.md's Cells table: [{'cell', 'seeds', 'peak', 'final IWL', 'attn', 'exponent', 'flags'}]."""
    table = md_table(report['md'], 'cell')
    if table is None:
        raise ReportError(f"{report['name']}: report.md has no cells table")
    col = {h: i for i, h in enumerate(table['header'])}
    need = ['cell', 'seeds', 'peak ICL [min-max]', 'final IWL (chance)', 'attn label @peak', 'lr·wd·steps', 'flags']
    missing = [h for h in need if h not in col]
    if missing:
        raise ReportError(f"{report['name']}: report.md's cells table has no column {', '.join(missing)}")
    return [dict(zip(['cell', 'seeds', 'peak', 'iwl', 'attn', 'exponent', 'flags'], [r[col[h]] for h in need]))
            for r in table['rows']]


def compact_cells(report):
    """The cells table of a verdict block, one row per regulariser with the class settings side by side: peak ICL
    [seed range] (with the seeds finished, where some are not; ° = no learning) and final IWL of each, and its
    lr·wd·steps (report.md has every column)."""
    cells = verdict_cells(report)
    classes = list(dict.fromkeys(c['cell'].split(' ', 1)[0] for c in cells))
    chance = re.search(r'\(chance ([^)]*)\)', cells[0]['iwl']) if cells else None
    rows = {}
    for c in cells:
        cls, reg = c['cell'].split(' ', 1)
        rows.setdefault(reg, {'exponent': c['exponent']})[cls] = c
    lines = ['| regulariser | lr·wd·steps | ' + ' | '.join(f"{k} peak ICL | {k} final IWL" for k in classes) + ' |',
             '|---|---|' + '---|---|' * len(classes)]
    for reg, by in rows.items():
        parts = [f"{by[k]['peak']}" + ('°' if 'no learning' in by[k]['flags'] else '')
                 + ('' if by[k]['seeds'].split('/')[0] == by[k]['seeds'].split('/')[1] else f" ({by[k]['seeds']} seeds)")
                 + f" | {by[k]['iwl'].split(' (')[0]}" if k in by else '- | -' for k in classes]
        lines.append(f"| {reg} | {by['exponent']} | " + ' | '.join(parts) + ' |')
    return lines + [f"\nPeak ICL [seed range]; ° = no learning" + (f"; IWL's chance {chance.group(1)}." if chance else '.')]


def report_no_verdict(report):
    """report.md's 'No verdict yet: ...' line, or None."""
    m = re.search(r'^No verdict yet: (.*)$', report['md'], re.M)
    return m.group(1).rstrip('.') if m else None


PROVENANCE = {'code': 'commit', 'torch': 'torch', 'device': 'device', 'CPU threads per cell': 'threads',
              'CPU capability': 'CPU capability'}  # report.numerics_line's fields


def provenance_missing(report):
    """What the report's Numerics line (report.numerics_line) does not record: [] when it names the code commit,
    torch version, device, CPU threads and CPU capability its cells ran with."""
    m = re.search(r'^Numerics: (.*)$', report['md'], re.M)
    if not m:
        return list(PROVENANCE.values())
    line = re.sub(r' \(tracked files changed: [^)]*\)', '', m.group(1).split('. A cell')[0])
    starts = sorted((line.find(f), f) for f in PROVENANCE if line.find(f) >= 0)
    values = {f: line[i + len(f):(starts[k + 1][0] if k + 1 < len(starts) else len(line))].strip(' ;,')
              for k, (i, f) in enumerate(starts)}
    missing = [what for f, what in PROVENANCE.items() if not values.get(f) or 'not recorded' in values[f]]
    return missing


def ran_on_changed_code(report):
    """The code commits in the report's Numerics line that ran with a tracked Python file changed ('-dirty'), and
    the changed files where the cells recorded them: [] when every cell ran committed code."""
    m = re.search(r'^Numerics: code (.*?)(?: \(tracked files changed: ([^)]*)\))?;', report['md'], re.M)
    if not m:
        return []
    dirty = [c for c in m.group(1).split(', ') if c.endswith('-dirty')]
    changed = [f for f in re.split(r'[;\s]+', m.group(2) or '') if f.endswith('.py')]
    return dirty + changed


def provenance_text(report):
    """'; not recorded: code commit, CPU capability' for a report that lacks some of them ('' when complete)."""
    missing = provenance_missing(report)
    changed = ran_on_changed_code(report)
    return ((f"; not recorded: {', '.join(missing)}" if missing else '')
            + ("; ran uncommitted code, to rerun" if changed else ''))


def wall_text(report):
    cells = report['cells']
    if not cells:
        return 'not recorded'
    hours = sum(c['wall_s'] for c in cells if c.get('wall_s')) / 3600
    return f"{len(cells)} cells, {hours:.1f} h summed"


# ---- what a block says -----------------------------------------------------------------------------

def _first(n):
    return 'never' if n is None else str(n)


def rules_text(v, many="Many's", short=False):
    """'as posed NOT MET (best wd=0.01: 0.52 of Many's peak); chance-corrected NOT SUPPORTED over 4 levers (best
    wd=0.01: 0.03 of the gain)': both rules, the posed one first (short: 'posed NOT MET (wd=0.01: 0.52);
    corrected NOT SUPPORTED (0.03, 4 levers)'). Both on the 3-eval peak."""
    posed, best, n = v['posed'], v.get('best') or {}, v.get('n_levers')
    raw = posed.get('raw_max_ratio')
    bar = v.get('threshold', 0.9)  # a ratio that misses it prints at 3 decimals where 2 would round it onto it
    ratio = peak_text(posed['ratio'], bar)
    iv = 'family' if n and n > 1 and 'family_lo' in best else 'corrected'  # the interval the verdict was decided on
    if short:  # a lever best under both rules is named once
        same = best.get('regularizer') == posed['best']
        return (f"posed {posed['verdict']} ({posed['best']}: {ratio}); corrected {v['verdict']}"
                + ((f" ({best['regularizer'] + ': ' if not same else ''}{peak_text(best['corrected'], bar)}")
                   if best.get('corrected') is not None else ' (')
                + (f", {n} levers)" if n and n > 1 else ')'))
    return (f"as posed {posed['verdict']} (best {posed['best']}: {ratio} of {many} peak"
            + (f", {raw:.2f} on raw maxima" if raw is not None and f"{raw:.2f}" != ratio else '')
            + f"); chance-corrected {v['verdict']}" + (f" over {n} levers" if n and n > 1 else '')
            + (f" (best {best['regularizer']}: {peak_text(best['corrected'], bar)} of the gain, interval "
               f"[{best[iv + '_lo']:.2f}, {best[iv + '_hi']:.2f}])" if best.get('corrected') is not None else ''))


def few_many_verdict(report):
    """Both rules from a phase grid's verdict.json (Few = 100 classes, Many = 1600), or '' when it has none."""
    if not report.get('verdicts'):
        return ''
    return rules_text(report['verdicts'][0], short=True) + '; '


def phase_verdict(report, fading=False, per_count=False):
    """One line: the Few/Many verdict, then which regularisers make ICL appear at fewer classes than none does
    (fading: first the peak -> final ICL of each row at the largest class count; per_count: instead, every row's
    peak -> final ICL (final IWL) at each class count: does any switch late?)."""
    if per_count:
        return '; '.join(f"at {n}: " + ', '.join(f"{label} {peak_of(e[n]):.2f} → {e[n]['final_icl']:.2f} "
                                                  f"({e[n]['final_iwl']:.2f})" for label, _, _, e in phase_rows(report)
                                                  if n in e) for n in class_counts(report))
    rules, threshold = few_many_verdict(report), threshold_verdict(report, fading)
    if rules and threshold.startswith('no lever lowers'):  # the rules already say no lever passes at 100
        return rules.rstrip('; ')
    return rules + threshold


def single_count_verdict(report):
    """A grid at one class count compares its rows there: peak -> final ICL of each (few rows), or which rows
    reach the threshold (many rows)."""
    threshold = report['phase']['threshold']
    rows = [(label, next(iter(entries.values()))) for label, _, _, entries in phase_rows(report) if entries]
    if len(rows) <= 3:
        return (f"ICL peak → final (IWL final): " + ', '.join(
            f"{label} {peak_of(e):.2f} → {e['final_icl']:.2f} ({e['final_iwl']:.2f})" for label, e in rows))
    reach = [label for label, e in rows if peak_of(e) >= threshold]
    return f"ICL ≥ {threshold:g} with {', '.join(reach) or 'none of them'} ({len(reach)} of {len(rows)})"


def top_count_verdict(report):
    """A long-run grid's few rows at its largest class count: peak -> final ICL (does it fade?)."""
    top = max(class_counts(report))
    rows = [(label, entries[top]) for label, _, _, entries in phase_rows(report) if top in entries]
    return f"at {top}: " + ', '.join(f"{label} {peak_of(e):.2f} → {e['final_icl']:.2f}" for label, e in rows)


def threshold_verdict(report, fading=False):
    if len(class_counts(report)) == 1:
        return single_count_verdict(report)
    if fading:  # a long-run grid: does ICL fade at the top count, before whether the threshold moves
        return f"{top_count_verdict(report)}; {lowering_verdict(report)}"
    return lowering_verdict(report)


def lowering_verdict(report):
    rows = phase_rows(report)
    top = max(class_counts(report))
    none = next((r for r in rows if r[0] == 'none'), None)
    if none is None:
        return 'no none cells yet'
    inf = float('inf')
    lower = [(label, first) for label, _, first, _ in rows
             if label != 'none' and first is not None and first < (none[2] if none[2] is not None else inf)]
    base = f"none: {_first(none[2])}" + (f" up to {top}" if none[2] is None else '')
    if not lower:
        return f"no lever lowers the class count for ICL ≥ {report['phase']['threshold']:g} ({base})"
    if len(lower) > 4:  # many levers: the count of them, and those that go lowest
        least = min(n for _, n in lower)
        return (f"ICL ≥ {report['phase']['threshold']:g} at fewer classes with {len(lower)} of {len(rows) - 1} levers, "
                f"from {least} with " + ', '.join(label for label, n in lower if n == least) + f"; {base}")
    return (f"ICL ≥ {report['phase']['threshold']:g} at fewer classes with "
            + ', '.join(f"{label} ({n})" for label, n in lower) + f"; {base}")


def _peak_value(text):
    m = re.match(r'\s*([0-9.]+)', text)
    return float(m.group(1)) if m else None


def _class_rank(token):
    low = token.lower()
    if low in ('few', 'many'):
        return (0, 0 if low == 'few' else float('inf'))
    digits = re.sub(r'\D', '', token)
    return (0, int(digits)) if digits else (1, 0)


def verdict_summary(report):
    if report['verdicts']:
        return '; '.join((f"{v['width']}: " if v.get('width') else '') + rules_text(v, short=True) for v in report['verdicts'])
    cells = verdict_cells(report)
    if not cells:
        return 'no finished cells'
    smallest = min({c['cell'].split()[0] for c in cells}, key=_class_rank)
    mine = [c for c in cells if c['cell'].split()[0] == smallest]
    best = max(mine, key=lambda c: _peak_value(c['peak']) or 0.0)
    none = next((c for c in mine if c['cell'].split(' ', 1)[1] == 'wd=0'), None)
    return (f"no Few/Many verdict (class-count grid); peak ICL at {smallest}: best {best['cell'].split(' ', 1)[1]} "
            f"{_peak_value(best['peak']):.2f}" + (f", none {_peak_value(none['peak']):.2f}" if none else ''))


def seeds_missing(report, declared=3):
    """True when some cell of the report has fewer than the seeds its config declares: phase.json's per-cell
    'seeds', or a verdict report's Few cells' 'n_seeds' (a cell without the count is taken to have one seed), or a
    report that lists unfinished cells."""
    if report['kind'] == 'phase':
        return (any(entry.get('seeds', 1) < declared for entry in report['phase']['table'])
                or 'still running' in report['md'])
    return (any(c.get('n_seeds', 1) < declared for v in report['verdicts'] for c in v.get('candidates', []))
            or 'still running or interrupted' in report['md'] or not report['verdicts'])


def summary_block(root=ROOT):
    lines = ['| result | scale | command | cell time, summed | verdict |',
             '|---|---|---|---|---|']
    for r in [r for r in RESULTS if r.get('summary', True)]:  # summary=False: kept in RESULTS.md only
        wall, verdict = r.get('wall'), r.get('verdict')
        if r.get('report'):
            report = load(r['report'], root)
            if report is None:
                wall, verdict = 'pending', 'pending'
            else:
                wall = wall_text(report).replace(' summed', '') + (' (interim)' if seeds_missing(report, r.get('seeds', 3)) else '')
                verdict = (phase_verdict(report, r.get('fading', False), r.get('per_count', False)) if report['kind'] == 'phase'
                           else verdict_summary(report))
        lines.append(f"| [{r['title']}](RESULTS.md#{r['anchor']}) | {r['scale']} | "
                     f"`{r['command']}` | {wall} | {verdict} |")
    return '\n'.join(lines + ['', 'Interim: cells or seeds missing.']) + '\n'


def result_block(name, root=ROOT):
    entry = next(r for r in RESULTS if r.get('report') == name)
    report = load(name, root)
    source = f"assets/results/{name}/"
    if report is None:
        return (f"pending: `{entry['command']}`, then `python scripts/results_table.py --collect {name} "
                f"{entry['out'].rstrip('/')}` (copies the report files into `{source}` and rewrites this block).\n")
    declared = entry.get('seeds', 3)  # an unfinished grid says so in its block as in its README row
    interim = f"; interim: fewer than {declared} seeds in some cell" if seeds_missing(report, declared) else ''
    origin = f"From `{source}` ({wall_text(report)}{provenance_text(report)}{interim})."  # both kinds open with it
    if report['kind'] == 'phase':
        counts, threshold = class_counts(report), report['phase']['threshold']
        lines = [f"{origin} Peak ICL / final IWL per class count; ° = no learning; [seed range].", ""]
        if report.get('verdicts'):
            lines += [f"Verdict, Few = 100 vs Many = 1600 classes: "
                      f"{rules_text(report['verdicts'][0], many='the 1600-class')}.", ""]
        lines += [
                 "| regulariser | lr·wd·steps | ICL ≥ %g from | " % threshold
                 + ' | '.join(str(n) for n in counts) + ' |',
                 '|---|---|---|' + '---|' * len(counts)]
        for label, exponent, first, entries in phase_rows(report):
            cells = []
            for n in counts:
                e = entries.get(n)
                peak = '' if e is None else peak_text(peak_of(e), threshold) + ('°' if e['no_learning'] else '')
                cells.append('-' if e is None else f"{peak} / "
                             f"{e['final_iwl']:.2f}" + (f" [{e['peak_min']:.2f}-{e['peak_max']:.2f}]"
                                                         if e['seeds'] > 1 else ''))
            lines.append(f"| {label} | {exponent} | {_first(first)} | " + ' | '.join(cells) + ' |')
        emergence = os.path.isfile(os.path.join(root, ASSETS, name, 'emergence.png'))  # then the one figure shown
        if report['figure'] and not emergence:
            lines += ['', f"![{name}: phase diagram]({source}phase.png)"]
        if emergence:
            lines += ['', f"![{name}: each seed over steps]({source}emergence.png)"]
        return '\n'.join(lines) + '\n'
    lines = [origin, ""]
    if report['verdicts']:
        for v in report['verdicts']:
            width = f" ({v['width']})" if v.get('width') else ''
            lines += [f"**Verdict{width}**: {rules_text(v)}.", '']
    else:
        lines += [f"No verdict: {report_no_verdict(report) or 'none in verdict.json'}.", '']
    lines += compact_cells(report)
    dose = os.path.isfile(os.path.join(root, ASSETS, name, 'dose_response.png'))  # then the one figure shown
    if report['figure'] and not dose:
        lines += ['', f"![{name}: ICL and IWL vs steps]({source}icl_vs_steps.png)"]
    if dose:
        lines += ['', f"![{name}: dose-response]({source}dose_response.png)"]
    return '\n'.join(lines) + '\n'


ABLATION_DIR = 'ablation'  # assets/results/ablation/<grid folder>-<cell>.json: eval.py --ablate=all's ablation.json


def ablation_block(root=ROOT):
    """Where memorisation and the ICL circuit live: ICL / IWL of each checkpoint with one part mean-ablated,
    one row per checkpoint (assets/results/ablation/*.json, written by `python eval.py --out_dir=<cell>
    --ablate=all` and copied there)."""
    folder = os.path.join(root, ASSETS, ABLATION_DIR)
    names = sorted(f for f in os.listdir(folder) if f.endswith('.json')) if os.path.isdir(folder) else []
    if not names:
        return "pending: `python eval.py --out_dir=<cell> --ablate=all`, ablation.json copied to assets/results/ablation/.\n"
    results = {n[:-5]: json.loads(_read(os.path.join(folder, n))) for n in names}
    parts = [r['part'] for r in next(iter(results.values()))['rows']]
    simple = [p for p in parts if p in ('none', 'encoder', 'attn*', 'mlp*', 'head') or p in ('attn0', 'mlp0')]
    lines = [f"From `{ASSETS}/{ABLATION_DIR}/*.json`. Each entry: ICL / IWL with that part's output replaced by its "
             "mean over training sequences (attn* / mlp*: every layer's at once; IWL chance 1/n_labels).", "",
             '| checkpoint (iter) | ' + ' | '.join(simple) + ' |', '|---|' + '---|' * len(simple)]
    for name, r in results.items():
        by_part = {row['part']: row for row in r['rows']}
        lines.append(f"| {name} ({r['iter']}) | " + ' | '.join(
            f"{by_part[p]['icl_acc']:.2f} / {by_part[p]['iwl_acc']:.2f}" if p in by_part else '-' for p in simple) + ' |')
    return '\n'.join(lines) + '\n'


def block(name, root=ROOT):
    if name == 'summary':
        return summary_block(root)
    if name == 'ablation':
        return ablation_block(root)
    if any(r.get('report') == name for r in RESULTS):
        return result_block(name, root)
    raise KeyError(f"no results block named {name!r} (known: summary, "
                   + ', '.join(r['report'] for r in RESULTS if r.get('report')) + ")")


# ---- the documents ---------------------------------------------------------------------------------

def blocks_in(text):
    """{name: content} of every marked block of a document."""
    return {m.group(1): m.group(2) for m in MARKER.finditer(text)}


def render(text, root=ROOT):
    """The document with every marked block regenerated from the report files under root."""
    return MARKER.sub(lambda m: f"<!-- results:{m.group(1)} begin -->\n{block(m.group(1), root)}"
                                f"<!-- results:{m.group(1)} end -->", text)


def _final_eval(cell_dir):
    """The scalar numbers of a cell's last eval row (probes, weight norm, attention), so that a number the prose
    quotes per seed comes from a committed file too; per-layer lists stay in the cell's metrics.jsonl."""
    from checkpoint import read_metrics
    rows = read_metrics(cell_dir)  # every row is an eval row (training.eval_row is its one writer)
    return {k: v for k, v in rows[-1].items() if isinstance(v, (int, float))} if rows else None


def collect(name, grid_dir, root=ROOT):
    """Copy a grid folder's report files (and per cell its wall time and last eval) into assets/results/<name>/."""
    if not any(r.get('report') == name for r in RESULTS):
        raise KeyError(f"no result named {name!r} in RESULTS")
    dest = os.path.join(root, ASSETS, name)
    found = [f for f in REPORT_FILES if os.path.isfile(os.path.join(grid_dir, f))]
    if not ({'phase.json', 'phase.md'} <= set(found) or {'report.md', 'verdict.json'} <= set(found)):
        raise FileNotFoundError(f"{grid_dir} has no phase.json + phase.md or report.md + verdict.json: "
                                f"run grid.py with --report on it first")
    os.makedirs(dest, exist_ok=True)
    for f in found:
        shutil.copyfile(os.path.join(grid_dir, f), os.path.join(dest, f))
    cells = []
    for cell in sorted(os.listdir(grid_dir)):
        path = os.path.join(grid_dir, cell, 'summary.json')
        if os.path.isfile(path):
            summary = json.loads(_read(path))
            cells.append({'cell': cell, 'wall_s': summary.get('wall_s'), 'final_iter': summary.get('final_iter'),
                          'final': _final_eval(os.path.join(grid_dir, cell))})
    with open(os.path.join(dest, 'cells.json'), 'w') as f:
        json.dump(cells, f, indent=1)
    return found + ['cells.json']


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--write', action='store_true', help='rewrite the blocks in README.md and RESULTS.md')
    parser.add_argument('--check', action='store_true', help='exit 1 if a block differs from the report files')
    parser.add_argument('--collect', nargs=2, metavar=('NAME', 'GRID_DIR'),
                        help="copy GRID_DIR's report files into assets/results/NAME/, then --write")
    args = parser.parse_args(argv)
    if args.collect:
        name, grid_dir = args.collect
        copied = collect(name, grid_dir)
        print(f"results_table: copied {', '.join(copied)} into {os.path.join(ASSETS, name)}/")
        args.write = True
    stale = []
    for doc in DOCS:
        path = os.path.join(ROOT, doc)
        text = _read(path)
        new = render(text)
        if args.write and new != text:
            with open(path, 'w', encoding='utf-8') as f:
                f.write(new)
            print(f"results_table: rewrote the blocks of {doc}")
        elif new != text:
            stale.append(doc)
        if not (args.write or args.check):
            for name, content in blocks_in(new).items():
                print(f"<!-- results:{name} ({doc}) -->\n{content}")
    if args.check and stale:
        print(f"results_table: blocks differ from the report files in {', '.join(stale)}; "
              f"run python scripts/results_table.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
