"""Omniglot: loading and its cache, clear data errors, the class split (augmented transforms,
holdout isolation, Few a prefix of Many), the ResNet encoder, the paper configs and a short
train.py run. The data-backed tests read ../shared/data/omniglot (read-only) and share one
decode through a session-scoped cache in a temporary folder."""
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

import data
from conftest import ROOT, scaled_error
from data import (N_CHARACTERS, load_omniglot, make_omniglot, omniglot_class_split, omniglot_files, read_cache,
                  write_cache)
from model import ICLTransformer, ModelConfig

DATA_DIR = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'data', 'omniglot'))
HAVE_DATA = all(os.path.isdir(os.path.join(DATA_DIR, 'omniglot-py', s)) for s in data.OMNIGLOT_SPLITS)
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"Omniglot not found at {DATA_DIR}/omniglot-py "
                                                      f"(images_background, images_evaluation)")


@pytest.fixture(scope='session')
def omniglot(tmp_path_factory):
    """(cache_dir, images uint8 [1623, 20, 105, 105]): one cold decode for the whole session."""
    cache = str(tmp_path_factory.mktemp('omniglot_cache'))
    t = time.perf_counter()
    images = load_omniglot(DATA_DIR, cache, download=False)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    again = load_omniglot(DATA_DIR, cache, download=False)
    print(f"\nomniglot: cold decode+cache {cold:.1f} s, warm load {time.perf_counter() - t:.2f} s")
    assert np.array_equal(images, again)
    return cache, images


def never_decode(files):
    raise AssertionError("decoded the PNGs although a valid cache exists")


# ---- loading and the cache ----------------------------------------------------------------

@needs_data
@pytest.mark.slow
def test_counts_shapes_and_pixels(omniglot):
    cache, images = omniglot
    assert images.shape == (1623, 20, 105, 105) and images.dtype == np.uint8
    assert set(np.unique(images[:50]).tolist()) == {0, 255}      # binary: strokes 0, background 255
    ink = (images == 0).mean(axis=(2, 3))
    assert ink.min() > 0.001 and ink.max() < 0.5                    # no blank or inverted image
    assert (images[:, :, 0, 0] == 255).mean() > 0.99                # white background
    assert 'omniglot_105.npz' in os.listdir(cache) and all(n.endswith('.npz') for n in os.listdir(cache))
    assert not any(name.endswith('.npz') for _, _, names in os.walk(DATA_DIR) for name in names)
    files, _ = omniglot_files(DATA_DIR, download=False)
    assert len(files) == N_CHARACTERS and {len(f) for f in files} == {20}
    assert files[0][0].endswith('_01.png') and files[0][19].endswith('_20.png')
    assert '/images_background/' in files[963][0] and '/images_evaluation/' in files[964][0]


@needs_data
@pytest.mark.slow
def test_warm_load_reads_the_cache_not_the_pngs(omniglot, monkeypatch):
    cache, images = omniglot
    monkeypatch.setattr(data, 'decode_omniglot', never_decode)
    assert np.array_equal(load_omniglot(DATA_DIR, cache, download=False), images)


