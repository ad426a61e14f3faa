"""
Datasets and the episode sampler.

A dataset is two ClassBanks (training classes and held-out classes) plus a fixed label id per
training class. The sampler builds a whole batch of sequences at once with tensor ops on the
training device: first it draws class and exemplar *indices*, then does one gather from the
exemplar tensor. A sequence is `context_len` (item, label) pairs and one query item; the target
is the query's label.

Training sequences follow Chan et al. 2022 (and the DeepMind reference generator): with
probability p_bursty a sequence holds `bursty_shots` exemplars of each of `ways` distinct classes
(the query's class and its distractors), the remaining context slots drawn from the class
distribution, the context order shuffled, the query from one of the bursty classes. Otherwise
context and query are drawn i.i.d. from the class distribution (uniform or Zipf).
Exemplars of one class inside one sequence are distinct, as in the reference.

Omniglot (Lake et al. 2015, 1623 characters x 20 drawers) is decoded once into a uint8 array that is
cached outside the data folder; its classes are characters, or characters x 8 flips/rotations.
"""
import difflib
import hashlib
import inspect
import json
import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from checkpoint import KeyReads


@dataclass
class ClassBank:
    """Exemplars of a set of classes: exemplars[c, e] is exemplar e of class c.

    fresh_noise > 0 turns each draw into a new exemplar (x + eps*eta)/sqrt(1+eps^2), so a
    class has infinitely many exemplars and nothing but the prototype can be memorised.
    """
    exemplars: torch.Tensor      # [n_classes, n_exemplars, *item_shape], float or uint8
    fresh_noise: float = 0.0

    @property
    def n_classes(self):
        return self.exemplars.shape[0]

    @property
    def n_exemplars(self):
        return self.exemplars.shape[1]

    def to(self, device):
        return ClassBank(self.exemplars.to(device), self.fresh_noise)

    def gather(self, classes, generator, copy_of=None):
        """Items for a [B, T] tensor of class ids, exemplars distinct within each row when possible. copy_of [B, T]
        (EpisodeSampler.copy_sources): position t shows the very item at position copy_of[b, t] (instance copies)."""
        B, T = classes.shape
        E = self.n_exemplars
        if classes.device != self.exemplars.device:  # a clear error instead of index_select's, before any work
            raise ValueError(f"class ids are on {classes.device} but the exemplars are on {self.exemplars.device}: "
                             f"draw episodes from the bank on the generator's device, then move them "
                             f"(data.build_run_data does it in that order)")
        if E >= T:  # the first T entries of a random permutation: distinct per row
            exemplar = torch.rand(B, E, generator=generator, device=classes.device).argsort(dim=1)[:, :T]
        else:
            exemplar = torch.randint(E, (B, T), generator=generator, device=classes.device)
        if copy_of is not None:
            exemplar = exemplar.gather(1, copy_of)
        # index_select copies whole item rows; advanced indexing walks element by element (~3x slower on images)
        flat = self.exemplars.flatten(0, 1)
        items = flat.index_select(0, (classes * E + exemplar).flatten()).view(B, T, *flat.shape[1:])
        if self.fresh_noise > 0:
            noise = torch.randn(items.shape, generator=generator, device=items.device) / math.sqrt(items.shape[-1])
            if copy_of is not None:  # a copy is the same item, its noise included
                noise = noise[torch.arange(B, device=noise.device)[:, None], copy_of]
            items = (items + self.fresh_noise * noise) / math.sqrt(1 + self.fresh_noise ** 2)
        return items


@dataclass
class Dataset:
    """Training classes, held-out classes and the fixed label id of each training class."""
    train: ClassBank
    holdout: ClassBank
    class_labels: torch.Tensor   # [n_train_classes] long, values in [0, n_labels)
    n_labels: int
    name: str = ''

    def to(self, device):
        return Dataset(self.train.to(device), self.holdout.to(device), self.class_labels.to(device),
                       self.n_labels, self.name)


def assign_labels(n_train_classes, n_labels, label_mode, seed):
    """Fixed label id per training class. 'per_class': class k -> label k (needs n_labels >= classes);
    'shared': a seeded random map into n_labels labels (several classes per label, as in Reddy 2024).
    The map is prefix-stable: the first k classes get the same labels whatever n_train_classes is."""
    if label_mode == 'per_class':
        if n_labels < n_train_classes:
            raise ValueError(f"n_labels={n_labels} is smaller than n_train_classes={n_train_classes}; "
                             f"raise n_labels or use label_mode='shared'")
        return torch.arange(n_train_classes)
    if label_mode == 'shared':
        rng = np.random.default_rng([seed, 2])
        return torch.from_numpy(rng.integers(0, n_labels, size=n_train_classes)).long()
    raise ValueError(f"label_mode={label_mode!r} must be 'per_class' or 'shared'")


