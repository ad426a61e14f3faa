"""
The sequence model: an exemplar encoder turns each item into one token, label ids are embedded,
the two are interleaved as  x0 y0 x1 y1 ... x7 y7 xq  (17 tokens), sinusoidal positions are
added, a pre-LayerNorm causal transformer runs over it, and a linear head over the label
vocabulary reads the query's (last) position.

The encoder is the seam between data sets: a linear map for the synthetic vectors, a small
ResNet for Omniglot images (make_encoder picks one).
"""
import difflib
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    n_labels: int = 1600         # label vocabulary (same in every cell of a grid)
    item_shape: tuple = (64,)    # one item: (dim,) for vectors, (H, W) for images
    encoder: str = 'linear'      # 'linear' or 'resnet'
    n_layer: int = 12
    n_head: int = 8
    n_embd: int = 64
    mlp_ratio: int = 4
    dropout: float = 0.0
    pixel_noise: float = 0.0     # resnet only: Gaussian pixel noise per image while training (the reference's noise_scale)


class LinearEncoder(nn.Module):
    """Synthetic vectors -> tokens."""

    def __init__(self, config):
        super().__init__()
        if len(config.item_shape) != 1:
            raise ValueError(f"encoder='linear' needs vector items, got item_shape={config.item_shape}")
        self.proj = nn.Linear(config.item_shape[0], config.n_embd)

    def forward(self, items):
        return self.proj(items.float())


class ResNetEncoder(nn.Module):
    """Images -> tokens: the reference's small ResNet-v1 (Chan et al. 2022). A 7x7 stride-2 conv with
    64 channels, BatchNorm, ReLU, 3x3 stride-2 max-pool; four groups of 2 bottleneck blocks with
    widths (16, 32, 32, n_embd) and strides (1, 2, 2, 2), inner width = width/4, a projection
    shortcut on each group's first block, the last BatchNorm of each block zero-initialised;
    then the mean over space: one n_embd token per image.

    Items arrive as uint8 [N, H, W] (the data stays uint8 on the device) and become floats in
    [0, 1] here, one batch at a time. pixel_noise > 0 adds N(0, pixel_noise^2) to every pixel of
    every image while training (the reference's noise_scale)."""

    eval_chunk = 2048  # images per forward in eval mode: bounds activation memory (105x105 x 512 episodes)

    def __init__(self, config):
        super().__init__()
        from torchvision.models.resnet import Bottleneck  # deferred: the synthetic path needs no torchvision
        if len(config.item_shape) != 2:
            raise ValueError(f"encoder='resnet' needs image items (H, W), got item_shape={config.item_shape}")
        if config.n_embd % Bottleneck.expansion:
            raise ValueError(f"encoder='resnet' needs n_embd={config.n_embd} divisible by {Bottleneck.expansion} "
                             f"(its last bottleneck group is n_embd wide, inner width n_embd/4)")
        if config.pixel_noise < 0:
            raise ValueError(f"pixel_noise={config.pixel_noise} must be >= 0")
        self.pixel_noise = config.pixel_noise
        layers = [nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                  nn.MaxPool2d(3, stride=2, padding=1)]
        channels = 64
        for width, stride in zip((16, 32, 32, config.n_embd), (1, 2, 2, 2)):
            for i in range(2):
                shortcut = None
                if i == 0:
                    shortcut = nn.Sequential(nn.Conv2d(channels, width, 1, stride=stride, bias=False),
                                             nn.BatchNorm2d(width))
                block = Bottleneck(channels, width // Bottleneck.expansion, stride=stride if i == 0 else 1,
                                   downsample=shortcut)
                nn.init.zeros_(block.bn3.weight)  # each block starts as its shortcut (the reference's scale_init)
                layers.append(block)
                channels = width
        self.net = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        self.explicit = False  # a group's vmap (group.StackedModel) cannot ask for channels_last: plain layout there

    def encode(self, items):
        x = items[:, None].float() / 255
        if self.training and self.pixel_noise > 0:
            x = x + self.pixel_noise * torch.randn_like(x)
        if self.explicit:  # a group's vmap: plain layout, and float32 (BatchNorm's CUDA backward under vmap rejects
            with torch.autocast(x.device.type, enabled=False):  # bf16 activations with float32 running stats: H200)
                return self.net(x).mean(dim=(2, 3))
        return self.net(x.contiguous(memory_format=torch.channels_last)).mean(dim=(2, 3))

    def forward(self, items):
        if not self.training and items.shape[0] > self.eval_chunk:  # BatchNorm uses running stats: exact
            return torch.cat([self.encode(chunk) for chunk in items.split(self.eval_chunk)])
        return self.encode(items)


