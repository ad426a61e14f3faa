"""
The parts that stack K runs into one model for a member-batched group (`python train.py <args> :: <args>`); the
loop is train.py's own, over K members instead of one.

Every parameter and buffer of model.py's unchanged ICLTransformer gets a leading member axis (StackedModel:
torch.func.stack_module_state, the forward vmap over functional_call); optimizer.AdamW steps all members at once,
each with its own decay; each member draws its own batch from its own sampler and seed stream (GroupSampler), so
its numbers do not depend on which cells share its group. On a CPU this buys nothing (the step is compute-bound);
on a GPU one small cell leaves the chip idle.
"""
import copy

import torch
from torch.func import functional_call, stack_module_state, vmap

from optimizer import AdamW
from step import StepTerms


class StackedModel:
    """K copies of one ICLTransformer as stacked tensors; __call__(items [K, B, ...], labels [K, B, S], record) -> the
    forward's record with a leading member axis on every tensor (logits [K, B, n_labels], ...), through
    vmap(functional_call) of the unchanged module."""

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

    def __call__(self, items, labels, record=(), draws=None):
        def one(params, buffers, items, labels, draws):
            return functional_call(self.base, (params, buffers), (items, labels), {'record': record, 'draws': draws})
        return vmap(one, randomness='different')(self.params, self.buffers, items, labels, draws or {})

    def member_state(self, k, keys):
        """Member k's model.state_dict() (the keys of a solo model's state_dict)."""
        every = {**self.params, **self.buffers}
        return {name: every[name][k].detach().clone() for name in keys}

    def load_member_state(self, k, state):
        with torch.no_grad():
            for name, value in state.items():
                target = self.params.get(name, self.buffers.get(name))
                target[k].copy_(value)


def stack_group(models, configs, device_type):
    """(stacked model, optimizer, StepTerms) for K models of one architecture and their runs' configs. The stacked
    decayed group is every Linear/Conv weight; member k decays, and is penalised on, those of its own decay_modules
    with its own weight_decay and penalties (optimizer.AdamW and step.StepTerms, as in its solo run)."""
    stacked = StackedModel(models)
    every = models[0].decayed_parameters('all')[0]
    mine = [{id(p) for p in models[0].decayed_parameters(c['decay_modules'])[0]} for c in configs]
    decays = [[id(p) in chosen for chosen in mine] for p in every]  # decays[i][k]: member k decays tensor i
    decayed = [stacked.params[stacked.name_of[id(p)]] for p in every]
    optimizer = AdamW(configs, models[0], stacked.params, device_type == 'cuda')
    return stacked, optimizer, StepTerms(configs, decayed, decays)


class GroupSampler:
    """Each member's own EpisodeSampler (own classes, own seed stream), batches stacked on a member axis."""

    def __init__(self, samplers):
        self.samplers = samplers

    def sample(self, batch_size, step=0):
        draws = [s.sample(batch_size, step) for s in self.samplers]
        return torch.stack([d[0] for d in draws]), torch.stack([d[1] for d in draws]), [d[2] for d in draws]


class GroupExposure:
    def __init__(self, exposures):
        self.members = exposures

    def add(self, classes):
        for exposure, c in zip(self.members, classes):
            exposure.add(c)