def make_synthetic(n_train_classes, n_holdout_classes, n_labels, dim=64, exemplars_per_class=20,
                   within_class_noise=0.1, label_mode='per_class', seed=0):
    """Gaussian class clusters (Reddy 2024): prototype mu_k ~ N(0, I/dim) and exemplars
    x = (mu_k + eps*eta)/sqrt(1+eps^2). exemplars_per_class=0 draws fresh noise every time.
    Held-out classes and the first k training classes do not depend on n_train_classes, so
    Few and Many cells share their holdout set and their common classes."""
    for name, value in [('n_train_classes', n_train_classes), ('n_holdout_classes', n_holdout_classes),
                        ('dim', dim)]:
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    if exemplars_per_class < 0:
        raise ValueError(f"exemplars_per_class={exemplars_per_class} must be >= 0 (0 = fresh noise per draw)")
    if within_class_noise < 0:
        raise ValueError(f"within_class_noise={within_class_noise} must be >= 0")

    def clusters(stream, n_classes):
        rng_proto = np.random.default_rng([seed, stream, 0])
        rng_noise = np.random.default_rng([seed, stream, 1])
        proto = rng_proto.standard_normal((n_classes, 1, dim), dtype=np.float32) / math.sqrt(dim)
        if exemplars_per_class == 0:
            return ClassBank(torch.from_numpy(proto), fresh_noise=within_class_noise)
        eta = rng_noise.standard_normal((n_classes, exemplars_per_class, dim), dtype=np.float32) / math.sqrt(dim)
        x = (proto + within_class_noise * eta) / math.sqrt(1 + within_class_noise ** 2)
        return ClassBank(torch.from_numpy(x))

    return Dataset(train=clusters(0, n_train_classes), holdout=clusters(1, n_holdout_classes),
                   class_labels=assign_labels(n_train_classes, n_labels, label_mode, seed),
                   n_labels=n_labels, name='synthetic')


# ----------------------------------------------------------------------------------------------
# Omniglot: 1623 characters x 20 drawers, 105x105 binary images (Lake et al. 2015)

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
OMNIGLOT_SPLITS = ('images_background', 'images_evaluation')   # 964 + 659 characters
N_CHARACTERS, N_DRAWERS, OMNIGLOT_SIZE = 1623, 20, 105
OMNIGLOT_CLASSES = {'all_exemplars': 1, 'augmented': 8}         # classes per character
CACHE_VERSION = 1


def resolve_path(path):
    """'~' expanded; a relative path is taken from the repository root, so configs work from any cwd."""
    path = os.path.expanduser(path)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(REPO_ROOT, path))


def check_omniglot_config(classes, image_size):
    if classes not in OMNIGLOT_CLASSES:
        raise ValueError(f"omniglot_classes={classes!r} must be one of {sorted(OMNIGLOT_CLASSES)}")
    if not 8 <= image_size <= OMNIGLOT_SIZE:
        raise ValueError(f"image_size={image_size} must be in [8, {OMNIGLOT_SIZE}] (105 = the original images)")


def _download_hint(data_dir):
    return (f"get it with: python -c \"import torchvision as tv; [tv.datasets.Omniglot('{data_dir}', "
            f"background=b, download=True) for b in (True, False)]\" (or point --data_dir at a folder "
            f"holding omniglot-py/images_background and omniglot-py/images_evaluation)")


def omniglot_files(data_dir, download=True):
    """Paths [1623][20] of the PNGs under data_dir/omniglot-py (background characters first, then
    evaluation; alphabets, characters and drawers in name order) and a fingerprint of the file
    list and sizes. If neither folder exists, torchvision downloads them (only then: its integrity
    check wants the original zips, which an extracted copy does not have)."""
    root = os.path.join(resolve_path(data_dir), 'omniglot-py')
    split_dirs = [os.path.join(root, s) for s in OMNIGLOT_SPLITS]
    if download and not any(os.path.isdir(d) for d in split_dirs):
        try:
            import torchvision
            for background in (True, False):
                torchvision.datasets.Omniglot(resolve_path(data_dir), background=background, download=True)
        except Exception as e:  # no network, no write access, ...: say where the data belongs
            raise FileNotFoundError(f"Omniglot not found in {root} and downloading it failed "
                                    f"({type(e).__name__}: {e}); {_download_hint(data_dir)}") from None
    for d in split_dirs:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"Omniglot folder {d} not found (data_dir={data_dir!r}); "
                                    f"{_download_hint(data_dir)}")
    files, digest = [], hashlib.sha1()
    for d in split_dirs:
        for alphabet in sorted(e.name for e in os.scandir(d) if e.is_dir()):
            for character in sorted(e.name for e in os.scandir(os.path.join(d, alphabet)) if e.is_dir()):
                folder = os.path.join(d, alphabet, character)
                entries = sorted((e for e in os.scandir(folder) if e.name.endswith('.png')), key=lambda e: e.name)
                if len(entries) != N_DRAWERS:
                    raise ValueError(f"Omniglot is incomplete: {folder} holds {len(entries)} PNGs, expected "
                                     f"{N_DRAWERS}; {_download_hint(data_dir)}")
                files.append([e.path for e in entries])
                for e in entries:
                    digest.update(f"{alphabet}/{character}/{e.name} {e.stat().st_size}\n".encode())
    if len(files) != N_CHARACTERS:
        raise ValueError(f"Omniglot is incomplete: {root} holds {len(files)} characters, expected "
                         f"{N_CHARACTERS}; {_download_hint(data_dir)}")
    return files, digest.hexdigest()


def _decode_png(path):
    from PIL import Image
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert('L'))
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for missing, truncated and non-PNG files
        raise ValueError(f"cannot read Omniglot image {path}: {type(e).__name__}: {e}") from None
    if pixels.shape != (OMNIGLOT_SIZE, OMNIGLOT_SIZE):
        raise ValueError(f"Omniglot image {path} is {pixels.shape[1]}x{pixels.shape[0]}, expected 105x105")
    return pixels


def decode_omniglot(files):
    """uint8 [n_characters, 20, 105, 105]: background white (255), strokes black (0), like the
    reference's images in [0, 1]. PIL releases the GIL while decoding, so threads help."""
    images = np.empty((len(files), N_DRAWERS, OMNIGLOT_SIZE, OMNIGLOT_SIZE), dtype=np.uint8)

    def decode_character(c):
        for d, path in enumerate(files[c]):
            images[c, d] = _decode_png(path)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(decode_character, range(len(files))))
    return images


