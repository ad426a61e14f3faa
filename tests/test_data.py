"""Sequence statistics of every sequence type, determinism, and the sampler's ValueErrors."""
import pytest
import torch

from data import (ClassBank, EpisodeSampler, assign_labels, draw_classes_excluding, class_cdf, icl_chance,
                  make_icl_episodes, make_iwl_episodes, make_synthetic)


@pytest.fixture(scope='module')
def dataset():
    return make_synthetic(n_train_classes=50, n_holdout_classes=12, n_labels=64, dim=16,
                          exemplars_per_class=20, within_class_noise=0.1, seed=3)


def sampler_for(dataset, **kw):
    args = dict(context_len=8, p_bursty=1.0, bursty_shots=3, ways=2, zipf_alpha=0.0, seed=0)
    args.update(kw)
    return EpisodeSampler(dataset.train, dataset.class_labels, **args)


def test_bursty_sequences_hold_query_class_three_times_and_a_distinct_distractor(dataset):
    _, labels, classes = sampler_for(dataset).sample(2000)
    context, query = classes[:, :8], classes[:, 8]
    query_count = (context == query[:, None]).sum(1)
    assert (query_count >= 3).all()
    # some other class appears >= 3 times too: the distractor, never the query's class
    others = [(context == c[:, None]).sum(1) for c in context.T]
    distractor_present = torch.stack([(o >= 3) & (context[:, i] != query) for i, o in enumerate(others)], 1).any(1)
    assert distractor_present.all()
    assert (labels == dataset.class_labels[classes]).all()


def test_non_bursty_sequences_are_iid(dataset):
    _, _, classes = sampler_for(dataset, p_bursty=0.0).sample(4000)
    query_in_context = (classes[:, :8] == classes[:, 8:]).any(1).float().mean().item()
    expected = 1 - (1 - 1 / 50) ** 8   # uniform over 50 classes
    assert abs(query_in_context - expected) < 0.03


def test_p_bursty_mixes_the_two_kinds(dataset):
    _, _, classes = sampler_for(dataset, p_bursty=0.9).sample(5000)
    has_three = ((classes[:, :8] == classes[:, 8:]).sum(1) >= 3).float().mean().item()
    assert 0.88 < has_three < 0.93   # 0.9 bursty, plus a few non-bursty by chance


def test_exemplars_of_one_class_are_distinct_within_a_sequence():
    bank = ClassBank(torch.arange(5 * 20, dtype=torch.float32).view(5, 20, 1))
    g = torch.Generator().manual_seed(0)
    classes = torch.zeros(100, 9, dtype=torch.long)
    items = bank.gather(classes, g)
    assert all(len(set(row.flatten().tolist())) == 9 for row in items)


def test_zipf_class_distribution(dataset):
    _, _, classes = sampler_for(dataset, p_bursty=0.0, zipf_alpha=1.0).sample(20000)
    counts = torch.bincount(classes.flatten(), minlength=50).float()
    assert counts[0] > 5 * counts[20]
    assert counts[0] / counts[1] == pytest.approx(2.0, rel=0.1)


def test_excluding_draw_never_returns_excluded():
    cdf = class_cdf(3, 2.0, 'cpu')   # very peaked: class 0 dominates, so rejection is exercised
    g = torch.Generator().manual_seed(0)
    excluded = torch.zeros(5000, 1, dtype=torch.long)
    assert (draw_classes_excluding(cdf, excluded, g) != 0).all()


def test_holdout_classes_never_in_training_sequences():
    ds = make_synthetic(30, 10, 30, dim=8, seed=0)
    _, _, classes = sampler_for(ds).sample(3000)
    assert classes.max() < 30
    # holdout prototypes are a different stream: no training exemplar equals a holdout one
    train = ds.train.exemplars.flatten(0, 1)
    hold = ds.holdout.exemplars.flatten(0, 1)
    assert torch.cdist(train, hold).min() > 1e-3


