"""
Shake the numerics: run the fast tier under every other float path this machine offers and list each test whose
outcome depends on the path.

    python scripts/shake_numerics.py                 # every setting this CPU offers, one after another
    python scripts/shake_numerics.py --list          # only say which settings are offered here, and why not the rest
    python scripts/shake_numerics.py --only=unlike   # the one setting most unlike any machine's own (CI runs it)

Float sums come out in another order on another CPU: torch's own kernels by ATen capability (default, AVX2,
AVX512), BLAS by MKL's code path (MKL_CBWR), convolutions and some matmuls by oneDNN's ISA (ONEDNN_MAX_CPU_ISA), and
every reduction by the number of threads. A test that compares floats computed two ways must hold on all of them:
its tolerance comes from an error model, not from what passed here. This script walks those paths on one machine, so
a tolerance fit to one CPU shows up before CI lands on another. A path can only be taken down from the machine's
own (an AVX2 CPU cannot run AVX512 kernels); a setting this CPU cannot offer is listed as such, not skipped silently.
Exit code 1 when some test's outcome depends on the setting or fails everywhere.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_flags():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def settings(flags):
    """[(name, env, None or why it is not offered)]: each a path a machine can take below its own."""
    avx2, avx512 = 'avx2' in flags, 'avx512f' in flags
    amx = 'amx_tile' in flags
    out = [('own', {}, None),
           ('1 thread', {'OMP_NUM_THREADS': '1'}, None),
           ('ATen default', {'ATEN_CPU_CAPABILITY': 'default', 'OMP_NUM_THREADS': '1'}, None),
           ('ATen avx2', {'ATEN_CPU_CAPABILITY': 'avx2', 'OMP_NUM_THREADS': '1'},
            None if avx512 else 'no AVX512 here: AVX2 is already the own path' if avx2 else 'no AVX2 on this CPU'),
           ('oneDNN sse41', {'ONEDNN_MAX_CPU_ISA': 'SSE41'}, None),
           ('oneDNN avx2', {'ONEDNN_MAX_CPU_ISA': 'AVX2'},
            None if (avx512 or amx) else 'no AVX512 or AMX here: AVX2 is already the own path' if avx2
            else 'no AVX2 on this CPU'),
           ('MKL compatible', {'MKL_CBWR': 'COMPATIBLE'}, None),
           ('MKL avx2', {'MKL_CBWR': 'AVX2'}, None if avx2 else 'no AVX2 on this CPU'),
           ('unlike', UNLIKE, None)]
    return out


# The setting most unlike any machine's own: torch's scalar kernels, MKL's and oneDNN's most conservative paths, one
# thread (.ci/run runs the fast tier once more under it).
UNLIKE = {'ATEN_CPU_CAPABILITY': 'default', 'MKL_CBWR': 'COMPATIBLE', 'ONEDNN_MAX_CPU_ISA': 'SSE41',
          'OMP_NUM_THREADS': '1'}


def run_tier(env_extra, pytest_args):
    """{test id: 'passed' | 'failed' | 'skipped'} of one fast-tier run under env_extra, and its seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ('ATEN_CPU_CAPABILITY', 'MKL_CBWR', 'ONEDNN_MAX_CPU_ISA')}
    env.update(env_extra)
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, 'junit.xml')
        t0 = time.time()
        done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-m', 'not slow', '-p', 'no:cacheprovider',
                               f'--junitxml={xml}', *pytest_args], cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.time() - t0
        if done.returncode:   # what pytest said about its failures, so a CI log shows them
            print(done.stdout[-6000:], done.stderr[-2000:], sep='\n')
        if not os.path.exists(xml):
            return None, seconds
        outcomes = {}
        for case in ET.parse(xml).getroot().iter('testcase'):
            test = f"{case.get('classname')}::{case.get('name')}"
            kinds = {child.tag for child in case}
            outcomes[test] = ('failed' if kinds & {'failure', 'error'} else 'skipped' if 'skipped' in kinds
                              else 'passed')
        return outcomes, seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--list', action='store_true', help='only list the settings this machine offers')
    ap.add_argument('--only', default='', help="comma-separated setting names (e.g. 'unlike' or 'ATen default')")
    ap.add_argument('pytest_args', nargs='*', default=['tests'], help='what pytest collects (default: tests)')
    args = ap.parse_args()
    chosen = settings(cpu_flags())
    if args.only:
        names = [s.strip() for s in args.only.split(',')]
        unknown = [n for n in names if n not in {name for name, _, _ in chosen}]
        if unknown:
            sys.exit(f"shake: unknown setting(s) {unknown}; known: {[name for name, _, _ in chosen]}")
        chosen = [s for s in chosen if s[0] in names]
    import torch
    print(f"shake: torch {torch.__version__}, own capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} cores")
    for name, env, why in chosen:
        described = ' '.join(f'{k}={v}' for k, v in env.items()) or '(nothing set)'
        print(f"  {name:15s} {described}" + (f"  NOT OFFERED: {why}" if why else ''))
    if args.list:
        return 0
    results = {}
    for name, env, why in chosen:
        if why:
            continue
        outcomes, seconds = run_tier(env, args.pytest_args)
        if outcomes is None:
            print(f"shake: {name}: pytest wrote no report (collection error?) in {seconds:.0f} s")
            results[name] = {}
            continue
        counts = {k: sum(v == k for v in outcomes.values()) for k in ('passed', 'failed', 'skipped')}
        print(f"shake: {name}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
              f"in {seconds:.0f} s", flush=True)
        results[name] = outcomes
    tests = sorted({t for o in results.values() for t in o})
    depends = {t: {n: o.get(t, 'missing') for n, o in results.items()} for t in tests
               if len({o.get(t, 'missing') for o in results.values()}) > 1
               or any(o.get(t) == 'failed' for o in results.values())}
    if not depends:
        print(f"shake: no test's outcome depends on the setting ({len(tests)} tests, {len(results)} settings)")
        return 0
    print(f"shake: {len(depends)} test(s) whose outcome depends on the setting or that fail:")
    for t, by_setting in depends.items():
        failed = [f"{n} ({o})" for n, o in by_setting.items() if o != 'passed' and o != 'skipped']
        print(f"  {t}: not passed under {', '.join(failed)}")   # 'missing': the tree changed between settings
    return 1


if __name__ == '__main__':
    sys.exit(main())