def resize_images(images, size):
    """Antialiased bilinear downsampling of uint8 [..., H, W] images, in chunks (float copies are large)."""
    flat = torch.from_numpy(images).reshape(-1, 1, *images.shape[-2:])
    out = torch.empty(flat.shape[0], 1, size, size, dtype=torch.uint8)
    for start in range(0, flat.shape[0], 4096):
        chunk = torch.nn.functional.interpolate(flat[start:start + 4096].float(), size=(size, size),
                                                mode='bilinear', antialias=True, align_corners=False)
        out[start:start + 4096] = chunk.round().clamp(0, 255).to(torch.uint8)
    return out.reshape(*images.shape[:-2], size, size).numpy()


def _cache_meta(fingerprint, image_size):
    return {'version': CACHE_VERSION, 'fingerprint': fingerprint,
            'shape': [N_CHARACTERS, N_DRAWERS, image_size, image_size]}


def read_cache(path, meta):
    """The cached array, or None (with the reason printed) if it is missing, stale or unreadable.
    The .npz is a zip: its CRC-32 check catches damaged bytes as well as truncation."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as npz:
            if json.loads(str(npz['meta'])) != meta:
                print(f"omniglot: cache {path} is stale (the source files or settings changed); rebuilding")
                return None
            if 'bits' in npz.files:  # binary images are stored 1 bit per pixel: 8x less to read
                images = np.unpackbits(npz['bits'], count=math.prod(meta['shape']))
                images *= 255
                images = images.reshape(meta['shape'])
            else:
                images = npz['images']
        if list(images.shape) != meta['shape'] or images.dtype != np.uint8:
            raise ValueError(f"array is {images.dtype} {list(images.shape)}, expected uint8 {meta['shape']}")
        return images
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError, ...
        print(f"omniglot: cache {path} is unreadable ({type(e).__name__}: {e}); rebuilding")
        return None


def write_cache(path, images, meta):
    """Atomic: written to a temporary name, then renamed, so a concurrent or killed run never
    leaves a half-written cache behind. Black-and-white arrays (the 105x105 originals) are bit-packed."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    binary = images == 255
    arrays = {'bits': np.packbits(binary)} if np.all(binary | (images == 0)) else {'images': images}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, 'wb') as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def load_omniglot(data_dir, cache_dir, image_size=OMNIGLOT_SIZE, download=True):
    """uint8 [1623, 20, image_size, image_size] (see decode_omniglot), from the cache in cache_dir
    when it matches the current files, else decoded (and downsampled) and cached."""
    cache_root, data_root = resolve_path(cache_dir), resolve_path(data_dir)
    if os.path.commonpath([cache_root, data_root]) == data_root:
        raise ValueError(f"cache_dir={cache_dir!r} is inside data_dir={data_dir!r}; the data folder stays read-only")
    files, fingerprint = omniglot_files(data_dir, download)

    def cached(size, build):
        path = os.path.join(cache_root, f'omniglot_{size}.npz')
        meta = _cache_meta(fingerprint, size)
        images = read_cache(path, meta)
        if images is None:
            images = build()
            write_cache(path, images, meta)
        return images

    def decode():
        print(f"omniglot: decoding {N_CHARACTERS * N_DRAWERS:,} PNGs from {data_root} (once; cached in {cache_root})")
        return decode_omniglot(files)

    full = lambda: cached(OMNIGLOT_SIZE, decode)  # noqa: E731
    if image_size == OMNIGLOT_SIZE:
        return full()
    return cached(image_size, lambda: resize_images(full(), image_size))


def transform_images(images, transform):
    """Transform t of the augmented classes: a left-right flip if t >= 4, then t % 4 counter-clockwise
    quarter turns (the reference's flip_left_right + rot90). images [..., H, W]."""
    if transform >= 4:
        images = images.flip(-1)
    return torch.rot90(images, transform % 4, dims=(-2, -1))


def omniglot_class_split(n_train_classes, n_holdout_classes, classes='all_exemplars', seed=0):
    """(train_ids, holdout_ids): [n, 2] long tensors of (character, transform) per class.

    A seeded permutation of the characters puts the holdout characters at its end, with all their
    transforms, so no flip/rotation of a held-out character is ever trained on. The training
    classes are a seeded order over every class of the remaining characters; a run uses its first
    n_train_classes. So, for one data_seed, the holdout set is the same whatever n_train_classes
    is, and Few's classes are a prefix of Many's."""
    per_char = OMNIGLOT_CLASSES[classes]
    if n_holdout_classes < 1 or n_holdout_classes % per_char:
        raise ValueError(f"n_holdout_classes={n_holdout_classes} must be a positive multiple of {per_char} "
                         f"(omniglot_classes={classes!r} holds out all {per_char} transforms of a character)")
    n_holdout_chars = n_holdout_classes // per_char
    n_available = (N_CHARACTERS - n_holdout_chars) * per_char
    if not 1 <= n_train_classes <= n_available:
        raise ValueError(f"n_train_classes={n_train_classes} must be in [1, {n_available}]: omniglot_classes="
                         f"{classes!r} has {N_CHARACTERS * per_char} classes and n_holdout_classes="
                         f"{n_holdout_classes} are held out")
    characters = torch.from_numpy(np.random.default_rng([seed, 3]).permutation(N_CHARACTERS))
    transforms = torch.arange(per_char)

    def classes_of(chars):
        return torch.stack([chars.repeat_interleave(per_char), transforms.repeat(len(chars))], 1)

    holdout = classes_of(characters[N_CHARACTERS - n_holdout_chars:])
    pool = classes_of(characters[:N_CHARACTERS - n_holdout_chars])
    order = torch.from_numpy(np.random.default_rng([seed, 4]).permutation(len(pool)))
    return pool[order[:n_train_classes]], holdout


