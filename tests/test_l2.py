"""Classical L2 (config key l2): 1/2*l2*||w||^2 enters the loss, over the decayed group only."""
import torch

from checkpoint import train_defaults
from conftest import scaled_error
from data import make_synthetic, EpisodeSampler
from model import ICLTransformer, ModelConfig
from step import Exposure, StepTerms, l2_penalty, train_step


def tiny():
    torch.manual_seed(0)
    model = ICLTransformer(ModelConfig(n_labels=16, item_shape=(8,), n_layer=2, n_head=2, n_embd=16))
    with torch.no_grad():  # non-zero biases / norms / embeddings, so "not penalised" is a real check
        for name, p in model.named_parameters():
            if not name.endswith('weight') or p.dim() == 1 or 'embedding' in name:
                p.add_(0.5)
    return model


def test_penalty_is_half_l2_times_squared_norm_of_the_decayed_group_only():
    model = tiny()
    decay, no_decay = model.decayed_parameters()
    expected = 0.5 * 0.3 * sum((p.detach() ** 2).sum() for p in decay)
    # sums of n positive terms in another order: <= n roundings of the total (n: the decayed weights' count)
    assert scaled_error(l2_penalty(decay, 0.3), expected) <= sum(p.numel() for p in decay)
    everything = 0.5 * 0.3 * sum((p.detach() ** 2).sum() for p in model.parameters())
    assert not torch.allclose(l2_penalty(decay, 0.3), everything)   # biases/norms/embeddings are left out


def test_penalty_gradient_is_l2_times_w_on_decayed_and_zero_elsewhere():
    model = tiny()
    decay, no_decay = model.decayed_parameters()
    l2_penalty(decay, 0.25).backward()
    for p in decay:
        assert scaled_error(p.grad, 0.25 * p.detach()) <= 2   # 0.5 * 0.25 * 2w: two roundings of w's scale
    assert all(p.grad is None for p in no_decay)


def test_group_penalty_is_per_member():
    stacked = [torch.tensor([[1.0, 2.0], [3.0, 4.0]])]          # member axis first: K=2
    out = l2_penalty(stacked, torch.tensor([0.0, 2.0]), member_shape=(2,))
    assert torch.equal(out, torch.tensor([0.0, 0.5 * 2.0 * 25.0]))


class RecordingSGD(torch.optim.SGD):
    """Keeps the gradients the step saw (train_step clears them afterwards)."""

    def step(self, it):  # train_step passes the step number (optimizer.AdamW's schedule)
        self.seen = [p.grad.clone() if p.grad is not None else None for g in self.param_groups for p in g['params']]
        return super().step()


def step_grads(l2):
    model = tiny()
    data = make_synthetic(30, 5, 16, dim=8, exemplars_per_class=5, label_mode='shared', seed=0)
    sampler = EpisodeSampler(data.train, data.class_labels, seed=0)
    decay, no_decay = model.decayed_parameters()
    optimizer = RecordingSGD([{'params': decay}, {'params': no_decay}], lr=0.0)
    terms = StepTerms([{**train_defaults(), 'batch_size': 8, 'l2': l2}], decay)
    loss = train_step(model, optimizer, sampler, 0, Exposure(30, 'cpu'), terms)
    return loss, optimizer.seen, [p.detach() for p in decay], len(decay)


def test_train_step_adds_l2_gradient_and_reports_the_data_loss():
    loss0, grads0, weights, n_decay = step_grads(0.0)
    loss1, grads1, _, _ = step_grads(0.1)
    assert torch.equal(loss0, loss1)                             # the logged loss is the data loss alone
    for g0, g1, w in zip(grads0[:n_decay], grads1[:n_decay], weights):
        # g1 = g0 + 0.1 w in float32 (the data part the same computation): one rounding of g1 in the sum, one of
        # 0.1 w, one in the subtraction: <= 3 roundings of the gradient's scale
        assert scaled_error(g1 - g0, 0.1 * w, scale=max(g1.abs().max(), (0.1 * w).abs().max()).item()) <= 3
    for g0, g1 in zip(grads0[n_decay:], grads1[n_decay:]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