@needs_data
@pytest.mark.slow
def test_stale_cache_is_rebuilt(omniglot, tmp_path, monkeypatch, capsys):
    _, images = omniglot
    files, fingerprint = omniglot_files(DATA_DIR, download=False)
    path = str(tmp_path / 'omniglot_105.npz')
    write_cache(path, np.zeros((1623, 20, 1, 1), np.uint8), data._cache_meta('other files', 105))
    calls = []
    monkeypatch.setattr(data, 'decode_omniglot', lambda f: calls.append(len(f)) or images)
    out = load_omniglot(DATA_DIR, str(tmp_path), download=False)
    assert calls == [N_CHARACTERS] and 'is stale' in capsys.readouterr().out
    assert np.array_equal(out, images)
    assert np.array_equal(read_cache(path, data._cache_meta(fingerprint, 105)), images)  # rewritten


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'flipped_byte'])
def test_corrupt_cache_gives_a_message_and_is_rebuilt(omniglot, tmp_path, monkeypatch, capsys, damage):
    cache, images = omniglot
    path = str(tmp_path / 'omniglot_105.npz')
    shutil.copy(os.path.join(cache, 'omniglot_105.npz'), path)
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        if damage == 'garbage':
            f.write(b'not a cache')
            f.truncate()
        elif damage == 'truncated':
            f.truncate(size // 2)
        else:  # one bit inside the image data: only the zip's CRC-32 notices
            f.seek(int(size * 0.6))
            byte = f.read(1)[0]
            f.seek(int(size * 0.6))
            f.write(bytes([byte ^ 1]))
    calls = []
    monkeypatch.setattr(data, 'decode_omniglot', lambda f: calls.append(1) or images)
    out = load_omniglot(DATA_DIR, str(tmp_path), download=False)
    assert calls == [1]
    assert f"cache {path} is unreadable" in capsys.readouterr().out
    assert np.array_equal(out, images)
    monkeypatch.setattr(data, 'decode_omniglot', never_decode)
    assert np.array_equal(load_omniglot(DATA_DIR, str(tmp_path), download=False), images)


@needs_data
@pytest.mark.slow
def test_downsampled_images_are_cached_separately(omniglot, monkeypatch):
    cache, images = omniglot
    monkeypatch.setattr(data, 'decode_omniglot', never_decode)  # built from the 105 cache
    small = load_omniglot(DATA_DIR, cache, image_size=28, download=False)
    assert small.shape == (1623, 20, 28, 28) and small.dtype == np.uint8
    assert os.path.exists(os.path.join(cache, 'omniglot_28.npz'))
    # a faithful shrink: the same picture as a plain block average, with grey levels at stroke edges
    block_mean = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(images[:20]).float(), 28)
    shrunk = torch.from_numpy(small[:20]).float()
    assert torch.corrcoef(torch.stack([shrunk.flatten(), block_mean.flatten()]))[0, 1] > 0.95
    assert abs(shrunk.mean() - block_mean.mean()) < 3 and len(np.unique(small[:20])) > 50
    assert np.array_equal(load_omniglot(DATA_DIR, cache, image_size=28, download=False), small)


def test_missing_folder_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images_background not found.*data_dir=.*get it with"):
        load_omniglot(str(tmp_path / 'nowhere'), str(tmp_path / 'cache'), download=False)