def class_exemplars(images, ids):
    """uint8 [n, 20, H, W] for (character, transform) ids [n, 2]."""
    out = torch.empty((len(ids), *images.shape[1:]), dtype=images.dtype)
    for t in ids[:, 1].unique().tolist():
        rows = (ids[:, 1] == t).nonzero().flatten()
        out[rows] = transform_images(images[ids[rows, 0]], t)
    return out


def make_omniglot(images, n_train_classes, n_holdout_classes, n_labels, classes='all_exemplars',
                  label_mode='per_class', seed=0):
    """Dataset of Omniglot classes from images uint8 [1623, 20, H, W] (load_omniglot). Each class
    keeps all 20 drawers as exemplars; the banks stay uint8 (the encoder converts per batch)."""
    if classes not in OMNIGLOT_CLASSES:
        raise ValueError(f"omniglot_classes={classes!r} must be one of {sorted(OMNIGLOT_CLASSES)}")
    train_ids, holdout_ids = omniglot_class_split(n_train_classes, n_holdout_classes, classes, seed)
    return Dataset(train=ClassBank(class_exemplars(images, train_ids)),
                   holdout=ClassBank(class_exemplars(images, holdout_ids)),
                   class_labels=assign_labels(n_train_classes, n_labels, label_mode, seed),
                   n_labels=n_labels, name=f'omniglot-{classes}')


# ----------------------------------------------------------------------------------------------
# index sampling helpers (all vectorised; no per-sequence Python)

def class_cdf(n_classes, zipf_alpha, device):
    """CDF of the class distribution p(k) ~ 1/(k+1)^alpha (alpha=0: uniform), for inverse-CDF draws."""
    weights = 1.0 / torch.arange(1, n_classes + 1, dtype=torch.float64) ** zipf_alpha
    cdf = torch.cumsum(weights / weights.sum(), 0)
    cdf[-1] = 1.0
    return cdf.to(device=device, dtype=torch.float32)


def draw_classes(cdf, shape, generator):
    u = torch.rand(shape, generator=generator, device=cdf.device)
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.numel() - 1)


def draw_classes_excluding(cdf, excluded, generator, rounds=8):
    """One class per entry of `excluded` ([B, k]), from the class distribution but different from
    every excluded class in its row: a few vectorised rejection rounds, then a deterministic
    shift for the (vanishingly rare) leftovers so no host sync is needed."""
    n_classes = cdf.numel()
    draw = draw_classes(cdf, excluded.shape[:1], generator)
    for _ in range(rounds):
        clash = (draw[:, None] == excluded).any(1)
        draw = torch.where(clash, draw_classes(cdf, draw.shape, generator), draw)
    for _ in range(excluded.shape[1]):  # shift past any remaining clash
        clash = (draw[:, None] == excluded).any(1)
        draw = torch.where(clash, (draw + 1) % n_classes, draw)
    return draw


def relabel_map(class_labels, data_seed, period):
    """Period `period`'s class->label map under periodic relabelling: the data's map for period 0, else the labels the
    classes own dealt out again (a random permutation over the classes, from a CPU generator seeded by data_seed and
    the period: the same on every device, in every run of this data). A class keeps its label with chance about
    1/n_labels."""
    if period == 0:
        return class_labels
    g = torch.Generator().manual_seed(data_seed * 1_000_003 + period + (zlib.crc32(b'relabel') << 24))
    order = torch.randperm(class_labels.numel(), generator=g)
    return class_labels[order.to(class_labels.device)]


def make_generator(device):
    """The sampler's random stream, on `device` (tests/test_cuda_on_cpu.py swaps in a CPU one: a CUDA generator
    needs a GPU, even under fake tensors)."""
    return torch.Generator(device=device)


def shuffle_rows(x, generator):
    order = torch.rand(x.shape, generator=generator, device=x.device).argsort(dim=1)
    return x.gather(1, order)