def make_encoder(config):
    if config.encoder == 'linear':
        return LinearEncoder(config)
    if config.encoder == 'resnet':
        return ResNetEncoder(config)
    raise ValueError(f"encoder={config.encoder!r} must be 'linear' or 'resnet'")


def augment_thetas(shape, strength, generator, device=None):
    """One random affine map per image (`shape` = (B, T+1)), [*shape, 2, 3] for F.affine_grid: rotation up to
    +-30 x strength degrees, shear up to +-15 x strength degrees, scale within 1 +- 0.15 x strength and a shift up to
    0.1 x strength of the half-width, each uniform: torchvision's RandomAffine family, drawn per exemplar on `device`
    (the generator's by default) (augmentation in training: more within-class variation, never a wrong label).
    Batched with F.affine_grid rather than torchvision's per-call transforms: one draw per image, no loop."""
    def uniform(half):
        return (torch.rand(shape, generator=generator, device=device or generator.device) * 2 - 1) * half
    angle, shear = uniform(math.radians(30) * strength), uniform(math.radians(15) * strength)
    scale = 1 + uniform(0.15 * strength)
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    row0 = torch.stack([cos, -sin + cos * tan, uniform(0.1 * strength)], -1)
    row1 = torch.stack([sin, cos + sin * tan, uniform(0.1 * strength)], -1)
    theta = torch.stack([row0, row1], -2)
    return torch.cat([theta[..., :2] / scale[..., None, None], theta[..., 2:]], -1)


def augmented(items, theta):
    """Images [B, T+1, H, W] (uint8 values) warped by theta [B, T+1, 2, 3] (augment_thetas): float, the same 0-255
    range, the border pixel (Omniglot's background) filling what the warp brings in."""
    x = items.flatten(0, 1)[:, None].float()
    grid = F.affine_grid(theta.flatten(0, 1).float(), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode='border', align_corners=False)[:, 0].view(items.shape)


