"""
The one optimizer of a run and of a group, and where an optimizer-side lever goes: AdamW (torch's, with the decoupled
decay written here once for a run and a group) steps with model.py's lr and weight-decay schedules.
"""
import torch

from model import learning_rate_at, weight_decay_at


def decay_(p, lr, wd):
    """Decoupled weight decay, AdamW's first half, written once for a run and a group: p shrinks by (1 - lr*wd).
    wd is a float (a run: the factor is a Python float, as in torch's AdamW) or a float64 [K] tensor (a group's
    stacked p, member k on row k: the factor computed in float64 and rounded once, so each member shrinks exactly as
    its solo run)."""
    if isinstance(wd, torch.Tensor):
        p.mul_((1 - lr * wd).to(p.device, p.dtype).view(-1, *[1] * (p.dim() - 1)))
    elif wd:
        p.mul_(1 - lr * wd)


class AdamW:
    """The one optimizer of a run and of a group (stacked parameters with a leading member axis). step(it) sets the
    lr (model.learning_rate_at), shrinks each decayed tensor by lr * model.weight_decay_at (each member's own, 0 where
    its decay_modules leave the tensor out), then torch's AdamW with no decay of its own applies Adam's update: AdamW's
    order, so a run is bit-identical to torch.optim.AdamW(weight_decay=wd), and a schedule of either is one edit in
    model.py. state_dict(k) is member k's state as a solo run's torch AdamW state_dict (its decay group first, with
    its weight_decay), so every checkpoint has one format and old ones load.

    configs: each member's; template: a solo model of the architecture (its tensors give the solo order and layout);
    params: name -> the tensor trained (the template's own for a run, the stacked one for a group)."""

    def __init__(self, configs, template, params, fused):
        name_of = {id(p): n for n, p in template.named_parameters()}
        self.configs, self.params = configs, params
        self.stacked = any(params[n] is not p for n, p in template.named_parameters())  # a member axis
        self.like = {n: p for n, p in template.named_parameters()}
        self.orders = []  # member k's solo order: (its decayed names, the others)
        for c in configs:
            decay, no_decay = template.decayed_parameters(c['decay_modules'])
            self.orders.append(([name_of[id(p)] for p in decay], [name_of[id(p)] for p in no_decay]))
        decay = self.orders[0][0] if not self.stacked else [name_of[id(p)] for p in template.decayed_parameters()[0]]
        self.masks = torch.tensor([[n in order[0] for order in self.orders] for n in decay], dtype=torch.float64)
        self.inner = torch.optim.AdamW(
            [{'params': [params[n] for n in decay], 'weight_decay': 0.0},
             {'params': [p for n, p in params.items() if n not in set(decay)], 'weight_decay': 0.0}],
            lr=configs[0]['learning_rate'], betas=(configs[0]['beta1'], configs[0]['beta2']), fused=fused)
        self.param_groups = self.inner.param_groups

    @torch.no_grad()
    def step(self, it):
        lr = learning_rate_at(it, self.configs[0])
        for group in self.param_groups:
            group['lr'] = lr
        wds = [weight_decay_at(it, c) for c in self.configs]
        if any(wds):
            for p, mask in zip(self.param_groups[0]['params'], self.masks):
                decay_(p, lr, torch.tensor(wds, dtype=torch.float64) * mask if self.stacked else wds[0])
        self.inner.step()

    def zero_grad(self, set_to_none=True):
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self, k=0):
        """Member k's state in the format of its solo run's torch AdamW, laid out like the solo parameter (fused
        AdamW wants that: the stacked tensors are plain, a solo ResNet's are channels_last)."""
        decay, no_decay = self.orders[k]
        state = {}
        for index, name in enumerate(decay + no_decay):
            inner = self.inner.state.get(self.params[name])
            if inner:
                state[index] = {'step': inner['step'].detach().clone(), **{
                    key: torch.empty_like(self.like[name]).copy_(inner[key][k] if self.stacked else inner[key])
                    for key in ('exp_avg', 'exp_avg_sq')}}
        hyper = {key: v for key, v in self.param_groups[0].items() if key != 'params'}
        return {'state': state, 'param_groups': [
            {**hyper, 'weight_decay': self.configs[k]['weight_decay'], 'params': list(range(len(decay)))},
            {**hyper, 'weight_decay': 0.0, 'params': list(range(len(decay), len(decay) + len(no_decay)))}]}

    def load_state_dicts(self, states):
        """The state from each member's solo-format state (a list; a run's is one). Copied tensor by tensor, never
        through torch's load_state_dict, which would also restore the saved group's weight_decay into the inner
        AdamW and decay twice."""
        by_name = [{n: state['state'].get(i) for i, n in enumerate(order[0] + order[1])}
                   for order, state in zip(self.orders, states)]
        self.inner.state.clear()  # the state becomes the loaded one, as torch's load_state_dict makes it
        for name, target in self.params.items():
            per_member = [m.get(name) for m in by_name]
            if all(per_member):
                self.inner.state[target] = {key: torch.empty_like(target).copy_(
                    torch.stack([m[key] for m in per_member]) if self.stacked else per_member[0][key])
                    for key in ('exp_avg', 'exp_avg_sq')}
                step = per_member[0]['step']
                self.inner.state[target]['step'] = step.to(target.device) if self.inner.defaults['fused'] else step