class EpisodeSampler:
    """Bursty / non-bursty training sequences over one ClassBank, a whole batch per call.

    sample(B) returns (items [B, T+1, *item_shape], labels [B, T+1], classes [B, T+1]) where
    T = context_len; position T is the query and labels[:, T] is the target.
    """

    def __init__(self, bank, class_labels, context_len=8, p_bursty=0.9, bursty_shots=3, ways=2,
                 zipf_alpha=0.0, seed=0, device='cpu', label_swap=0.0, n_labels=None, label_swap_to='train', p_copy=0.0,
                 relabel_every=0, data_seed=0):
        n_classes = bank.n_classes
        if not 0.0 <= p_bursty <= 1.0:
            raise ValueError(f"p_bursty={p_bursty} must be in [0, 1]")
        if context_len < 1:
            raise ValueError(f"context_len={context_len} must be >= 1")
        if bursty_shots < 1:
            raise ValueError(f"bursty_shots={bursty_shots} must be >= 1")
        if ways < 1:
            raise ValueError(f"ways={ways} must be >= 1")
        if bursty_shots * ways > context_len:
            raise ValueError(f"bursty_shots*ways={bursty_shots}*{ways}={bursty_shots * ways} is more "
                             f"than the context_len={context_len} context slots")
        if p_bursty > 0 and ways > n_classes:
            raise ValueError(f"ways={ways} is more than the {n_classes} training classes")
        if zipf_alpha < 0:
            raise ValueError(f"zipf_alpha={zipf_alpha} must be >= 0")
        if not 0.0 <= label_swap <= 1.0:
            raise ValueError(f"label_swap={label_swap} must be in [0, 1]")
        if not 0.0 <= p_copy <= 1.0:
            raise ValueError(f"p_copy={p_copy} must be in [0, 1]")
        if relabel_every < 0:
            raise ValueError(f"relabel_every={relabel_every} must be >= 0 (0 = one class->label map for the whole run)")
        if p_copy > 0 and p_bursty == 0:
            raise ValueError(f"p_copy={p_copy} turns bursty sequences into copies, but p_bursty=0 makes none")
        n_labels = int(class_labels.max()) + 1 if n_labels is None else n_labels
        if label_swap_to not in ('train', 'all'):
            raise ValueError(f"label_swap_to={label_swap_to!r} must be 'train' (the labels of the training classes, "
                             f"Bratulic et al.) or 'all' (every label of the vocabulary)")
        # the labels a swap may give: those the training classes own (Bratulic), or the whole vocabulary
        swap_labels = torch.unique(class_labels) if label_swap_to == 'train' else torch.arange(n_labels)
        if label_swap > 0 and len(swap_labels) < 2:
            raise ValueError(f"label_swap={label_swap} needs at least 2 labels to swap to (label_swap_to="
                             f"{label_swap_to!r} gives {len(swap_labels)})")
        if class_labels.shape != (n_classes,):
            raise ValueError(f"class_labels has shape {tuple(class_labels.shape)}, expected ({n_classes},)")
        self.bank = bank.to(device)
        self.class_labels = class_labels.to(device)
        self.context_len, self.p_bursty, self.bursty_shots, self.ways = context_len, p_bursty, bursty_shots, ways
        self.label_swap, self.n_labels, self.p_copy = label_swap, n_labels, p_copy
        self.relabel_every, self.data_seed = relabel_every, data_seed
        self._map = (0, self.class_labels)  # (period, its class->label map): relabel_every's cache
        self.swap_to = swap_labels.to(device)  # sorted
        self.cdf = class_cdf(n_classes, zipf_alpha, device)
        self.generator = make_generator(device)
        self.generator.manual_seed(seed)

    # The rules only training sequences follow, at the values that turn them off: a probe or sample_attention.py
    # draws the run's sequences without them (from_config(..., clean=True)). A new training-only rule goes here too.
    TRAINING_ONLY = {'label_swap': 0.0, 'label_swap_to': 'train', 'p_copy': 0.0, 'relabel_every': 0}

    @classmethod
    def from_config(cls, bank, class_labels, config, device, clean=False, **given):
        """The sampler a run's config describes, for every caller (train.py's runs and groups, probes, bench, checks): each
        constructor argument is the train.py key of its name, so a new sampler rule is a train.py global plus an
        argument, its check and its code in this class; an argument no key is named like is a ValueError naming it.
        clean: without the TRAINING_ONLY rules. `given` overrides (seed, p_bursty=1, ...)."""
        given = {**(cls.TRAINING_ONLY if clean else {}), **given, 'device': device}  # config's device may be 'auto'
        names = [k for k in list(inspect.signature(cls.__init__).parameters)[3:] if k not in given]
        for k in names:
            if k not in config:
                close = difflib.get_close_matches(k, list(config), n=1, cutoff=0.6)
                raise ValueError(f"EpisodeSampler argument {k!r} is no train.py key"
                                 + (f" (is it {close[0]!r}?)" if close else '') + ": a sampler rule's argument is "
                                 f"named like its train.py global, which from_config gives it")
        return cls(bank, class_labels, **{k: config[k] for k in names}, **given)

    def sample_classes(self, batch_size):
        """(class ids [B, context_len + 1] of a batch of training sequences (query last), which rows are bursty [B, 1])."""
        g, T = self.generator, self.context_len
        # non-bursty: everything i.i.d. from the class distribution
        iid = draw_classes(self.cdf, (batch_size, T + 1), g)
        if self.p_bursty == 0:
            return iid, torch.zeros(batch_size, 1, dtype=torch.bool, device=iid.device)
        # bursty: `ways` distinct classes (query's class first), `shots` each, rest filled i.i.d.
        chosen = draw_classes(self.cdf, (batch_size, 1), g)
        for _ in range(self.ways - 1):
            chosen = torch.cat([chosen, draw_classes_excluding(self.cdf, chosen, g)[:, None]], 1)
        n_fill = T - self.ways * self.bursty_shots
        context = torch.cat([chosen.repeat_interleave(self.bursty_shots, dim=1), iid[:, :n_fill]], 1)
        bursty = torch.cat([shuffle_rows(context, g), chosen[:, :1]], 1)
        is_bursty = torch.rand(batch_size, 1, generator=g, device=iid.device) < self.p_bursty
        return torch.where(is_bursty, bursty, iid), is_bursty

    def sample(self, batch_size, step=0):
        """A batch of training sequences for training step `step` (which class->label map they use: relabel_every)."""
        classes, bursty = self.sample_classes(batch_size)
        items = self.bank.gather(classes, self.generator, self.copy_sources(classes, bursty))
        return items, self.swap_labels(self.labels_at(step)[classes], classes), classes

    def labels_at(self, step):
        """The class->label map [n_classes] of training step `step`. Periodic relabelling (relabel_every = k > 0): step s
        is in period s // k; period 0 keeps the data's map, every later period gives the training classes a fresh
        permutation of the labels they own (relabel_map, seeded by data_seed and the period), so a memorised map is
        wrong after each relabel until relearned, while every sequence of a period is consistent, context and query
        alike. A function of the step alone: a resumed run and a group member use the maps of their solo run."""
        period = step // self.relabel_every if self.relabel_every else 0
        if period != self._map[0]:
            self._map = (period, relabel_map(self.class_labels, self.data_seed, period))
        return self._map[1]

    def copy_sources(self, classes, bursty):
        """Instance copies (Bratulić et al. 2025, `sequence_with_copy`): in a fraction p_copy of the bursty sequences
        every item of the query's class is the query itself and every other class is shown as copies of one exemplar
        (its first item), so matching the query needs no generalisation over exemplars. [B, T+1] positions whose
        item each position repeats (itself in other sequences), or None when p_copy = 0 (nothing drawn)."""
        if self.p_copy == 0:
            return None
        B, T1 = classes.shape
        copy = bursty & (torch.rand(B, 1, generator=self.generator, device=classes.device) < self.p_copy)
        first = (classes[:, :, None] == classes[:, None, :]).int().argmax(-1)  # first position of each item's class
        source = torch.where(classes == classes[:, -1:], T1 - 1, first)
        return torch.where(copy, source, torch.arange(T1, device=classes.device).expand(B, -1))

    def swap_labels(self, labels, classes):
        """Label swap (Bratulić et al. 2025, `p_noisy_labels`): in a fraction label_swap of the sequences, every
        item of the query's class (the query included) carries one new label, so the in-context answer stays
        right and the memorised one is wrong. The new label is uniform over the other labels of self.swap_to:
        the training classes' labels ('train', as Bratulić draws it) or all n_labels ('all'); the two are the
        same draw when the training classes own every label (the synthetic default). Drawn on the device, no
        host sync; with label_swap = 0 nothing is drawn (the random stream is the one of a run without it)."""
        if self.label_swap == 0:
            return labels
        g, B, pool = self.generator, labels.shape[0], self.swap_to
        swapped = torch.rand(B, 1, generator=g, device=labels.device) < self.label_swap
        shift = torch.randint(1, len(pool), (B, 1), generator=g, device=labels.device)
        own = torch.searchsorted(pool, labels[:, -1:].contiguous())  # the query label's place in the pool
        new_label = pool[(own + shift) % len(pool)]      # never the query's own label
        return torch.where(swapped & (classes == classes[:, -1:]), new_label, labels)

    def state_dict(self):
        return {'generator': self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state['generator'])


