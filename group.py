"""
Member-batched training: K grid cells trained together in one process as one stacked model.

    python group.py --seed=0 --out_dir=out_a :: --seed=1 --weight_decay=1e-2 --out_dir=out_b
    python group.py config/omniglot.py config/few.py --seed=0 --out_dir=a :: config/omniglot.py config/many.py --out_dir=b
    python group.py cells.json            # a JSON list of train.py argument lists (what grid.py writes)

Each member is given exactly the arguments a solo `python train.py ...` run would get, and writes exactly
the files that run writes (metrics.jsonl, summary.json, exposure.json, ckpt.pt with a solo-format optimizer
state), so grid.py's report, skip/resume, eval.py, sample_attention.py and even a solo train.py
--init_from=resume work on a member's folder unchanged.

How: every parameter and buffer of model.py's unchanged ICLTransformer gets a leading member axis
(StackedModel: torch.func.stack_module_state, the forward vmap over functional_call), and one optimizer step
updates all members (MemberAdamW: decoupled decay with each member's own weight_decay, then Adam); the step is
training.train_step, train.py's own. Each member draws its own batch from its own sampler and seed stream
(GroupSampler), so its numbers do not depend on which cells share its group.
Members may differ in any key the group reads per member while it is built (its data and sampler keys, seed,
weight_decay, decay_modules, each penalty of training.StepTerms, out_dir, wandb_run_name); a key they differ in
that the group applies once for all (the model's shape, batch, schedule, ...), and a key nothing in the group
reads, stop it with an error naming the key (check_member_keys). With --wandb_log=True each member logs to its
own wandb run. On a CPU this buys nothing (the step is compute-bound); on a GPU one small cell leaves the chip idle.
"""
import copy
import json
import os
import sys
import time
from contextlib import nullcontext

import torch
from torch.func import functional_call, stack_module_state, vmap

from checkpoint import CKPT, KeyReads
from data import build_run_data
from model import build_model, learning_rate_at
from tracking import finish_tracking, require_wandb, start_tracking
from training import (Exposure, NonFinite, StepRate, StepTerms, StopFlag, check_all_read, check_config, checkpoint_run,
                      eval_due, evaluate_and_log, finish_run, forget, forget_due, forgotten_names, fresh_state, log_line,
                      parse_forget_modules, parse_train_args, read_run_dir, resolve_device, start_run_dir,
                      stop_and_exit, train_step)


# ---- K runs as one: the stacked model, its optimizer, sampler and exposure counts (bench.py uses them too) ----

class StackedModel:
    """K copies of one ICLTransformer as stacked tensors; __call__(items [K, B, ...], labels [K, B, S])
    -> logits [K, B, n_labels] (and, with return_attention, each layer's [K, B, n_head, S', S'] attention)
    through vmap(functional_call) of the unchanged module."""

    def __init__(self, models):
        # models[0]'s modules without their tensors (functional_call supplies every one): no copy of the weights, and
        # nothing to convert (a module of fake CUDA tensors cannot be moved: tests/test_cuda_on_cpu.py)
        self.base = copy.deepcopy(models[0], {id(t): None for t in (*models[0].parameters(), *models[0].buffers())})
        for module in self.base.modules():
            if hasattr(module, 'explicit'):
                module.explicit = True  # SDPA has no vmap batching rule on CPU; the explicit form batches
        params, self.buffers = stack_module_state(models)
        # plain layout: a member's channels_last conv weight makes its conv output channels_last under vmap, and
        # BatchNorm on CUDA then asks for that layout, which vmap cannot answer (found by tests/test_cuda_on_cpu.py)
        self.params = {name: torch.nn.Parameter(p.detach().clone(memory_format=torch.contiguous_format))
                       for name, p in params.items()}
        self.name_of = {id(p): name for name, p in models[0].named_parameters()}  # models[0]'s tensor -> name

    def __call__(self, items, labels, return_attention=False):
        def one(params, buffers, items, labels):
            return functional_call(self.base, (params, buffers), (items, labels),
                                   {'return_attention': return_attention})
        return vmap(one, randomness='different')(self.params, self.buffers, items, labels)

    def member_state(self, k, keys):
        """Member k's model.state_dict() (the keys of a solo model's state_dict)."""
        every = {**self.params, **self.buffers}
        return {name: every[name][k].detach().clone() for name in keys}

    def load_member_state(self, k, state):
        with torch.no_grad():
            for name, value in state.items():
                target = self.params.get(name, self.buffers.get(name))
                target[k].copy_(value)


