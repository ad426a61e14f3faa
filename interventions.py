"""
Interventions between steps, applied after a step's eval: a lever that edits the weights (or the optimizer state)
every so many steps goes here, as a `*_due(iter_num, config)` that train.py's loop asks after each eval (and once at
start-up, so its keys count as read) and the edit itself, on a member's tensors (train.py's member_tensors). Every
draw is seeded by step.step_seed: a group member edits exactly as its solo run, and a resumed run repeats the edit.
"""
import torch

from curvature import MODULES as CURVATURE_MODULES  # whose Linear weights curvature_modules may name
from curvature import curvature_bases, edited_weights, kfac_factors, linear_names
from data import EpisodeSampler
from model import build_model, parse_modules
from step import step_seed

# ---- forgetting: re-initialise chosen modules during training (Chen et al. 2023; Anand et al. 2024) ------

FORGET_MODULES = ('encoder', 'label_embedding', 'head', 'mlp')  # what forget_modules may name


def parse_forget_modules(text):
    """'encoder,label_embedding,head' (',' or '+' between names) -> a tuple in FORGET_MODULES order."""
    return parse_modules(text, 'forget_modules', FORGET_MODULES, everything=None)


def check_forgetting(config):
    """ValueError naming the forgetting key a run cannot start with (read by every run: check_all_read)."""
    every, until = config.get('forget_every', 0), config.get('forget_until', 0)
    for key, value in (('forget_every', every), ('forget_until', until)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{key}={value!r} must be an integer >= 0 (0: forget_every off, forget_until the whole run)")
    if until and not every:
        raise ValueError(f"forget_until={until} has no effect without forget_every > 0")
    parse_forget_modules(config.get('forget_modules', 'encoder,label_embedding,head'))


def forget_due(iter_num, config):
    """Re-initialise after completed step iter_num (and after its eval)? Every forget_every steps, while iter_num <
    forget_until (0: the whole run), as Anand et al.'s code counts and orders it: step k*forget_every is evaluated,
    then re-initialised; step forget_until no longer."""
    every, until = config['forget_every'], config['forget_until']
    return every > 0 and iter_num > 0 and iter_num % every == 0 and (until == 0 or iter_num < until)


def forgotten_names(state_keys, modules):
    """The model.state_dict() keys (parameters and buffers, e.g. BatchNorm statistics) of FORGET_MODULES `modules`."""
    prefixes = {'encoder': ('encoder.',), 'label_embedding': ('label_embedding.',), 'head': ('head.',)}
    def chosen(name):
        if name.startswith('blocks.') and name.split('.')[2] == 'mlp':
            return 'mlp' in modules
        return any(name.startswith(p) for m in modules for p in prefixes.get(m, ()))
    return [name for name in state_keys if chosen(name)]


def fresh_state(config, data, iter_num, names):
    """The named tensors of a newly initialised model (model.py's own init), built on the CPU from the CPU generator
    seeded by (seed, iter_num) and restored after: a resumed run, and a group member, draw exactly what their solo run
    draws, and the training stream is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(step_seed(config, iter_num))
        state = build_model(config, data).state_dict()
    return {name: state[name] for name in names}


def forget(tensors, fresh, optimizer_state, params):
    """Copy fresh values into a model's tensors (tensors: name -> the tensor to overwrite; a group passes member k's
    slices) and drop the AdamW state of those parameters (params: name -> the optimizer's parameter), which AdamW then
    starts again at zero moments and step 0, as the papers' AdamEF resets the embeddings' moments and step count."""
    with torch.no_grad():
        for name, value in fresh.items():
            tensors[name].copy_(value)
            if name in params:
                optimizer_state.pop(params[name], None)


# ---- curvature edit during training (Merullo et al. 2025's edit, applied every curvature_every steps) ------

def parse_curvature_modules(text):
    """'mlp' or 'mlp,head' (',' or '+' between names) or 'all' -> a tuple in curvature.MODULES order."""
    return parse_modules(text, 'curvature_modules', CURVATURE_MODULES)


def check_curvature(config):
    """ValueError naming the curvature-edit key a run cannot start with (read by every run: check_all_read)."""
    every, start = config.get('curvature_every', 0), config.get('curvature_start', 0)
    for key, value in (('curvature_every', every), ('curvature_start', start)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{key}={value!r} must be an integer >= 0 (0: curvature_every off, curvature_start "
                             f"from the first step)")
    if start and not every:
        raise ValueError(f"curvature_start={start} has no effect without curvature_every > 0")
    rho = config.get('curvature_rho', 0.9)
    if not isinstance(rho, (int, float)) or not 0 < rho <= 1:
        raise ValueError(f"curvature_rho={rho!r} must be in (0, 1]: the share of each weight's curvature mass kept")
    n = config.get('curvature_sequences', 1024)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"curvature_sequences={n!r} must be an integer >= 1")
    parse_curvature_modules(config.get('curvature_modules', 'mlp'))


def curvature_due(iter_num, config):
    """Edit after completed step iter_num (and after its eval, as forgetting)? Every curvature_every steps from step
    curvature_start on."""
    every = config['curvature_every']
    return every > 0 and iter_num > 0 and iter_num >= config['curvature_start'] and iter_num % every == 0


def curvature_edit(model, config, data, iter_num):
    """({'<linear>.weight': edited weight}, mean share of curvature mass removed) for a model (a run's, or a group
    member's loaded into the plain model): K-FAC factors over curvature_sequences fresh training sequences (the run's
    own sampler rules, its own seed and this step: a resumed run and a group member draw what their solo run draws;
    the training stream and torch's generator are untouched), labels sampled from the model's softmax (the paper's
    Fisher), then curvature.py's edit at curvature_rho. The AdamW moments are kept: the edit projects the weights, it
    does not restart them."""
    device = next(model.parameters()).device
    seed = step_seed(config, iter_num)
    sampler = EpisodeSampler.from_config(data.train, data.class_labels, config, device, seed=seed,
                                         n_labels=data.n_labels)
    n, size = config['curvature_sequences'], config['batch_size']
    batches = (sampler.sample(min(size, n - i), iter_num)[:2] for i in range(0, n, size))
    names = linear_names(model, parse_curvature_modules(config['curvature_modules']))
    bases = curvature_bases(kfac_factors(model, batches, names, size, seed))
    weights, stats = edited_weights(model, bases, names, config['curvature_rho'])
    return ({f'{name}.weight': w for name, w in weights.items()},
            sum(s['mass_removed'] for s in stats.values()) / len(stats))