# ----------------------------------------------------------------------------------------------
# fixed evaluation episodes

@dataclass
class Episodes:
    """A fixed set of evaluation sequences, same layout as the sampler's output, with how they are scored: a new
    episode kind is a function returning these, its ways said here (eval.evaluate and icl_chance read them)."""
    items: torch.Tensor     # [N, T+1, *item_shape]
    labels: torch.Tensor    # [N, T+1]; labels[:, T] is the target
    classes: torch.Tensor   # [N, T+1] class ids within their bank
    ways: int = 0           # the answer is chosen among the labels 0..ways-1 (ICL episodes); 0: among all labels

    def to(self, device):
        return Episodes(self.items.to(device), self.labels.to(device), self.classes.to(device), self.ways)

    def __len__(self):
        return self.labels.shape[0]


def make_icl_episodes(holdout, n_episodes, context_len=8, ways=2, shots=4, seed=0):
    """Few-shot episodes on held-out classes: `ways` *distinct* classes x `shots` exemplars,
    shuffled; each class gets one of the labels 0..ways-1 at random (the reference's remapping,
    without its with-replacement class draw that makes some episodes unsolvable); the query's
    label is balanced over 0..ways-1, so chance is exactly 1/ways (icl_chance gives the constant-
    answer baseline of any episode set). Built on CPU from `seed`, so every run sees the same episodes."""
    if ways * shots != context_len:
        raise ValueError(f"eval ways*shots={ways}*{shots} must equal context_len={context_len}")
    if ways > holdout.n_classes:
        raise ValueError(f"eval ways={ways} is more than the {holdout.n_classes} holdout classes")
    if n_episodes < 1:
        raise ValueError(f"n_episodes={n_episodes} must be >= 1")
    g = torch.Generator().manual_seed(seed)
    N = n_episodes
    way_classes = torch.rand(N, holdout.n_classes, generator=g).argsort(1)[:, :ways]   # distinct
    way_labels = torch.rand(N, ways, generator=g).argsort(1)                           # label perm
    slot_way = shuffle_rows(torch.arange(ways).repeat_interleave(shots).expand(N, -1).contiguous(), g)
    # balance the query's *label* (not only its way): with N a multiple of `ways`, every label is the
    # answer equally often, so always answering one label scores exactly 1/ways
    query_label = (torch.arange(N) % ways)[torch.randperm(N, generator=g)]
    query_way = (way_labels == query_label[:, None]).float().argmax(1)
    way = torch.cat([slot_way, query_way[:, None]], 1)
    classes = way_classes.gather(1, way)
    labels = way_labels.gather(1, way)
    return Episodes(holdout.gather(classes, g), labels, classes, ways)