def test_few_and_many_share_holdout_and_first_classes():
    few = make_synthetic(100, 10, 1600, dim=8, seed=0)
    many = make_synthetic(1600, 10, 1600, dim=8, seed=0)
    assert torch.equal(few.holdout.exemplars, many.holdout.exemplars)
    assert torch.equal(few.train.exemplars, many.train.exemplars[:100])
    shared_few = assign_labels(100, 32, 'shared', 0)
    shared_many = assign_labels(1600, 32, 'shared', 0)
    assert torch.equal(shared_few, shared_many[:100])


def test_icl_episodes_distinct_classes_remapped_labels_balanced(dataset):
    ep = make_icl_episodes(dataset.holdout, 400, context_len=8, ways=2, shots=4, seed=1)
    ctx, query = ep.classes[:, :8], ep.classes[:, 8]
    for row_c, row_l in zip(ep.classes, ep.labels):
        assert len(set(row_c[:8].tolist())) == 2                 # two distinct classes
        assert sorted(row_l[:8].tolist()) == [0] * 4 + [1] * 4  # 4 shots each, labels 0/1
        for c in set(row_c.tolist()):                           # one label per class
            assert len(set(row_l[row_c == c].tolist())) == 1
    assert ((ctx == query[:, None]).sum(1) == 4).all()
    assert (ep.labels[:, 8] == 0).float().mean().item() == 0.5   # the query's label, not only its way
    assert icl_chance(ep) == 0.5
    assert set(ep.classes.unique().tolist()) <= set(range(dataset.holdout.n_classes))


def test_icl_chance_is_the_best_constant_answer(dataset):
    ep = make_icl_episodes(dataset.holdout, 101, context_len=8, ways=2, shots=4, seed=5)
    assert icl_chance(ep) == 51 / 101
    assert icl_chance(ep) == max((ep.labels[:, 8] == lbl).sum().item() for lbl in (0, 1)) / 101


def test_episodes_drawn_on_cpu_from_a_moved_bank_is_a_clear_error(dataset):
    """A CUDA bug (data indexed across devices) on a CPU machine: a bank already on another device ('meta' stands in for
    cuda) indexed with CPU class ids. It must fail with a message that names the fix, not index_select's."""
    with pytest.raises(ValueError, match='class ids are on cpu but the exemplars are on meta'):
        make_icl_episodes(dataset.holdout.to('meta'), 16, context_len=8, ways=2, shots=4, seed=0)


def test_build_run_data_moves_everything_after_drawing_on_cpu(monkeypatch):
    """train.py and group.py get their data from build_run_data: with 'meta' standing in for cuda, every
    tensor it returns is on that device, and the episodes equal those drawn on the CPU."""
    import data as data_module
    from training import train_defaults
    config = {**train_defaults(), 'n_train_classes': 60, 'n_holdout_classes': 10, 'n_eval_episodes': 32}
    real = data_module.EpisodeSampler.from_config  # the probes' CPU sampler stays real; the run's on 'meta' is a stand-in
    monkeypatch.setattr(data_module.EpisodeSampler, 'from_config', lambda bank, labels, config, device, **k:
                        (bank, labels) if device == 'meta' else real(bank, labels, config, device, **k))
    moved, (bank, labels), icl, iwl, probes = data_module.build_run_data(config, 'meta')
    tensors = [moved.train.exemplars, moved.holdout.exemplars, moved.class_labels, bank.exemplars, labels,
               icl.items, icl.labels, icl.classes, iwl.items, iwl.labels, iwl.classes,
               probes['train'].items, probes['conflict'].items, probes['conflict_memorised']]
    assert all(t.device.type == 'meta' for t in tensors)
    _, _, cpu_icl, _, _ = data_module.build_run_data(config, 'cpu')
    assert cpu_icl.items.shape == icl.items.shape
    cache = []
    first = data_module.build_run_data(config, 'cpu', cache=cache)
    second = data_module.build_run_data({**config, 'seed': 1, 'weight_decay': 0.1, 'label_swap': 0.5}, 'cpu', cache=cache)
    assert second[0] is first[0] and second[2] is first[2] and len(cache) == 1   # shared, not copied
    third = data_module.build_run_data({**config, 'n_train_classes': 50}, 'cpu', cache=cache)
    assert third[0] is not first[0] and len(cache) == 2   # the data's own key: a copy of its own
    assert {'n_train_classes', 'data_seed', 'p_bursty'} <= set(cache[0][0]) and not {'seed', 'weight_decay', 'label_swap'} & set(cache[0][0])
    assert torch.equal(first[2].labels, cpu_icl.labels)