class MemberAdamW:
    """AdamW over stacked parameters with one weight decay per member (and per tensor: members may decay
    different modules). PyTorch's AdamW first shrinks each decayed weight by lr*wd and then applies Adam's
    update (its update with weight_decay=0); this does the same with wd a [K] vector per tensor, so member
    k follows exactly its solo AdamW. weight_decays: one [K] list per tensor of `decay`. solos: each member's solo
    AdamW (never stepped), whose state format member_state writes and load_member_states reads: a member's
    checkpoint is a solo run's."""

    def __init__(self, stacked, decay, no_decay, weight_decays, lr, betas, fused, solos):
        self.inner = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.0},
                                        {'params': no_decay, 'weight_decay': 0.0}], lr=lr, betas=betas, fused=fused)
        self.param_groups = self.inner.param_groups
        self.weight_decays = [torch.tensor(wd, dtype=torch.float64) for wd in weight_decays]
        self.any_decay = any(w != 0 for wd in weight_decays for w in wd)
        self.stacked, self.solos = stacked, solos

    @torch.no_grad()
    def step(self):
        lr = self.param_groups[0]['lr']
        if self.any_decay:
            for p, wd in zip(self.param_groups[0]['params'], self.weight_decays):
                factor = 1 - lr * wd  # float64 then one rounding, as AdamW's Python-float factor
                p.mul_(factor.to(device=p.device, dtype=p.dtype).view(-1, *[1] * (p.dim() - 1)))
        self.inner.step()

    def zero_grad(self, set_to_none=True):
        self.inner.zero_grad(set_to_none=set_to_none)

    def member_state(self, k):
        """Member k's optimizer state in the format of its solo AdamW's state_dict(), laid out like the solo
        parameter (fused AdamW wants that; the stacked ones are plain, a solo ResNet's are channels_last)."""
        state, name_of = self.solos[k].state_dict(), self.stacked.name_of
        for index, p in enumerate(p for group in self.solos[k].param_groups for p in group['params']):
            inner = self.inner.state.get(self.stacked.params[name_of[id(p)]])
            if inner:
                state['state'][index] = {'step': inner['step'].detach().clone(),
                                         'exp_avg': torch.empty_like(p).copy_(inner['exp_avg'][k]),
                                         'exp_avg_sq': torch.empty_like(p).copy_(inner['exp_avg_sq'][k])}
        return state

    def load_member_states(self, states):
        """The stacked state from each member's solo-format optimizer state."""
        by_name = [{self.stacked.name_of[id(p)]: state['state'].get(i)
                    for i, p in enumerate(p for group in solo.param_groups for p in group['params'])}
                   for solo, state in zip(self.solos, states)]
        for name, target in self.stacked.params.items():
            per_member = [m.get(name) for m in by_name]
            if all(per_member):
                self.inner.state[target] = {  # laid out like target
                    key: torch.empty_like(target).copy_(torch.stack([m[key] for m in per_member]))
                    for key in ('exp_avg', 'exp_avg_sq')}
                self.inner.state[target]['step'] = per_member[0]['step'].to(target.device)


def stack_group(models, configs, device_type):
    """(stacked model, per-member AdamW, StepTerms) for K models of one architecture and their runs' configs. The
    stacked decayed group is every Linear/Conv weight; member k decays, and is penalised on, those of its own
    decay_modules with its own weight_decay and penalties (as its solo AdamW and StepTerms); learning rate and
    betas are configs[0]'s."""
    stacked = StackedModel(models)
    every, no_decay = models[0].decayed_parameters('all')
    mine = [{id(p) for p in models[0].decayed_parameters(c['decay_modules'])[0]} for c in configs]
    decays = [[id(p) in chosen for chosen in mine] for p in every]  # decays[i][k]: member k decays tensor i
    decayed = [stacked.params[stacked.name_of[id(p)]] for p in every]
    lr, betas = configs[0]['learning_rate'], (configs[0]['beta1'], configs[0]['beta2'])
    weight_decays = [c['weight_decay'] for c in configs]
    solos = [models[0].configure_optimizers(wd, lr, betas, device_type, verbose=False, decay_modules=c['decay_modules'])
             for wd, c in zip(weight_decays, configs)]
    optimizer = MemberAdamW(stacked, decayed, [stacked.params[stacked.name_of[id(p)]] for p in no_decay],
                            [[wd if d else 0.0 for wd, d in zip(weight_decays, mask)] for mask in decays],
                            lr, betas, device_type == 'cuda', solos)
    return stacked, optimizer, StepTerms(configs, decayed, decays)