def make_iwl_episodes(train, class_labels, n_episodes, context_len=8, zipf_alpha=0.0, seed=0):
    """In-weights episodes: the query is a seen class, balanced over classes, and its class is
    absent from the context (drawn from the training distribution minus the query's class), so
    only a memorised class->label map answers it. Target = the class's fixed label."""
    if train.n_classes < 2:
        raise ValueError("IWL episodes need at least 2 training classes (the query's class is excluded from context)")
    g = torch.Generator().manual_seed(seed)
    N = n_episodes
    query = (torch.arange(N) % train.n_classes)[torch.randperm(N, generator=g)]
    cdf = class_cdf(train.n_classes, zipf_alpha, 'cpu')
    context = torch.stack([draw_classes_excluding(cdf, query[:, None], g) for _ in range(context_len)], 1)
    classes = torch.cat([context, query[:, None]], 1)
    return Episodes(train.gather(classes, g), class_labels.cpu()[classes], classes)


def make_train_dist_episodes(train, class_labels, config, n_episodes, seed=0):
    """Held-out draws of the training distribution itself (the run's bursty/non-bursty mix over its own classes,
    without EpisodeSampler.TRAINING_ONLY's rules: true labels, no copies): answerable by ICL (when the query's class
    is in the context) or by a memorised map, so a drop here is a collapse of what the run can do, whichever
    strategy it uses."""
    sampler = EpisodeSampler.from_config(train, class_labels.cpu(), config, 'cpu', clean=True, seed=seed)
    return Episodes(*sampler.sample(n_episodes))


def make_conflict_episodes(train, class_labels, n_episodes, context_len=8, ways=2, shots=4, seed=0):
    """ICL-vs-IWL conflict (as in the transience literature): few-shot episodes on *seen* classes with their
    labels remapped to 0..ways-1, so the in-context answer and the memorised one disagree. Only classes whose
    own label is not one of 0..ways-1 take part (the two answers are always different). Returns
    (episodes, memorised label of each query)."""
    eligible = (class_labels.cpu() >= ways).nonzero().flatten()
    if len(eligible) < ways:
        raise ValueError(f"conflict episodes need {ways} training classes whose label is >= {ways}")
    episodes = make_icl_episodes(ClassBank(train.exemplars.cpu()[eligible], train.fresh_noise), n_episodes,
                                 context_len, ways, shots, seed)
    classes = eligible[episodes.classes]
    return Episodes(episodes.items, episodes.labels, classes), class_labels.cpu()[classes[:, -1]]


def build_probe_episodes(dataset, config):
    """The collapse and conflict probes evaluate() also scores (fixed by data_seed, like the others):
    {'train': training-distribution Episodes, 'conflict': Episodes, 'conflict_memorised': [N] labels}."""
    n = config['n_eval_episodes']
    conflict, memorised = make_conflict_episodes(dataset.train, dataset.class_labels, n, config['context_len'],
                                                 config['eval_ways'], config['eval_shots'], seed=config['data_seed'] + 4000)
    return {'train': make_train_dist_episodes(dataset.train, dataset.class_labels, config, n,
                                              seed=config['data_seed'] + 5000),
            'conflict': conflict, 'conflict_memorised': memorised}


def memory_episodes(sampler, n, step, n_labels):
    """n training sequences of step `step`, drawn by the run's own rules (swap, relabelling, copies: `sampler` is a fresh
    one of the run's config), with every context label replaced by a uniformly random one: the context says nothing
    about the query's label, so the model answers from its weights, and the target is the label the training rule
    gave the query. eval.WrongMemory counts the share of these the model gets wrong: how often the in-weights
    answer is wrong on the training distribution (a swap's p, 1 - 1/n_labels just after a relabel, chance-level
    wrongness where nothing is memorised)."""
    items, labels, classes = sampler.sample(n, step)
    noise = torch.randint(0, n_labels, labels[:, :-1].shape, generator=sampler.generator, device=labels.device)
    return Episodes(items, torch.cat([noise, labels[:, -1:]], 1), classes)


def scored_at(episodes, sampler, step):
    """A run's eval sets (icl, iwl, probes) as scored after `step` training steps by its training sampler: with
    relabel_every the IWL episodes and the probes are relabelled to the class->label map the last step trained on, so
    iwl_acc is always against the map training uses now (the conflict probe keeps its classes, chosen under the data's
    map). The ICL episodes (held-out classes) never change; without relabelling nothing does."""
    icl, iwl, probes = episodes
    if not sampler.relabel_every:
        return episodes
    label_map = sampler.labels_at(max(step - 1, 0))
    iwl = Episodes(iwl.items, label_map[iwl.classes], iwl.classes, iwl.ways)
    if probes:
        probes = {**probes, 'train': Episodes(probes['train'].items, label_map[probes['train'].classes],
                                              probes['train'].classes),
                  'conflict_memorised': label_map[probes['conflict'].classes[:, -1]]}
    return icl, iwl, probes


def probes_to(probes, device):
    return {k: v.to(device) for k, v in probes.items()}


# ----------------------------------------------------------------------------------------------
# one place that turns a run's config (train.py's globals, or a checkpoint's saved copy) into data

def build_dataset(config):
    """The Dataset named by config['dataset'] (on CPU; the caller moves it)."""
    if config['dataset'] == 'synthetic':
        return make_synthetic(config['n_train_classes'], config['n_holdout_classes'], config['n_labels'],
                              dim=config['item_dim'], exemplars_per_class=config['exemplars_per_class'],
                              within_class_noise=config['within_class_noise'],
                              label_mode=config['label_mode'], seed=config['data_seed'])
    if config['dataset'] == 'omniglot':
        check_omniglot_config(config['omniglot_classes'], config['image_size'])
        images = load_omniglot(config['data_dir'], config['cache_dir'], config['image_size'])
        return make_omniglot(torch.from_numpy(images), config['n_train_classes'], config['n_holdout_classes'],
                             config['n_labels'], classes=config['omniglot_classes'],
                             label_mode=config['label_mode'], seed=config['data_seed'])
    raise ValueError(f"dataset={config['dataset']!r} is not known (expected 'synthetic' or 'omniglot')")


