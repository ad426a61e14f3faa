"""
Experiment tracking with Weights & Biases, nanoGPT's convention: off unless wandb_log=True. When on, each
run (a train.py run, or each member of a train.py group) is one wandb run: its config is the run's config,
and every metrics.jsonl row goes to its history at step=iter. wandb_group groups runs (grid.py puts its
cells in a group named after the grid folder); wandb_run_name defaults to out_dir's folder name (a grid
cell's name). The wandb run id is kept in the checkpoint, so a resumed run continues the same wandb run.

wandb is imported only when wandb_log=True and is not in requirements.txt (pip install wandb). Without an
API key (WANDB_API_KEY or a ~/.netrc login) runs are logged offline, under out_dir/wandb/ (or $WANDB_DIR),
for a later `wandb sync <dir>`; set WANDB_MODE yourself to decide otherwise.
Tracking never stops a run: a wandb error while logging is printed as a warning and training goes on.
"""
import netrc
import os
import sys
from urllib.parse import urlparse

TRACKING_KEYS = ('wandb_log', 'wandb_project', 'wandb_run_name', 'wandb_group')  # how a run is watched, not what it is


def require_wandb(config):
    """The wandb module when config['wandb_log'] is on, else None; ImportError naming the fix when the
    package is missing (checked with the config, before out_dir is touched)."""
    if not config.get('wandb_log'):
        return None
    try:
        import wandb
    except ImportError:
        raise ImportError("wandb_log=True but the wandb package is not installed: pip install wandb "
                          "(or --wandb_log=False)") from None
    return wandb


def logged_in(environ):
    """Is there a W&B API key: WANDB_API_KEY, or a ~/.netrc entry for the W&B host?"""
    if environ.get('WANDB_API_KEY'):
        return True
    host = urlparse(environ.get('WANDB_BASE_URL', 'https://api.wandb.ai')).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def start_tracking(wandb, config, run_id=None):
    """A wandb run object for one run (None when wandb is None); ValueError when wandb cannot start. run_id:
    the id kept in the run's checkpoint, to continue that wandb run on resume. Each call makes its own run
    object (reinit='create_new'), so the members of a group log as separate runs. Offline without an API
    key, and (unless the user set WANDB_MODE) when the server cannot be reached."""
    if wandb is None:
        return None
    user_mode = 'WANDB_MODE' in os.environ
    why = ''
    if not user_mode and not logged_in(os.environ):
        os.environ['WANDB_MODE'] = 'offline'
        why = ' (no WANDB_API_KEY or ~/.netrc login)'
    try:
        run = _init(wandb, config, run_id, os.environ.get('WANDB_MODE'))  # explicit: a started session ignores the env
    except Exception as e:  # no network, a bad key or project name: before the run touches its files
        if user_mode or why:
            raise ValueError(f"wandb could not start ({type(e).__name__}: {e}); fix it or use --wandb_log=False") from None
        print(f"warning: wandb could not start online ({type(e).__name__}: {e}); logging offline instead")
        os.environ['WANDB_MODE'] = 'offline'
        return start_tracking(wandb, config, run_id)
    return _offline(run, why) if run.offline else run


def _init(wandb, config, run_id, mode):
    out_dir = config['out_dir']
    run_dir = None if os.environ.get('WANDB_DIR') else out_dir  # default: the run's files beside its metrics
    os.makedirs(run_dir or os.environ['WANDB_DIR'], exist_ok=True)
    return wandb.init(project=config['wandb_project'], group=config['wandb_group'] or None,
                      name=config['wandb_run_name'] or os.path.basename(os.path.abspath(out_dir)),
                      config=config, dir=run_dir, id=run_id, resume='allow' if run_id else None, reinit='create_new',
                      mode=mode)


def _offline(run, why):
    where = os.path.dirname(run.dir)
    print(f"wandb: offline run {run.id}{why} in {where}; upload it with: wandb sync {where}")
    return run


def track(run, row):
    """One metrics.jsonl row to the run's history at step=iter."""
    if run is not None:
        _safely(lambda: run.log(row, step=row['iter']))


def finish_tracking(run, exit_code=0):
    if run is not None:
        _safely(lambda: run.finish(exit_code=exit_code))


def _safely(call):
    try:
        call()
    except Exception as e:  # a tracking failure costs the tracking, never the run
        print(f"warning: wandb failed ({type(e).__name__}: {e}); training goes on", file=sys.stderr)