class GroupSampler:
    """Each member's own EpisodeSampler (own classes, own seed stream), batches stacked on a member axis."""

    def __init__(self, samplers):
        self.samplers = samplers

    def sample(self, batch_size):
        draws = [s.sample(batch_size) for s in self.samplers]
        return torch.stack([d[0] for d in draws]), torch.stack([d[1] for d in draws]), [d[2] for d in draws]


class GroupExposure:
    def __init__(self, exposures):
        self.members = exposures

    def add(self, classes):
        for exposure, c in zip(self.members, classes):
            exposure.add(c)


# ---- the group.py command ---------------------------------------------------------------------------

def fail(message, kind='error'):
    print(f"{kind}: {message}", file=sys.stderr)
    sys.exit(2)


def member_arguments(argv):
    """Argument lists of the members: a JSON file of lists, or the command line split at '::'."""
    if len(argv) == 1 and argv[0].endswith('.json'):
        with open(argv[0]) as f:
            members = json.load(f)
        if not (isinstance(members, list) and all(isinstance(m, list) for m in members)):
            fail(f"{argv[0]} must hold a JSON list of train.py argument lists")
        return members
    members, current = [], []
    for arg in argv:
        if arg == '::':
            members.append(current)
            current = []
        else:
            current.append(arg)
    return members + [current]


def check_group(members):
    """ValueError for a group without members or with two members writing to one out_dir or wandb run name."""
    if len(members) < 1:
        raise ValueError("a group needs at least one member")
    for key in ('out_dir', 'wandb_run_name'):  # read per member (KeyReads): each member writes its own
        values = [os.path.abspath(c[key]) if key == 'out_dir' else c[key] for c in members]
        if len(set(v for v in values if v)) != len([v for v in values if v]):
            raise ValueError(f"two members share a {key}: {values}")


def check_member_keys(configs, reads, shared):
    """ValueError naming each key the group would not apply as the members' solo runs do (reads: each member's
    KeyReads once the group is built, shared: the group's): a key nothing read (say a penalty applied in train.py's
    own loop: every member would train without it), unless the loop reads it later (RESUMABLE_KEYS) or only some runs
    do (READ_ON_SOME_PATHS); a key the members differ in that nothing read per member (each would train with member
    0's value). A key read per member (data, sampler, seed, decay, StepTerms' penalties) may differ."""
    learning_rate_at(0, shared)  # the schedule: the loop reads it at every step
    check_all_read([shared, *reads])
    per_member = set.intersection(*(r.read for r in reads))
    refused = [k for k in configs[0] if k not in per_member and len({repr(c[k]) for c in configs}) > 1]
    if refused:
        raise ValueError("members differ in " + "; ".join(f"{k} ({', '.join(repr(c[k]) for c in configs)})"
                                                          for k in refused)
                         + ", which group.py applies once for the whole group (nothing reads it per member): "
                           "group cells that agree on it, or train them with train.py")


