"""Periodic relabelling (relabel_every) and the wrong-memory share (eval.WrongMemory): the map of each period, the
sequences of a period, IWL against the current map, a resumed run, and the share on a model whose map is known."""
import json

import pytest
import torch

from data import EpisodeSampler, make_synthetic, relabel_map, scored_at
from test_train import eval_cli, metrics, printed_row, train
from eval import WrongMemory
from training import parse_train_args


def config_for(**keys):
    return parse_train_args([f'--{k}={v}' for k, v in keys.items()])


@pytest.fixture(scope='module')
def few():
    return make_synthetic(100, 10, 32, dim=8, exemplars_per_class=5, label_mode='shared', seed=0)


def sampler(data, **keys):
    return EpisodeSampler.from_config(data.train, data.class_labels, config_for(n_train_classes=100, **keys), 'cpu',
                                      n_labels=data.n_labels)


def test_each_period_deals_the_labels_the_classes_own_again(few):
    """Period 0 keeps the data's map; each later one is a permutation of the same labels, new per period, the same for
    every sampler of the data (seeded by data_seed and the period), and a class keeps its label about 1/32 of the time."""
    s = sampler(few, relabel_every=10)
    assert torch.equal(s.labels_at(0), few.class_labels) and torch.equal(s.labels_at(9), few.class_labels)
    maps = [s.labels_at(10 * p) for p in range(1, 41)]
    for m in maps:
        assert torch.equal(m.sort().values, few.class_labels.sort().values)
    assert all(not torch.equal(a, b) for a, b in zip(maps, maps[1:]))
    assert torch.equal(sampler(few, relabel_every=10, seed=5).labels_at(25), maps[1])  # another run, the same map
    assert not torch.equal(relabel_map(few.class_labels, 1, 2), maps[1])               # another data_seed, another
    kept = torch.stack([m == few.class_labels for m in maps]).float().mean().item()
    assert 0.01 < kept < 0.07, kept  # 1/32 = 0.031; 4000 class-periods: standard error 0.003


def test_a_period_s_sequences_are_consistent_under_its_map(few):
    """Every label of a step's batch, context and query, is its class's label under that step's map; off, the data's."""
    on, off = sampler(few, relabel_every=50), sampler(few)
    for step in (0, 49, 50, 120):
        _, labels, classes = on.sample(64, step)
        assert torch.equal(labels, on.labels_at(step)[classes])
    _, labels, classes = off.sample(64, 120)
    assert torch.equal(labels, few.class_labels[classes])
    _, l50, c50 = sampler(few, relabel_every=50).sample(64, 50)
    assert not torch.equal(l50, few.class_labels[c50])  # the rule acts from the first relabel


def test_iwl_is_scored_against_the_map_the_last_step_trained_on(few):
    from data import build_eval_episodes, build_probe_episodes
    config = config_for(n_train_classes=100, relabel_every=25, n_eval_episodes=64, item_dim=8)
    s = EpisodeSampler.from_config(few.train, few.class_labels, config, 'cpu', n_labels=few.n_labels)
    icl, iwl = build_eval_episodes(few, config)
    probes = build_probe_episodes(few, config)
    _, iwl_25, probes_25 = scored_at((icl, iwl, probes), s, 25)     # steps 0-24 trained: period 0
    assert torch.equal(iwl_25.labels, iwl.labels)
    _, iwl_26, probes_26 = scored_at((icl, iwl, probes), s, 26)     # step 25 trained: period 1
    assert torch.equal(iwl_26.labels, s.labels_at(25)[iwl.classes]) and not torch.equal(iwl_26.labels, iwl.labels)
    assert torch.equal(probes_26['conflict_memorised'], s.labels_at(25)[probes['conflict'].classes[:, -1]])


class KnownMap(torch.nn.Module):
    """A model whose in-weights answer is a known class->label map: it finds the query's class by its nearest class
    mean (exact at this noise) and answers the map's label, whatever the context says."""

    def __init__(self, data, label_map):
        super().__init__()
        self.means = data.train.exemplars.mean(1)       # [classes, dim]
        self.label_map, self.n_labels = label_map, data.n_labels

    def forward(self, items, labels, record=(), draws=None):
        query = items[:, -1]
        cls = torch.cdist(query, self.means).argmin(-1)
        return {'logits': torch.nn.functional.one_hot(self.label_map[cls], self.n_labels).float()}


def known_share(data, step, **keys):
    """WrongMemory's share for KnownMap(the data's map), measured at four due steps from `step` on 512 sequences each."""
    config = config_for(n_train_classes=100, item_dim=8, exemplars_per_class=5, n_holdout_classes=10, **keys)
    counter = WrongMemory([config], [data], 'cpu')
    counter.SEQUENCES = 512
    for it in range(step, step + 7 * 4, 7):
        counter.measure(KnownMap(data, data.class_labels), it)
    share = counter.share(0)
    counter.reset()
    assert counter.share(0) is None
    return share


def test_the_wrong_memory_share_on_a_model_whose_map_is_known(few):
    """A model that answers the data's map is never wrong without a lever. Just after a relabel it is wrong on the
    classes whose label changed (the query's class is uniform, so the share is the share of such classes, about
    1 - 1/32 as labels are shared unevenly). Under label swap p it is wrong about p of the time. Bounds: 4 standard
    errors of 2048 sequences (0.011)."""
    assert known_share(few, 0) == 0.0
    changed = (sampler(few, relabel_every=100).labels_at(105) != few.class_labels).float().mean().item()
    assert 0.85 < changed < 1.0
    assert abs(known_share(few, 105, relabel_every=100) - changed) < 0.045
    assert abs(known_share(few, 0, label_swap=0.5) - 0.5) < 0.045


@pytest.mark.slow
def test_a_resumed_relabelling_run_repeats_the_uninterrupted_one(tmp_path):
    """Maps, IWL against them and the wrong-memory share are those of the run that never stopped."""
    args = ['--n_train_classes=50', '--relabel_every=15', '--learning_rate=1e-2']
    train(tmp_path / 'whole', *args, '--max_iters=60')
    train(tmp_path / 'cut', *args, '--max_iters=40')
    train(tmp_path / 'cut', *args, '--max_iters=60', '--init_from=resume')
    whole = metrics(tmp_path / 'whole')
    assert metrics(tmp_path / 'cut') == whole
    assert [r['wrong_memory'] is None for r in whole] == [True, False, False, False]
    summary = json.load(open(tmp_path / 'whole' / 'summary.json'))
    assert summary['config']['relabel_every'] == 15
    # eval.py on the checkpoint scores IWL against the same map as the run's last eval (step 59's, period 3)
    row = printed_row(eval_cli(tmp_path / 'whole'))
    assert row['iter'] == 60 and row['iwl_acc'] == whole[-1]['iwl_acc'] and row['icl_acc'] == whole[-1]['icl_acc']


def test_a_checkpointed_count_resumes_where_it_stopped(few):
    """A run stopped between evals (SIGTERM checkpoints mid-interval) carries its wrong-memory count into its resume."""
    config = config_for(n_train_classes=100, item_dim=8, exemplars_per_class=5, n_holdout_classes=10, label_swap=0.5)
    counted, resumed = WrongMemory([config], [few], 'cpu'), WrongMemory([config], [few], 'cpu')
    counted.measure(KnownMap(few, few.class_labels), 7)
    resumed.load(0, json.loads(json.dumps(counted.state(0))))
    assert resumed.count == 32 and resumed.share(0) == counted.share(0)