def sinusoidal_positions(n_positions, dim):
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd={config.n_embd} must be divisible by n_head={config.n_head}")
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        # explicit softmax(QK^T) instead of F.scaled_dot_product_attention: same math, and it batches
        # under torch.func.vmap (SDPA has no vmap rule on CPU); group.StackedModel turns it on
        self.explicit = False

    def forward(self, x, return_attention=False, query_only=False):
        """query_only: attend from the last (query) position only and return [B, 1, C]; keys and
        values still come from every position. The last layer needs nothing else for the logits."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if query_only:
            q = q[:, :, -1:]  # the last position sees every key: no causal mask
        if return_attention or self.explicit:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            if not query_only:
                causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                scores = scores.masked_fill(~causal, float('-inf'))
            attention = scores.softmax(dim=-1)
            if self.training and self.dropout > 0:
                attention = F.dropout(attention, self.dropout)
            y = attention @ v
            attention = attention if return_attention else None
        else:
            attention = None
            y = F.scaled_dot_product_attention(q, k, v, is_causal=not query_only,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, q.shape[2], C)
        return self.proj(y), attention


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd), nn.GELU(),
                                 nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd),
                                 nn.Dropout(config.dropout))

    def forward(self, x, query_only, out, edits, i):
        """out: the forward's record (its lists get this layer's entries); edits: {part: fn} (ICLTransformer.edits)."""
        a, attention = self.attn(self.ln_1(x), 'attention' in out, query_only)
        a = edits[f'attn{i}'](a) if f'attn{i}' in edits else a
        x = (x[:, -1:] if query_only else x) + a
        hidden = self.mlp[1](self.mlp[0](self.ln_2(x)))  # the MLP's hidden activations (its Sequential's keys kept)
        m = self.mlp[3](self.mlp[2](hidden))
        m = edits[f'mlp{i}'](m) if f'mlp{i}' in edits else m
        for name, value in (('attention', attention), ('attn_out', a), ('mlp_hidden', hidden), ('mlp_out', m)):
            if name in out:
                out[name].append(value)
        return x + m


class ICLTransformer(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.encoder = make_encoder(config)
        self.label_embedding = nn.Embedding(config.n_labels, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.n_labels)
        self.register_buffer('positions', sinusoidal_positions(256, config.n_embd), persistent=False)
        self.edits = {}  # part name ('mlp0', ...) -> fn(its output) -> the output used instead: eval.py's ablation

    def forward(self, items, labels, record=(), draws=None):
        """items [B, T+1, *item_shape], labels [B, T+1] (the query's label, labels[:, T], is never read) -> the
        forward's record, a dict: 'logits' [B, n_labels] at the query, and for each name in `record` (RECORDS) a list:
        per layer its attention probabilities [B, n_head, S, S] ('attention'), its attention and MLP outputs
        [B, S, C] ('attn_out', 'mlp_out') and MLP hidden activations [B, S, mlp_ratio*C] ('mlp_hidden'); one entry
        for 'encoder' (the item tokens [B, T+1, C]) and 'head_in' (the head's input [B, C]). self.edits {part: fn}
        replaces a part's output by fn(output) (eval.py's ablation): 'encoder', 'attn<i>', 'mlp<i>', 'head' (its input).
        draws {name: tensor}: what a model-side lever drew for this training step (step.StepTerms.draws, from a
        generator seeded per run and step); none at eval."""
        draws = draws or {}
        unknown = [name for name in record if name not in RECORDS]
        if unknown:
            raise ValueError(f"record={record!r}: unknown {unknown[0]!r}; the forward records {', '.join(RECORDS)}")
        out, edits = {'logits': None, **{name: [] for name in record}}, self.edits
        B, S = labels.shape
        if 'augment' in draws:  # train.py's augment: a random affine warp per training image (augment_thetas)
            items = augmented(items, draws['augment'])
        item_tokens = self.encoder(items.flatten(0, 1)).view(B, S, -1)
        item_tokens = edits['encoder'](item_tokens) if 'encoder' in edits else item_tokens
        label_tokens = self.label_embedding(labels[:, :-1])
        # interleave: x0 y0 x1 y1 ... x_{T-1} y_{T-1} x_query
        tokens = torch.stack([item_tokens[:, :-1], label_tokens], dim=2).flatten(1, 2)
        x = torch.cat([tokens, item_tokens[:, -1:]], dim=1)
        x = x + self.positions[: x.shape[1]]
        for i, block in enumerate(self.blocks):
            # the logits read only the query: the last block computes its output there alone (keys and
            # values still from every token), ~1.5x fewer FLOPs for 2 layers; a record needs every position
            x = block(x, i == len(self.blocks) - 1 and not record, out, edits, i)
        head_in = self.ln_f(x[:, -1])
        head_in = edits['head'](head_in) if 'head' in edits else head_in
        for name, value in (('encoder', item_tokens), ('head_in', head_in)):
            if name in out:
                out[name].append(value)
        out['logits'] = self.head(head_in)
        return out

    def module_of(self, name):
        """Which of DECAY_MODULES a parameter name belongs to ('encoder', 'attn', 'mlp', 'head'), or None
        (label embedding, LayerNorms)."""
        if name.startswith('encoder.'):
            return 'encoder'
        if name.startswith('head.'):
            return 'head'
        part = name.split('.')[2] if name.startswith('blocks.') else None
        return part if part in ('attn', 'mlp') else None

    def decayed_parameters(self, decay_modules='all'):
        """(decay, no_decay) parameter lists: the decayed group is the Linear/Conv weights of the modules
        named in decay_modules (parse_decay_modules: 'all' = every one), the one group that both
        weight_decay and l2 act on; norms (LayerNorm/BatchNorm), biases and embedding tables never."""
        chosen = parse_decay_modules(decay_modules)
        decay, no_decay = [], []
        for module_name, module in self.named_modules():
            for name, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{name}" if module_name else name
                if (name == 'weight' and isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))
                        and self.module_of(full) in chosen):
                    decay.append(param)
                else:
                    no_decay.append(param)
        return decay, no_decay

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())



DECAY_MODULES = ('encoder', 'attn', 'mlp', 'head')  # whose Linear/Conv weights decay_modules may name
RECORDS = ('attention', 'attn_out', 'mlp_hidden', 'mlp_out', 'encoder', 'head_in')  # what forward(record=...) returns



def parse_modules(text, key='decay_modules', allowed=DECAY_MODULES, everything='all'):
    """A config key naming modules: `everything` (when given) or a comma (or '+') list of `allowed` -> a tuple in
    `allowed` order; ValueError naming the key and the unknown entry otherwise (decay_modules, forget_modules)."""
    choices = (f"'{everything}' or " if everything else '') + f"a comma list of {', '.join(allowed)}"
    if not isinstance(text, str):
        raise ValueError(f"{key}={text!r} must be {choices}")
    names = [s.strip() for s in text.replace('+', ',').split(',') if s.strip()]
    if everything and names == [everything]:
        return allowed
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"{key}={text!r}: {'unknown module ' + repr(unknown[0]) if unknown else 'empty'}; use {choices}")
    return tuple(m for m in allowed if m in names)


def parse_decay_modules(text):
    """'all' or a comma list of DECAY_MODULES ('mlp,head') -> a tuple in DECAY_MODULES order."""
    return parse_modules(text)


def learning_rate_at(it, config):
    """Learning rate at iteration `it` for a run's config: linear warmup, then constant, 1/sqrt(step)
    (Chan et al.) or cosine to min_lr. optimizer.AdamW steps by it; decay_exponent sums it."""
    lr, warmup, schedule = config['learning_rate'], config['warmup_iters'], config['lr_schedule']
    if it < warmup:
        return lr * (it + 1) / warmup
    if schedule == 'inverse_sqrt':
        return lr * math.sqrt(max(warmup, 1) / (it + 1))
    if schedule == 'cosine':
        min_lr = config.get('min_lr', 0.0)
        progress = min(1.0, (it - warmup) / max(1, config['max_iters'] - warmup))
        return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)
    return lr


def weight_decay_at(it, config):
    """AdamW's decoupled weight decay at iteration `it` for a run's config: constant. The optimizer
    (optimizer.AdamW) reads it at every step of a run or group member and decay_exponent sums it, so a decay
    schedule is one edit here."""
    return config['weight_decay']


def decay_exponent(config):
    """sum over steps of lr * wd: AdamW shrinks a decayed weight by (1 - lr*wd) per step, so a weight the
    gradients leave alone ends at exp(-decay_exponent) of its start (lr*wd*steps at constant lr and wd)."""
    return sum(learning_rate_at(it, config) * weight_decay_at(it, config) for it in range(config['max_iters']))


def build_model(config, dataset):
    """The ICLTransformer for a run's config dict and its Dataset (shared by train/eval/sample_attention). Every
    ModelConfig field the data set does not give is the train.py key of its name (a model lever is a train.py global
    and a field); a field no key is named like is a ValueError naming it, at start-up."""
    item_shape = tuple(dataset.train.exemplars.shape[2:])
    given = dict(n_labels=dataset.n_labels, item_shape=item_shape, mlp_ratio=ModelConfig.mlp_ratio,
                 encoder='linear' if len(item_shape) == 1 else 'resnet')
    names = [f.name for f in fields(ModelConfig) if f.name not in given]
    for k in names:
        if k not in config:
            close = difflib.get_close_matches(k, list(config), n=1, cutoff=0.6)
            raise ValueError(f"ModelConfig field {k!r} is no train.py key" + (f" (is it {close[0]!r}?)" if close else '')
                             + ": a model field is named like its train.py global, which build_model gives it")
    return ICLTransformer(ModelConfig(**given, **{k: config[k] for k in names}))