def write_png(path, size=105):
    """A 1-bit PNG like Omniglot's: white with one black stroke."""
    from PIL import Image
    pixels = np.ones((size, size), dtype=bool)
    pixels[size // 3:size // 2, size // 2] = False
    Image.fromarray(pixels).save(path)


def test_incomplete_data_names_the_folder(tmp_path):
    folder = tmp_path / 'omniglot-py' / 'images_background' / 'Alphabet' / 'character01'
    folder.mkdir(parents=True)
    (tmp_path / 'omniglot-py' / 'images_evaluation').mkdir()
    for d in range(3):
        write_png(folder / f'0001_{d + 1:02d}.png')
    with pytest.raises(ValueError, match=rf"{folder} holds 3 PNGs, expected 20"):
        omniglot_files(str(tmp_path), download=False)
    for d in range(3, 20):
        write_png(folder / f'0001_{d + 1:02d}.png')
    with pytest.raises(ValueError, match=r"holds 1 characters, expected 1623"):
        omniglot_files(str(tmp_path), download=False)


def test_unreadable_or_wrong_size_image_names_the_path(tmp_path):
    good, bad, small = tmp_path / 'good.png', tmp_path / 'bad.png', tmp_path / 'small.png'
    write_png(good)
    bad.write_bytes(b'\x89PNG not really')
    write_png(small, size=28)
    assert data.decode_omniglot([[str(good)] * 20]).shape == (1, 20, 105, 105)
    with pytest.raises(ValueError, match=rf"cannot read Omniglot image {bad}"):
        data.decode_omniglot([[str(good)] * 19 + [str(bad)]])
    with pytest.raises(ValueError, match=rf"{small} is 28x28, expected 105x105"):
        data.decode_omniglot([[str(small)] * 20])
    with pytest.raises(ValueError, match=r"cache_dir=.* is inside data_dir"):
        load_omniglot(DATA_DIR, os.path.join(DATA_DIR, 'cache'), download=False)


# ---- classes --------------------------------------------------------------------------------

@pytest.mark.parametrize('mode,per_char,n_holdout', [('all_exemplars', 1, 23), ('augmented', 8, 80)])
def test_holdout_is_whole_characters_fixed_across_cells_and_few_is_a_prefix(mode, per_char, n_holdout):
    many_train, many_holdout = omniglot_class_split(1600, n_holdout, mode, seed=0)
    few_train, few_holdout = omniglot_class_split(100, n_holdout, mode, seed=0)
    assert torch.equal(many_holdout, few_holdout) and torch.equal(few_train, many_train[:100])
    assert len(many_holdout) == n_holdout and len(set(map(tuple, many_train.tolist()))) == 1600
    # every transform of a held-out character is held out, and none of them is ever trained on
    n_all = (N_CHARACTERS - n_holdout // per_char) * per_char
    all_train, holdout = omniglot_class_split(n_all, n_holdout, mode, seed=0)
    held_chars = set(holdout[:, 0].tolist())
    assert len(held_chars) == n_holdout // per_char
    assert not held_chars & set(all_train[:, 0].tolist())
    assert sorted(map(tuple, holdout.tolist())) == sorted((c, t) for c in held_chars for t in range(per_char))
    assert len(set(map(tuple, all_train.tolist())) | set(map(tuple, holdout.tolist()))) == N_CHARACTERS * per_char
    other_train, other_holdout = omniglot_class_split(1600, n_holdout, mode, seed=1)
    assert not torch.equal(other_holdout, many_holdout) and not torch.equal(other_train, many_train)


def test_class_split_errors_name_the_key():
    with pytest.raises(ValueError, match=r"n_holdout_classes=23 must be a positive multiple of 8"):
        omniglot_class_split(100, 23, 'augmented')
    with pytest.raises(ValueError, match=r"n_train_classes=1601 must be in \[1, 1600\]"):
        omniglot_class_split(1601, 23, 'all_exemplars')
    with pytest.raises(ValueError, match=r"omniglot_classes='rotated' must be one of"):
        data.check_omniglot_config('rotated', 105)
    with pytest.raises(ValueError, match=r"image_size=200 must be in \[8, 105\]"):
        data.check_omniglot_config('augmented', 200)


@needs_data
@pytest.mark.slow
def test_augmented_classes_are_the_flipped_and_rotated_characters(omniglot):
    _, images = omniglot
    train_ids, holdout_ids = omniglot_class_split(1600, 80, 'augmented', seed=0)
    ds = make_omniglot(torch.from_numpy(images), 1600, 80, 1623, classes='augmented')
    assert ds.train.exemplars.shape == (1600, 20, 105, 105) and ds.train.exemplars.dtype == torch.uint8
    assert ds.holdout.exemplars.shape == (80, 20, 105, 105) and ds.n_labels == 1623
    assert torch.equal(ds.class_labels, torch.arange(1600))
    for bank, ids in [(ds.train, train_ids), (ds.holdout, holdout_ids)]:
        for i in list(range(0, len(ids), 97)) + [len(ids) - 1]:
            c, t = ids[i].tolist()
            expected = images[c][:, :, ::-1] if t >= 4 else images[c]            # numpy: flip left-right,
            expected = np.rot90(expected, t % 4, axes=(1, 2))                    # then t%4 quarter turns CCW
            assert np.array_equal(bank.exemplars[i].numpy(), expected), (c, t)
    # one character's 8 classes: identity, 90 degrees counter-clockwise, mirror; all 8 images differ
    c = holdout_ids[0, 0].item()
    eight = ds.holdout.exemplars[:8, 0].numpy()
    assert np.array_equal(eight[0], images[c, 0]) and np.array_equal(eight[1], np.rot90(images[c, 0]))
    assert np.array_equal(eight[4], images[c, 0, :, ::-1])
    assert len({x.tobytes() for x in eight}) == 8


@needs_data
@pytest.mark.slow
def test_all_exemplars_classes_are_the_characters(omniglot):
    _, images = omniglot
    train_ids, holdout_ids = omniglot_class_split(100, 23, 'all_exemplars', seed=0)
    ds = make_omniglot(torch.from_numpy(images), 100, 23, 1623)
    assert (train_ids[:, 1] == 0).all() and (holdout_ids[:, 1] == 0).all()
    assert torch.equal(ds.train.exemplars, torch.from_numpy(images[train_ids[:, 0].numpy()]))
    assert torch.equal(ds.holdout.exemplars, torch.from_numpy(images[holdout_ids[:, 0].numpy()]))


# ---- the ResNet encoder ------------------------------------------------------------------------

def resnet_model(size=28, n_embd=32, pixel_noise=0.0):
    torch.manual_seed(0)
    return ICLTransformer(ModelConfig(n_labels=50, item_shape=(size, size), encoder='resnet', n_layer=1,
                                      n_head=4, n_embd=n_embd, pixel_noise=pixel_noise))


def test_resnet_encoder_shapes_and_architecture():
    model = resnet_model(size=105, n_embd=64)
    items = torch.randint(0, 256, (2, 9, 105, 105), dtype=torch.uint8)
    assert model(items, torch.randint(0, 50, (2, 9)))['logits'].shape == (2, 50)
    encoder = model.encoder
    assert encoder(items[0]).shape == (9, 64)
    stem = encoder.net[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride) == (1, 64, (7, 7), (2, 2))
    assert isinstance(encoder.net[3], nn.MaxPool2d) and encoder.net[3].stride == 2
    blocks = list(encoder.net)[4:]
    assert [b.conv3.out_channels for b in blocks] == [16, 16, 32, 32, 32, 32, 64, 64]
    assert [b.conv2.stride[0] for b in blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert [b.conv2.out_channels for b in blocks] == [4, 4, 8, 8, 8, 8, 16, 16]
    assert [b.downsample is not None for b in blocks] == [True, False] * 4
    assert all((b.bn3.weight == 0).all() for b in blocks)
    with pytest.raises(ValueError, match=r"n_embd=30 divisible by 4"):
        resnet_model(n_embd=30)


def test_resnet_weight_decay_groups():
    model = resnet_model()
    decay, no_decay = model.decayed_parameters()
    decay_ids, no_decay_ids = {id(p) for p in decay}, {id(p) for p in no_decay}
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 29 and all(id(m.weight) in decay_ids for m in convs)
    assert len(norms) == 29 and all(id(p) in no_decay_ids for m in norms for p in m.parameters())
    assert len(decay_ids & no_decay_ids) == 0
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_pixel_noise_only_while_training_and_chunked_eval_is_exact():
    items = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8)
    clean, noisy = resnet_model().encoder.eval(), resnet_model(pixel_noise=0.3).encoder.eval()
    assert torch.equal(noisy(items), clean(items))                    # same weights, no noise in eval: one computation
    whole = clean(items)
    clean.train(), noisy.train()
    assert torch.equal(clean(items), clean(items))
    assert not torch.allclose(noisy(items), noisy(items))              # fresh noise on every call
    assert not torch.allclose(noisy(items), clean(items), atol=1e-3)
    clean.eval()
    clean.load_state_dict(resnet_model().encoder.state_dict())        # undo the running-stat updates
    clean.eval_chunk = 7
    # 7 images at a time against 40: convolutions blocked otherwise, <= 64 roundings per op (the widest sum: 64
    # channels) over <= 26 ops deep (stem, 4 groups of 2 bottlenecks of 3 convs, the mean), of the output's scale
    assert scaled_error(clean(items), whole) <= 26 * 64


# ---- configs and train.py ----------------------------------------------------------------------

def read_config(*names):
    namespace = {}
    for name in names:
        exec(open(os.path.join(ROOT, 'config', name)).read(), namespace)
    return namespace


def test_paper_configs():
    paper = read_config('omniglot.py')
    assert (paper['n_layer'], paper['n_embd'], paper['n_head'], paper['batch_size']) == (12, 64, 8, 32)
    assert (paper['learning_rate'], paper['warmup_iters'], paper['lr_schedule']) == (3e-4, 4000, 'inverse_sqrt')
    assert (paper['p_bursty'], paper['bursty_shots'], paper['ways'], paper['max_iters']) == (0.9, 3, 2, 500000)
    assert paper['weight_decay'] == 0 and paper['eval_interval'] == 1000
    few, many = read_config('omniglot.py', 'few.py'), read_config('omniglot.py', 'many.py')
    assert (few['n_train_classes'], many['n_train_classes']) == (100, 1600)
    for cell in (few, many):
        omniglot_class_split(cell['n_train_classes'], cell['n_holdout_classes'], cell['omniglot_classes'])
        assert cell['n_labels'] >= cell['n_train_classes'] and cell['n_labels'] == paper['n_labels']
    for width in ('d48.py', 'd96.py'):
        cfg = read_config('omniglot.py', width)
        assert cfg['n_embd'] in (48, 96) and cfg['n_embd'] % cfg['n_head'] == 0 and cfg['n_embd'] % 4 == 0


def test_small_omniglot_config_changes_only_the_scale():
    """config/omniglot_small.py is an overlay: everything but image size, depth and the step budget and
    schedule stays the paper cell's, so its Few/Many cells are the paper's cells at a smaller scale."""
    paper, small = read_config('omniglot.py'), read_config('omniglot.py', 'omniglot_small.py')
    scale_keys = {'image_size', 'n_layer', 'learning_rate', 'lr_schedule', 'warmup_iters', 'max_iters',
                  'eval_interval', 'log_interval'}
    changed = {k for k in paper if not k.startswith('_') and paper[k] != small[k]}
    assert changed == scale_keys
    assert (small['image_size'], small['n_layer'], small['max_iters']) == (14, 4, 10000)
    assert (small['n_embd'], small['n_head'], small['batch_size'], small['n_labels']) == (64, 8, 32, 1623)
    grid_cfg = read_config('grid.py')   # the posed grid at this scale: Few/Many x the five decays x seeds 0-2
    assert grid_cfg['classes'] == 'few,many' and grid_cfg['seeds'] == '0,1,2'
    assert grid_cfg['weight_decays'] == '0,3e-4,1e-3,3e-3,1e-2'

def run_train(*args, timeout=120):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'})


@pytest.mark.slow
def test_train_py_missing_data_is_one_line(tmp_path):
    (tmp_path / 'data' / 'omniglot-py' / 'images_background').mkdir(parents=True)  # evaluation half missing
    proc = run_train('config/omniglot.py', 'config/few.py', f'--out_dir={tmp_path / "out"}',
                     f'--data_dir={tmp_path / "data"}', f'--cache_dir={tmp_path / "cache"}')
    assert proc.returncode == 2
    assert proc.stderr.startswith('error: Omniglot folder') and proc.stderr.count('\n') == 1
    assert str(tmp_path / 'data' / 'omniglot-py' / 'images_evaluation') in proc.stderr
    assert 'get it with' in proc.stderr and not (tmp_path / 'out' / 'metrics.jsonl').exists()


@needs_data
@pytest.mark.slow
def test_small_omniglot_cell_runs(omniglot, tmp_path):
    """The CPU-scale Many cell as configured (14x14 images through the paper's ResNet, 4 layers), cut short."""
    cache, _ = omniglot
    out = tmp_path / 'out'
    proc = run_train('config/omniglot.py', 'config/omniglot_small.py', 'config/many.py', f'--out_dir={out}',
                     f'--cache_dir={cache}', '--max_iters=20', '--eval_interval=20', '--log_interval=10',
                     '--n_eval_episodes=64')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '4 layers, d=64' in proc.stdout and '1600 train / 23 holdout classes, 1623 labels' in proc.stdout
    rows = [json.loads(line) for line in open(out / 'metrics.jsonl')]
    assert [r['iter'] for r in rows] == [0, 20] and all(math.isfinite(r['train_loss']) for r in rows[1:])
    assert json.load(open(out / 'summary.json'))['config']['image_size'] == 14

@needs_data
@pytest.mark.slow
def test_train_py_omniglot_few_cell_runs_and_learns(omniglot, tmp_path):
    cache, _ = omniglot
    out = tmp_path / 'out'
    proc = run_train('config/omniglot.py', 'config/few.py', '--weight_decay=1e-3', '--seed=1', f'--out_dir={out}',
                     f'--cache_dir={cache}', '--image_size=28', '--n_layer=2', '--n_embd=32', '--n_head=4',
                     '--batch_size=16', '--max_iters=150', '--eval_interval=50', '--log_interval=50',
                     '--warmup_iters=10', '--learning_rate=1e-3', '--n_eval_episodes=128')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '100 train / 23 holdout classes, 1623 labels' in proc.stdout
    rows = [json.loads(line) for line in open(out / 'metrics.jsonl')]
    assert [r['iter'] for r in rows] == [0, 50, 100, 150]
    assert rows[-1]['tokens'] == 150 * 16 * 17
    assert rows[-1]['train_loss'] < math.log(1623) - 1.0      # learned at least the 100-label prior
    summary = json.load(open(out / 'summary.json'))
    assert summary['config']['dataset'] == 'omniglot' and summary['config']['weight_decay'] == 1e-3
    from model import decay_exponent   # wd * sum of the scheduled lr: below lr*wd*steps during warmup/decay
    assert summary['decay_exponent'] == pytest.approx(decay_exponent(summary['config']))
    assert 0 < summary['decay_exponent'] < 1e-3 * 1e-3 * 150
    exposure = json.load(open(out / 'exposure.json'))
    assert len(exposure['query_count']) == 100 and sum(exposure['query_count']) == 150 * 16
    assert sum(exposure['seen_count']) == 150 * 16 * 9
    assert summary['exposure']['query']['min'] <= summary['exposure']['query']['median'] \
        <= summary['exposure']['query']['max']