def test_iwl_episodes_query_class_absent_and_target_is_fixed_label(dataset):
    ep = make_iwl_episodes(dataset.train, dataset.class_labels, 500, context_len=8, seed=2)
    assert not (ep.classes[:, :8] == ep.classes[:, 8:]).any()
    assert torch.equal(ep.labels[:, 8], dataset.class_labels[ep.classes[:, 8]])
    counts = torch.bincount(ep.classes[:, 8], minlength=50)
    assert counts.max() - counts.min() <= 1                    # balanced over seen classes


def test_sampler_is_deterministic_and_state_round_trips(dataset):
    a, b = sampler_for(dataset, seed=7), sampler_for(dataset, seed=7)
    xa, la, ca = a.sample(64)
    xb, lb, cb = b.sample(64)
    assert torch.equal(xa, xb) and torch.equal(ca, cb)
    state = a.state_dict()
    first = a.sample(32)[2]
    a.load_state_dict(state)
    assert torch.equal(a.sample(32)[2], first)
    assert not torch.equal(sampler_for(dataset, seed=8).sample(64)[2], ca)


def test_eval_episodes_fixed_by_seed(dataset):
    e1 = make_icl_episodes(dataset.holdout, 50, seed=5)
    e2 = make_icl_episodes(dataset.holdout, 50, seed=5)
    assert torch.equal(e1.items, e2.items) and torch.equal(e1.labels, e2.labels)


def test_fresh_noise_gives_new_exemplars_each_draw():
    ds = make_synthetic(5, 3, 8, dim=8, exemplars_per_class=0, within_class_noise=0.5, seed=0)
    g = torch.Generator().manual_seed(0)
    c = torch.zeros(1, 9, dtype=torch.long)
    assert not torch.allclose(ds.train.gather(c, g), ds.train.gather(c, g))


@pytest.mark.parametrize('kwargs, name', [
    (dict(p_bursty=1.5), 'p_bursty'),
    (dict(p_bursty=-0.1), 'p_bursty'),
    (dict(bursty_shots=5), 'bursty_shots'),
    (dict(ways=60, bursty_shots=1, context_len=64), 'ways=60 is more than the 50 training classes'),
    (dict(zipf_alpha=-1.0), 'zipf_alpha'),
    (dict(context_len=0), 'context_len'),
])
def test_sampler_rejects_bad_parameters(dataset, kwargs, name):
    with pytest.raises(ValueError, match=name):
        sampler_for(dataset, **kwargs)


def test_dataset_and_episode_value_errors(dataset):
    with pytest.raises(ValueError, match='n_labels'):
        make_synthetic(100, 10, n_labels=50, label_mode='per_class')
    with pytest.raises(ValueError, match='label_mode'):
        assign_labels(10, 10, 'bogus', 0)
    with pytest.raises(ValueError, match='holdout'):
        make_icl_episodes(ClassBank(torch.zeros(1, 20, 4)), 10, ways=2, shots=4)
    with pytest.raises(ValueError, match='context_len'):
        make_icl_episodes(dataset.holdout, 10, context_len=8, ways=2, shots=3)
    with pytest.raises(ValueError, match='n_train_classes'):
        make_synthetic(0, 10, 10)