# ---- members: every check before anything is written, then data and models ----------------------
if __name__ == '__main__':  # (bench.py imports the stacking above)
    configs = [parse_train_args(args) for args in member_arguments(sys.argv[1:])]
    reads = [KeyReads(c) for c in configs]  # what the group reads per member (check_member_keys)
    shared = KeyReads(configs[0])           # what it reads once for the whole group
    try:
        wandb = require_wandb(shared)  # wandb_log is one value per group
    except ImportError as e:
        fail(str(e), kind='config error')
    try:
        for c in configs:
            check_config(c)
        check_group(reads)
        device = resolve_device(shared['device'])
        checkpoints = [read_run_dir(c) for c in configs]  # reads only: out_dirs are touched once all can start
    except ValueError as e:
        fail(str(e))
    starts = {ck['iter_num'] if ck else 0 for ck in checkpoints}
    if len(starts) > 1:
        fail("members are at different steps (" + ", ".join(
            f"{c['out_dir']}: {ck['iter_num'] if ck else 0}" for c, ck in zip(configs, checkpoints))
             + "); group cells that are at the same step, or run them with train.py")
    K = len(configs)
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    data_cache, datas, models, samplers, episodes = [], [], [], [], []
    try:
        for c in reads:  # per member, through its KeyReads: data and sampler, init seed, decay, penalties
            torch.manual_seed(c['seed'])  # as train.py: the same init as the member's solo run
            data, sampler, icl, iwl, probes = build_run_data(c, device, cache=data_cache)  # one copy of the same data
            models.append(build_model(shared, data).to(device))  # one architecture: the stacked model is models[0]'s
            datas.append(data)
            samplers.append(sampler)
            episodes.append((icl, iwl, probes))
        template = models[0]                        # a solo model: eval and checkpoints go through it
        state_keys = list(template.state_dict().keys())
        member_decay = [template.decayed_parameters(c['decay_modules'])[0] for c in reads]  # each member's weight norm
        stacked, optimizer, terms = stack_group(models, reads, device_type)  # terms: batch, clip, members' penalties
        # forgetting: one schedule for the group (the stacked AdamW keeps one step count per tensor)
        forgotten = forgotten_names(state_keys, parse_forget_modules(shared['forget_modules']))
        forget_due(0, shared)
        check_member_keys(configs, reads, shared)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    del models
    differ = [k for k in configs[0] if len({repr(c[k]) for c in configs}) > 1 and k != 'out_dir']
    print(f"group: {K} members, {template.num_parameters():,} parameters each, device {device}"
          + ("; eager: compile is not applied to the stacked model" if device_type == 'cuda' else ''))
    for c in configs:
        print(f"  {c['out_dir']}: " + (", ".join(f"{k} {c[k]!r}" for k in differ) or 'same config as the others'))
    exposure = GroupExposure([Exposure(s.bank.n_classes, device) for s in samplers])
    sampler = GroupSampler(samplers)
    iter_num, last_eval_iter, wall_offset = 0, -1, 0.0
    loss_sum = torch.zeros(K, device=device)
    loss_count = 0
    best = [{'icl_acc': -1.0, 'iter': None} for _ in configs]
    if checkpoints[0] is not None:
        for k, ck in enumerate(checkpoints):
            stacked.load_member_state(k, ck['model'])
            samplers[k].load_state_dict(ck['sampler'])
            best[k] = ck['best']
            loss_sum[k] = ck['loss_sum']
            exposure.members[k].query.copy_(ck['query_count'])
            exposure.members[k].seen.copy_(ck['seen_count'])
        optimizer.load_member_states([ck['optimizer'] for ck in checkpoints])
        torch.set_rng_state(checkpoints[0]['torch_rng'])
        if device_type == 'cuda' and checkpoints[0].get('cuda_rng') is not None:
            torch.cuda.set_rng_state(checkpoints[0]['cuda_rng'])
        iter_num, last_eval_iter = checkpoints[0]['iter_num'], checkpoints[0]['last_eval_iter']
        wall_offset, loss_count = checkpoints[0]['wall_s'], checkpoints[0]['loss_count']

    # ---- run directories: only now are old runs replaced (overwrite) or cut back to their checkpoints -------
    try:  # one wandb run per member, continuing the one in its checkpoint
        runs = [start_tracking(wandb, c, ck and ck.get('wandb_id')) for c, ck in zip(configs, checkpoints)]
    except ValueError as e:
        fail(str(e))
    wandb_ids = [run.id if run is not None else ck and ck.get('wandb_id') for run, ck in zip(runs, checkpoints)]
    for c, ck in zip(reads, checkpoints):
        start_run_dir(c, ck)
    if checkpoints[0] is not None:
        print(f"resumed {K} members from iter {iter_num}")
    del checkpoints

    autocast = (torch.autocast(device_type='cuda', dtype=getattr(torch, shared['dtype']))
                if device_type == 'cuda' and shared['dtype'] != 'float32' else nullcontext())

    def member_checkpoint(k):
        return {'model': stacked.member_state(k, state_keys), 'optimizer': optimizer.member_state(k),
                'sampler': samplers[k].state_dict(), 'torch_rng': torch.get_rng_state(),
                'cuda_rng': torch.cuda.get_rng_state() if device_type == 'cuda' else None,
                'iter_num': iter_num, 'last_eval_iter': last_eval_iter, 'wall_s': wall_offset + time.time() - t0,
                'best': best[k], 'loss_sum': loss_sum[k].item(), 'loss_count': loss_count,
                'query_count': exposure.members[k].query.cpu(), 'seen_count': exposure.members[k].seen.cpu(),
                'config': configs[k], 'group': [c['out_dir'] for c in configs], 'wandb_id': wandb_ids[k]}

    # ---- training loop: train.py's, with a member axis --------------------------------------------
    stop = StopFlag()
    non_finite = NonFinite((K,), device)
    failed = set()  # members whose loss became non-finite: they keep their last good checkpoint, others go on
    t0 = time.time()
    step_rate = StepRate(iter_num)

    def check_finite():
        for k, it in non_finite.new():
            failed.add(k)
            print(f"error: {configs[k]['out_dir']}: loss became non-finite at iter {it}; this member stops here "
                  f"(its last good checkpoint, {os.path.join(configs[k]['out_dir'], CKPT)}, is kept)", file=sys.stderr)
            finish_tracking(runs[k], exit_code=1)

    def live():
        return [(k, c) for k, c in enumerate(reads) if k not in failed]

    while True:
        lr = learning_rate_at(iter_num, shared)
        if eval_due(iter_num, last_eval_iter, shared):
            check_finite()
            rows = []
            for k, c in live():
                template.load_state_dict(stacked.member_state(k, state_keys))
                row, best[k] = evaluate_and_log(template, episodes[k], c, iter_num,
                                                loss_sum[k].item() / loss_count if loss_count else None, member_decay[k],
                                                wall_offset + time.time() - t0, lr, autocast, best[k], runs[k])
                rows.append(row)
            loss_sum.zero_()
            loss_count = 0
            last_eval_iter = iter_num
            for k, c in live():
                checkpoint_run(c, member_checkpoint(k), iter_num)
            print(f"eval {iter_num}: icl " + " ".join(f"{r['icl_acc']:.3f}" for r in rows)
                  + " | iwl " + " ".join(f"{r['iwl_acc']:.3f}" for r in rows), flush=True)
        if iter_num >= shared['max_iters'] or len(failed) == K:
            break
        if stop.requested:
            check_finite()
            stop_and_exit(((c, member_checkpoint(k)) for k, c in live()), [runs[k] for k, _ in live()],
                          f"SIGTERM: checkpointed {K - len(failed)} members at iter {iter_num}; rerun to continue",
                          1 if failed else 0)

        if forget_due(iter_num, shared):  # after this step's eval; each member re-drawn from its own seed, as solo
            for k, _ in live():
                forget({name: t[k] for name, t in {**stacked.params, **stacked.buffers}.items()},
                       fresh_state(configs[k], datas[k], iter_num, forgotten), optimizer.inner.state, stacked.params)
        loss = train_step(stacked, optimizer, sampler, lr, exposure, terms, autocast)
        non_finite.update(loss, iter_num)
        loss_sum += loss
        loss_count += 1
        iter_num += 1

        if iter_num % shared['log_interval'] == 0:
            check_finite()
            print(log_line(iter_num, loss, lr, step_rate(iter_num), shared['max_iters'], members=K), flush=True)

    # ---- summaries ----------------------------------------------------------------------------------
    device_name = torch.cuda.get_device_name(device) if device_type == 'cuda' else 'cpu'
    for k, c in live():
        summary = finish_run(c, best[k], exposure.members[k], device_name, runs[k])
        print(f"done {c['out_dir']}: peak icl {summary['peak_icl_acc']}, final icl {summary['final_icl_acc']:.3f}, "
              f"final iwl {summary['final_iwl_acc']:.3f}")
    sys.exit(1 if failed else 0)
