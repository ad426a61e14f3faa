"""Model shape, attention capture, decay groups, eval metrics."""
import pytest
import torch
import torch.nn as nn

from conftest import scaled_error

from data import make_icl_episodes, make_synthetic
from eval import attention_masses, evaluate, expected_calibration_error
from model import ICLTransformer, ModelConfig


def tiny_model(**kw):
    args = dict(n_labels=32, item_shape=(16,), n_layer=3, n_head=4, n_embd=32)
    args.update(kw)
    torch.manual_seed(0)
    return ICLTransformer(ModelConfig(**args))


def batch(B=6, T=8, dim=16, n_labels=32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, T + 1, dim, generator=g), torch.randint(n_labels, (B, T + 1), generator=g)


def test_logits_shape_and_query_label_is_never_read():
    model = tiny_model()
    items, labels = batch()
    logits = model(items, labels)['logits']
    assert logits.shape == (6, 32)
    other = labels.clone()
    other[:, -1] = (other[:, -1] + 1) % 32
    assert torch.equal(model(items, other)['logits'], logits)


def test_prediction_is_causal_in_the_context():
    """Changing the last context label changes the query logits; the model sees the context."""
    model = tiny_model()
    items, labels = batch()
    other = labels.clone()
    other[:, -2] = (other[:, -2] + 1) % 32
    assert not torch.allclose(model(items, other)['logits'], model(items, labels)['logits'])


def test_the_record_gives_same_logits_valid_attention_and_each_blocks_activations():
    model = tiny_model()
    items, labels = batch()
    plain = model(items, labels)
    assert set(plain) == {'logits'}  # one shape of return, whatever is recorded
    out = model(items, labels, record=('attention', 'attn_out', 'mlp_hidden', 'mlp_out'))
    # recording takes the explicit softmax(QK^T)V path, plain the fused kernel: per layer <= 2 sums of <= 64 terms in
    # another order, over 3 layers: <= 3 x 2 x 64 roundings of the logits' scale
    assert scaled_error(out['logits'], plain['logits']) <= 3 * 2 * 64
    assert len(out['attention']) == 3
    for a in out['attention']:
        assert a.shape == (6, 4, 17, 17)
        assert scaled_error(a.sum(-1), torch.ones(6, 4, 17)) <= 2 * 17   # softmax's sum and division over 17 keys
        assert (a.triu(diagonal=1) == 0).all()   # causal
    assert [h.shape for h in out['mlp_hidden']] == [(6, 17, 4 * 32)] * 3
    assert [a.shape for a in out['attn_out'] + out['mlp_out']] == [(6, 17, 32)] * 6
    with pytest.raises(ValueError, match="unknown 'mlp'"):
        model(items, labels, record=('mlp',))


def test_decay_groups_exclude_layernorm_bias_and_embeddings():
    model = tiny_model()
    decay, no_decay = model.decayed_parameters()
    decay_ids = {id(p) for p in decay}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            should_decay = name == 'weight' and isinstance(module, nn.Linear)
            assert (id(p) in decay_ids) == should_decay, (type(module).__name__, name)
    assert id(model.label_embedding.weight) not in decay_ids
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    from checkpoint import train_defaults
    from optimizer import AdamW
    opt = AdamW([{**train_defaults(), 'weight_decay': 0.01}], model, dict(model.named_parameters()), False)
    assert [g['weight_decay'] for g in opt.state_dict()['param_groups']] == [0.01, 0.0]  # a solo torch AdamW's
    assert [g['weight_decay'] for g in opt.param_groups] == [0.0, 0.0]  # the decay is optimizer.decay_'s alone


def test_bad_model_config_raises():
    with pytest.raises(ValueError, match='n_head'):
        tiny_model(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match='encoder'):
        tiny_model(encoder='mlp')


def test_ece_known_values():
    conf = torch.tensor([0.9, 0.9, 0.9, 0.9])
    assert expected_calibration_error(conf, torch.tensor([True, True, True, True])) == pytest.approx(0.1)
    assert expected_calibration_error(conf, torch.tensor([True, False, True, False])) == pytest.approx(0.4)


def test_attention_masses_on_crafted_attention():
    """Query attends 0.6 to position 2 (context image 1) and 0.3 to position 3 (its label)."""
    T = 8
    att = torch.zeros(1, 1, 2 * T + 1, 2 * T + 1)
    att[0, 0, 2 * T, 2] = 0.6
    att[0, 0, 2 * T, 3] = 0.3
    att[0, 0, 2 * T, 4] = 0.1
    classes = torch.tensor([[5, 7, 6, 6, 6, 6, 6, 6, 7]])   # query class 7 at context slots 1 only
    image, label = attention_masses([att], classes)
    assert image.item() == pytest.approx(0.6)
    assert label.item() == pytest.approx(0.3)


def test_evaluate_returns_all_keys_in_range():
    ds = make_synthetic(20, 6, 32, dim=16, seed=0)
    ep = make_icl_episodes(ds.holdout, 64, seed=0)
    from data import make_iwl_episodes
    iwl = make_iwl_episodes(ds.train, ds.class_labels, 64, seed=0)
    m = evaluate(tiny_model(), ep, iwl)
    for key in ('icl_acc', 'icl_acc_open', 'iwl_acc', 'ece', 'attn_match_image', 'attn_match_label'):
        assert 0.0 <= m[key] <= 1.0, key
    assert len(m['attn_match_image_by_layer']) == 3
    assert m['attn_match_image'] == max(m['attn_match_image_by_layer'])


def test_schedule_and_decay_exponent():
    from model import decay_exponent, learning_rate_at
    cfg = {'learning_rate': 1e-3, 'warmup_iters': 100, 'max_iters': 1000, 'lr_schedule': 'inverse_sqrt',
           'min_lr': 0.0, 'weight_decay': 0.1}
    assert learning_rate_at(0, cfg) == pytest.approx(1e-5)
    assert learning_rate_at(99, cfg) == pytest.approx(1e-3)
    assert learning_rate_at(399, cfg) == pytest.approx(5e-4)          # sqrt(100/400)
    assert learning_rate_at(999, {**cfg, 'lr_schedule': 'cosine'}) == pytest.approx(0.0, abs=1e-8)
    constant = {**cfg, 'lr_schedule': 'constant', 'warmup_iters': 0}
    assert decay_exponent(constant) == pytest.approx(1e-3 * 0.1 * 1000)   # lr*wd*steps
    assert decay_exponent(cfg) < 0.5 * decay_exponent(constant)         # the 1/sqrt decay weakens it