def icl_chance(episodes):
    """Accuracy of the best constant answer on these episodes (0.5 on balanced 2-way episodes):
    the chance line the report draws, measured rather than assumed."""
    counts = torch.bincount(episodes.labels[:, -1].cpu(), minlength=episodes.ways)[:episodes.ways or None]
    return counts.max().item() / len(episodes)


def build_run_data(config, device, cache=None):
    """Everything a training run reads, on `device`: (dataset, sampler, icl_episodes, iwl_episodes, probes),
    probes being build_probe_episodes' training-distribution and conflict sets.

    The one place where data is moved: the eval episodes are drawn with CPU generators from the CPU
    dataset (so they are the same on every device), and only then is everything moved. Moving the
    dataset first made every CUDA run index CUDA data with CPU indices. With a `cache` list,
    runs whose data is the same (a group's members) share one copy on the device: the same values of the
    keys that building it read; each gets its own sampler, seeded by config['seed']."""
    cache = [] if cache is None else cache
    for keys, moved in cache:
        if all(config[k] == v for k, v in keys.items()):
            break
    else:
        reads = KeyReads(config)
        data, icl, iwl, probes = build_host_data(reads)
        moved = data.to(device), icl.to(device), iwl.to(device), probes_to(probes, device)
        cache.append(({k: config[k] for k in reads.read}, moved))
    data, icl, iwl, probes = moved
    sampler = EpisodeSampler.from_config(data.train, data.class_labels, config, device, n_labels=data.n_labels)
    return data, sampler, icl, iwl, probes


def build_host_data(config):
    """(dataset, icl_episodes, iwl_episodes, probes) on the CPU: build_run_data's host half (files, CPU generators,
    indexing by values), which it then moves to the device. tests/test_cuda_on_cpu.py runs this half for real and
    the move under fake CUDA tensors."""
    data = build_dataset(config)
    icl, iwl = build_eval_episodes(data, config)
    return data, icl, iwl, build_probe_episodes(data, config)


def build_eval_episodes(dataset, config):
    """(icl, iwl) Episodes, fixed by config['data_seed'] so every eval and every grid cell sees
    the same ones (the IWL set depends on the training classes, so Few and Many differ there)."""
    icl = make_icl_episodes(dataset.holdout, config['n_eval_episodes'], config['context_len'],
                            config['eval_ways'], config['eval_shots'], seed=config['data_seed'] + 1000)
    iwl = make_iwl_episodes(dataset.train, dataset.class_labels, config['n_eval_episodes'],
                            config['context_len'], config['zipf_alpha'], seed=config['data_seed'] + 2000)
    return icl, iwl


def check_data_config(config):
    """ValueError naming the key for data, sampler or eval-episode settings no run can start with, from the
    config alone: the rules of build_dataset, assign_labels, EpisodeSampler and the eval episode builders,
    checked before out_dir is touched (a run that fails here never costs an old run its files)."""
    n_train, n_holdout, n_labels = config['n_train_classes'], config['n_holdout_classes'], config['n_labels']
    if config['dataset'] == 'omniglot':
        check_omniglot_config(config['omniglot_classes'], config['image_size'])
        omniglot_class_split(n_train, n_holdout, config['omniglot_classes'], config['data_seed'])
    elif config['dataset'] == 'synthetic':  # make_synthetic's rules, without making the data
        for key in ('n_train_classes', 'n_holdout_classes', 'item_dim'):
            if config[key] < 1:
                raise ValueError(f"{key}={config[key]} must be >= 1")
        if config['exemplars_per_class'] < 0:
            raise ValueError(f"exemplars_per_class={config['exemplars_per_class']} must be >= 0 (0 = fresh noise per draw)")
        if config['within_class_noise'] < 0:
            raise ValueError(f"within_class_noise={config['within_class_noise']} must be >= 0")
    else:
        raise ValueError(f"dataset={config['dataset']!r} is not known (expected 'synthetic' or 'omniglot')")
    if n_labels < 1:
        raise ValueError(f"n_labels={n_labels} must be >= 1")
    labels = assign_labels(n_train, n_labels, config['label_mode'], config['data_seed'])
    # the sampler's own checks (every sampler key's), on a bank of n_train empty items (nothing is allocated)
    EpisodeSampler.from_config(ClassBank(torch.empty(n_train, 1, 0)), labels, config, 'cpu')
    # make_icl_episodes' and make_iwl_episodes' rules; ICL answers are the labels 0..eval_ways-1
    ways, shots = config['eval_ways'], config['eval_shots']
    if ways < 1 or shots < 1:
        raise ValueError(f"eval_ways={ways} and eval_shots={shots} must be >= 1")
    if ways * shots != config['context_len']:
        raise ValueError(f"eval ways*shots={ways}*{shots} must equal context_len={config['context_len']}")
    if ways > n_holdout:
        raise ValueError(f"eval ways={ways} is more than the {n_holdout} holdout classes")
    if ways > n_labels:
        raise ValueError(f"eval_ways={ways} is more than the n_labels={n_labels} labels")
    if config['n_eval_episodes'] < 1:
        raise ValueError(f"n_eval_episodes={config['n_eval_episodes']} must be >= 1")
    if n_train < 2:
        raise ValueError(f"n_train_classes={n_train}: IWL episodes need at least 2 training classes "
                         f"(the query's class is excluded from their context)")
