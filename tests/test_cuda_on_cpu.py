"""The CUDA path checked on a CPU machine: device mix-ups, graph breaks and bf16 dtype mismatches show here, not
first on a GPU.

- Fake CUDA (FakeTensorMode: tensors on 'cuda' without a GPU; a CPU tensor meeting a CUDA one raises
  FakeTensorDeviceMismatchError): train.py's build (build_run_data, build_model(...).to(device), optimizer.AdamW,
  StepTerms), one train_step with every sampler rule and penalty on, then one eval_row, solo and as a train.py group of
  two (stack_group, GroupSampler, GroupExposure), on the synthetic and the Omniglot ResNet path. The step reads no
  tensor values (a host sync raises DataDependentOutputException here). The Omniglot group also checks that the group
  stacks ResNet weights plain (channels_last ones make BatchNorm under vmap on CUDA ask vmap for that layout: NYI);
  test_a_resnet_members_... that member checkpoints keep the solo layout (fused AdamW on CUDA refuses a mix).
- torch._dynamo.explain of the training forward: one graph, no graph break (inductor itself: the slow test).
- bf16 autocast on the CPU through the same step: float32 parameters and gradients, a finite loss.

What stands in for the GPU, and so only a real one checks (scripts/gpu_check.sh):
- data.make_generator: a CPU generator replaces torch.Generator(device='cuda') (which needs a GPU); fake tensors do not
  check a generator's device either.
- the backward: the autograd engine needs a CUDA context even for fake tensors (pytorch#92627), so under fake CUDA a
  stand-in gives every leaf the loss depends on a gradient on its own device; the real backward runs in the bf16 test
  (on the CPU: a CUDA-only backward path, such as BatchNorm's under a group's vmap, only a GPU runs).
- the interventions between steps: forgetting's fresh model is built on the CPU for real (as train.py builds one)
  before it is copied into the CUDA weights; the curvature edit's torch.autograd.grad gives ones (the same engine).
- build_run_data's host half (data.build_host_data: files, CPU generators, indexing by values) runs for real;
  the move to the device and everything after it run on fake CUDA.
- label_swap_to='all' under fake CUDA: 'train' pools the training classes' labels with torch.unique when the sampler
  is built, a read of values (one sync on a GPU); the swap's device code is the same for both.
- the eval's metrics read values (item(), tolist(), bincount, nonzero): under fake CUDA those calls run on zeros of
  the same shapes after a device check (ZerosForValues), so its numbers mean nothing.
- lines no CPU test reaches: train.py's CUDA autocast (solo and group) (torch disables it without a GPU), train.py's
  torch.compile(mode='reduce-overhead') (CUDA graphs), their torch.cuda.get_rng_state / set_rng_state /
  get_device_name, training.resolve_device's torch.cuda.is_available; real kernels and their speed.
"""
import os
from types import SimpleNamespace

import pytest
import torch
from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode,
                                           unset_fake_temporarily)
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map_only

import data as data_module
from conftest import scaled_error
from checkpoint import train_defaults
from data import build_run_data, resolve_path, scored_at
from group import GroupExposure, GroupSampler, stack_group
from model import ICLTransformer, ModelConfig, build_model
from interventions import curvature_edit, forget, forgotten_names, fresh_state, parse_forget_modules
from optimizer import AdamW
from step import Exposure, StepTerms, train_step
from eval import WrongMemory
from training import eval_row

# small, with every sampler rule (label swap, instance copies, Zipf classes) and every penalty on
SYNTHETIC = {**train_defaults(), 'n_train_classes': 100, 'n_holdout_classes': 23, 'n_eval_episodes': 16,
             'batch_size': 8, 'label_swap': 0.3, 'p_copy': 0.5, 'zipf_alpha': 1.0, 'weight_decay': 0.1, 'l2': 0.01,
             'decay_modules': 'mlp,head', 'grad_clip': 1.0, 'relabel_every': 1}
OMNIGLOT = {**SYNTHETIC, 'dataset': 'omniglot', 'data_dir': '../shared/data/omniglot', 'image_size': 14, 'n_layer': 1,
            'pixel_noise': 0.1, 'augment': 0.5}  # cache_dir: train.py's (decoded once per machine)
HAVE_OMNIGLOT = os.path.isdir(os.path.join(resolve_path(OMNIGLOT['data_dir']), 'omniglot-py'))
needs_omniglot = pytest.mark.skipif(not HAVE_OMNIGLOT, reason=f"no Omniglot at {resolve_path(OMNIGLOT['data_dir'])}"
                                    f"/omniglot-py (the ResNet path needs its images; nothing is downloaded in tests)")
PATHS = [pytest.param(SYNTHETIC, id='synthetic'), pytest.param(OMNIGLOT, id='omniglot', marks=needs_omniglot)]


IMAGES = {}  # load_omniglot's arrays, read once per session


@pytest.fixture(autouse=True)
def omniglot_read_once(monkeypatch):
    """load_omniglot (a scan of 32k files, then the decoded cache) once per session, not once per test."""
    load = data_module.load_omniglot

    def once(*args):
        if args not in IMAGES:
            IMAGES[args] = load(*args)
        return IMAGES[args]
    monkeypatch.setattr(data_module, 'load_omniglot', once)


def members(config, k):
    """k runs' configs: config itself, then members that differ in seed, decay and penalty (per-member tensors)."""
    return [config, {**config, 'seed': 1, 'weight_decay': 0.2, 'decay_modules': 'attn,head', 'l2': 0.02}][:k]


def build(configs, device):
    """What train.py builds for one config or a group (several) before its loop, on `device`."""
    cache, models, samplers, episodes, datas = [], [], [], [], []
    for c in configs:
        torch.manual_seed(c['seed'])
        data, sampler, icl, iwl, probes = build_run_data(c, device, cache=cache)
        datas.append(data)
        with unset_fake_temporarily():  # initialised on the CPU (train.py's build_model), then moved
            model = build_model(c, data)
        models.append(model.to(device))
        samplers.append(sampler)
        episodes.append((icl, iwl, probes))
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    c = configs[0]
    if len(configs) == 1:  # train.py
        model = models[0]
        optimizer = AdamW([c], model, dict(model.named_parameters()), device_type == 'cuda')
        terms = StepTerms([c], model.decayed_parameters(c['decay_modules'])[0])
        return SimpleNamespace(forward=model, module=model, optimizer=optimizer, sampler=samplers[0], terms=terms,
                               exposure=Exposure(samplers[0].bank.n_classes, device), template=model,
                               episodes=episodes, configs=configs, stacked=None, datas=datas)
    stacked, optimizer, terms = stack_group(models, configs, device_type)  # a group
    return SimpleNamespace(forward=stacked, module=stacked.base, optimizer=optimizer, sampler=GroupSampler(samplers),
                           exposure=GroupExposure([Exposure(s.bank.n_classes, device) for s in samplers]),
                           terms=terms, template=models[0], episodes=episodes, configs=configs, stacked=stacked,
                           datas=datas)


def eval_member(run, k, lr):
    """train.py's eval (evaluate_and_log without its files), or a group's for member k through its template."""
    if run.stacked is not None:
        run.template.load_state_dict(run.stacked.member_state(k, list(run.template.state_dict())))
    c = run.configs[k]
    sampler = run.sampler.samplers[k] if run.stacked is not None else run.sampler
    icl, iwl, probes = scored_at(run.episodes[k], sampler, 2)  # relabelled to step 1's map where relabel_every is on
    decayed = run.template.decayed_parameters(c['decay_modules'])[0]
    return eval_row(run.template, icl, iwl, c, 1, None, decayed, 0.0, lr, None, probes)


def measure_wrong_memory(run):
    """train.py's wrong-memory measurement at step 0 (each member loaded into the template in a group)."""
    counter = WrongMemory(run.configs, run.datas, 'cuda')
    keys = list(run.template.state_dict())
    counter.measure(run.template, 0, None if run.stacked is None else
                    lambda k: run.template.load_state_dict(run.stacked.member_state(k, keys)))
    return counter


def params(optimizer):
    return [p for group in optimizer.param_groups for p in group['params']]


# ---- fake CUDA ------------------------------------------------------------------------------------------

def leaf_gradients(loss, *args, **kwargs):
    """Tensor.backward's stand-in under fake CUDA: each leaf the loss depends on gets a gradient on its device."""
    assert loss.device.type == 'cuda' and loss.grad_fn is not None, (loss.device, loss.grad_fn)
    seen, nodes = set(), [loss.grad_fn]
    while nodes:
        node = nodes.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, 'variable'):  # AccumulateGrad: a leaf
            node.variable.grad = torch.ones_like(node.variable)
        nodes.extend(next_node for next_node, _ in node.next_functions)


class ZerosForValues(TorchFunctionMode):
    """Under fake tensors, a call that reads values (item(), tolist(), bool(), bincount, nonzero, masked indexing)
    runs on zeros of the same shapes instead, once its tensors are checked to share a device, so the eval runs on."""

    def __init__(self, fake_mode):
        super().__init__()
        self.fake_mode = fake_mode

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.Tensor.tolist:  # tolist reads memory without a fake-tensor error
            try:
                return func(*args, **kwargs)
            except (DataDependentOutputException, DynamicOutputShapeException):
                pass
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        devices = {t.device for t in tensors if t.dim() > 0} or {t.device for t in tensors} or {torch.device('cpu')}
        if len(devices) > 1:
            raise RuntimeError(f"Expected all tensors to be on the same device, but {func} got {devices}")
        device = devices.pop()
        with unset_fake_temporarily():
            zeros = tree_map_only(torch.Tensor, lambda t: torch.zeros(t.shape, dtype=t.dtype), (args, kwargs))
            out = func(*zeros[0], **zeros[1])
        return tree_map_only(torch.Tensor, lambda t: self.fake_mode.from_tensor(t).to(device), out)


@pytest.fixture
def fake_cuda(monkeypatch):
    """FakeTensorMode on, with the stand-ins the module docstring lists."""
    host = data_module.build_host_data

    def host_data(config):
        with unset_fake_temporarily():
            return host(config)
    monkeypatch.setattr(data_module, 'build_host_data', host_data)
    monkeypatch.setattr(data_module, 'make_generator', lambda device: torch.Generator())
    monkeypatch.setattr(torch.Tensor, 'backward', leaf_gradients)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:  # real CPU inputs (host data, CPU init) become fake
        yield mode


@pytest.mark.parametrize('k', [1, 2], ids=['solo', 'group'])
@pytest.mark.parametrize('config', PATHS)
def test_one_step_and_one_eval_on_fake_cuda(fake_cuda, config, k):
    """Built for 'cuda' as train.py builds (a run or a group), one step and one eval: a tensor made without device= in the
    sampler, model, step or group meets CUDA ones and fails here; everything the step leaves is on CUDA."""
    configs = members({**config, 'label_swap_to': 'all'}, k)
    run = build(configs, 'cuda')
    loss = train_step(run.forward, run.optimizer, run.sampler, 0, run.exposure, run.terms)
    assert loss.device.type == 'cuda' and loss.shape == (() if k == 1 else (k,))
    every = params(run.optimizer)
    assert all(p.device.type == 'cuda' and p.grad is None for p in every)  # stepped, then zero_grad
    state = run.optimizer.inner.state  # optimizer.AdamW steps an inner torch AdamW
    assert all(state[p]['exp_avg'].device.type == 'cuda' for p in every)  # every parameter stepped
    exposures = run.exposure.members if k > 1 else [run.exposure]
    assert all(e.query.device.type == 'cuda' for e in exposures)
    with ZerosForValues(fake_cuda):
        row = eval_member(run, k - 1, 1e-3)
        counter = measure_wrong_memory(run)
    assert {'icl_acc', 'iwl_acc', 'conflict_icl', 'train_dist_acc', 'weight_norm'} <= set(row)
    assert counter.wrong.device.type == 'cuda' and counter.count == counter.SEQUENCES


@pytest.mark.parametrize('where', ['sampler', 'eval'])
def test_fake_cuda_catches_a_cpu_tensor(fake_cuda, monkeypatch, where):
    """The guard has teeth: one CPU tensor, from the sampler into the step or in the eval episodes, is an error."""
    run = build(members({**SYNTHETIC, 'label_swap_to': 'all'}, 1), 'cuda')
    if where == 'sampler':
        sample = run.sampler.sample
        monkeypatch.setattr(run.sampler, 'sample', lambda b, step=0: (lambda i, l, c: (i, l.cpu(), c))(*sample(b, step)))
        with pytest.raises(RuntimeError, match='same device'):
            train_step(run.forward, run.optimizer, run.sampler, 0, run.exposure, run.terms)
    else:
        icl, iwl, probes = run.episodes[0]
        run.episodes[0] = (data_module.Episodes(icl.items, icl.labels.cpu(), icl.classes), iwl, probes)
        with pytest.raises(RuntimeError, match='same device'), ZerosForValues(fake_cuda):
            eval_member(run, 0, 1e-3)


def between_steps(run, iter_num):
    """train.py's interventions after a step, for each member: forgetting (fresh tensors from the member's own seed,
    its AdamW state dropped), then the curvature edit on its own weights (a group's loaded into the plain template)."""
    model = run.module if run.stacked is None else run.template
    state_keys = list(run.template.state_dict())
    names = forgotten_names(state_keys, parse_forget_modules(run.configs[0]['forget_modules']))
    removed = []
    for k, c in enumerate(run.configs):
        with unset_fake_temporarily():   # a fresh model is built on the CPU, as build() builds one
            fresh = fresh_state(c, run.datas[k], iter_num, names)
        forget(run.module.state_dict(keep_vars=True) if run.stacked is None else
               {name: t[k] for name, t in {**run.stacked.params, **run.stacked.buffers}.items()},
               fresh, run.optimizer.inner.state, run.optimizer.params)
        if run.stacked is not None:
            model.load_state_dict(run.stacked.member_state(k, state_keys))
        weights, share = curvature_edit(model, c, run.datas[k], iter_num)
        with torch.no_grad():
            for name, w in weights.items():
                (model.get_parameter(name) if run.stacked is None else run.stacked.params[name][k]).copy_(w)
        removed.append((weights, share))
    return removed


def output_gradients(outputs, inputs, grad_outputs=None, **kwargs):
    """torch.autograd.grad's stand-in under fake CUDA (the engine needs a CUDA context): a gradient of ones for each
    input, on its device."""
    inputs = [inputs] if isinstance(inputs, torch.Tensor) else inputs
    return tuple(torch.ones_like(t) for t in inputs)


INTERVENTIONS = {'forget_every': 1, 'forget_modules': 'encoder,label_embedding,head,mlp', 'curvature_every': 1,
                 'curvature_rho': 0.5, 'curvature_modules': 'attn,mlp,head', 'curvature_sequences': 12}


@pytest.mark.parametrize('k', [1, 2], ids=['solo', 'group'])
@pytest.mark.parametrize('config', PATHS)
def test_forgetting_and_the_curvature_edit_on_fake_cuda(fake_cuda, monkeypatch, config, k):
    """The interventions between steps, built for 'cuda' as train.py runs them (solo, and per member of a group): the
    fresh tensors made on the CPU, the K-FAC factors' sampled labels and the edit's CPU eigenvectors all meet CUDA
    weights; a device mix fails here, and every tensor left behind is on CUDA."""
    monkeypatch.setattr(torch.autograd, 'grad', output_gradients)
    run = build(members({**config, **INTERVENTIONS, 'label_swap_to': 'all'}, k), 'cuda')
    train_step(run.forward, run.optimizer, run.sampler, 0, run.exposure, run.terms)
    with ZerosForValues(fake_cuda):
        edits = between_steps(run, 1)
    assert all(weights and all(w.device.type == 'cuda' for w in weights.values()) for weights, _ in edits)
    assert all(t.device.type == 'cuda' for t in [*run.module.state_dict().values(), *run.template.state_dict().values()])
    forgotten = set(forgotten_names(list(run.template.state_dict()), parse_forget_modules(INTERVENTIONS['forget_modules'])))
    state = run.optimizer.inner.state   # the forgotten parameters' AdamW state dropped, the others' kept
    assert {name for name, p in run.optimizer.params.items() if p not in state} == forgotten & set(run.optimizer.params)
    loss = train_step(run.forward, run.optimizer, run.sampler, 1, run.exposure, run.terms)   # and trains on
    assert loss.device.type == 'cuda'


def test_fake_cuda_catches_a_device_mix_in_the_curvature_edit(fake_cuda, monkeypatch):
    """The guard has teeth: the edit's eigenvectors left on the CPU (not moved to the weight's device) are an error."""
    import curvature
    monkeypatch.setattr(torch.autograd, 'grad', output_gradients)
    run = build(members({**SYNTHETIC, **INTERVENTIONS, 'label_swap_to': 'all'}, 1), 'cuda')
    monkeypatch.setattr(curvature, 'edit_weight', lambda W, U_G, U_A, mask: (U_G.cpu() @ W @ U_A.cpu()).to(W.dtype))
    with pytest.raises(RuntimeError, match='device'), ZerosForValues(fake_cuda):
        between_steps(run, 1)


def test_a_resnet_members_optimizer_state_is_laid_out_like_its_solo_run():
    """A group stacks its parameters plain (group.StackedModel: BatchNorm under vmap on CUDA), while a solo ResNet's
    are channels_last; fused AdamW on CUDA refuses a state laid out unlike its parameter. So a member's checkpoint state
    is laid out like the solo run's, and a group resuming from it like the stacked parameters."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_labels=10, item_shape=(14, 14), encoder='resnet', n_layer=1, n_head=2, n_embd=16)
    stacked, optimizer, _ = stack_group([ICLTransformer(cfg), ICLTransformer(cfg)], members(SYNTHETIC, 2), 'cpu')
    stacked(torch.randint(0, 256, (2, 3, 9, 14, 14), dtype=torch.uint8), torch.randint(0, 10, (2, 3, 9)))['logits'].sum().backward()
    optimizer.step(0)
    states = [optimizer.state_dict(k) for k in range(2)]
    solos = [[optimizer.like[n] for n in decay + no_decay] for decay, no_decay in optimizer.orders]
    assert any(not p.is_contiguous() for p in solos[0])  # channels_last 3x3 kernels: what matters
    assert all(state['state'][i]['exp_avg'].stride() == p.stride()  # each member's in its own solo AdamW's order
               for state, solo in zip(states, solos) for i, p in enumerate(solo))
    before = {p: optimizer.inner.state[p]['exp_avg'].clone() for p in params(optimizer)}
    optimizer.load_state_dicts(states)
    assert all(optimizer.inner.state[p]['exp_avg'].stride() == p.stride() for p in params(optimizer))
    assert all(torch.equal(optimizer.inner.state[p]['exp_avg'], before[p]) for p in params(optimizer))


# ---- torch.compile: one graph ----------------------------------------------------------------------------

def training_batch(config):
    """A CPU model and a batch of its training sequences, and train_step's forward arguments for it."""
    run = build([config], 'cpu')
    items, labels, _ = run.sampler.sample(config['batch_size'])
    return run, (items, labels), {'record': tuple(sorted(run.terms.record))}


@pytest.mark.parametrize('config', PATHS)
def test_training_forward_is_one_graph(config):
    """torch.compile (train.py on CUDA) of the forward as train_step calls it: one graph without breaks (a break
    splits the CUDA graph of compile_mode='reduce-overhead'). Dynamo only; the slow test below runs inductor."""
    run, args, kwargs = training_batch(config)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(run.forward)(*args, **kwargs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.slow
@pytest.mark.parametrize('config', PATHS)
def test_compiled_training_forward_and_backward_match_eager(config):
    """Inductor (compile_mode='default') compiles the training forward and its backward without a graph break, and
    computes what the eager model does."""
    run, args, kwargs = training_batch({**config, 'pixel_noise': 0.0})  # no noise: the same numbers both ways
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(run.forward, mode='default')
    logits = compiled(*args, **kwargs)['logits']
    logits.float().sum().backward()
    assert not torch._dynamo.utils.counters['graph_break'], dict(torch._dynamo.utils.counters['graph_break'])
    grads = [p.grad.clone() for p in run.forward.parameters()]
    run.forward.zero_grad()
    eager = run.forward(*args, **kwargs)['logits']
    eager.float().sum().backward()
    # inductor fuses and reorders the sums: <= 256 roundings per op (the widest sum: the MLP's 4 x 64), over <= 6 ops
    # per layer and 2 layers plus the encoder and head, of the logits' scale; a gradient sums over the batch's 8 x 17
    # tokens too: <= 8 x 17 x 256 roundings of the tensor's largest gradient
    assert scaled_error(logits, eager) <= 14 * 256
    for g, p in zip(grads, run.forward.parameters()):
        assert scaled_error(g, p.grad) <= 8 * 17 * 256


# ---- bf16 autocast ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('config, k', [
    pytest.param(SYNTHETIC, 1, id='synthetic-solo'), pytest.param(SYNTHETIC, 2, id='synthetic-group'),
    pytest.param(OMNIGLOT, 1, id='omniglot-solo', marks=needs_omniglot),
    pytest.param(OMNIGLOT, 2, id='omniglot-group', marks=[needs_omniglot, pytest.mark.slow])])
def test_bf16_autocast_step_on_cpu(config, k):
    """train.py's bf16 autocast (CUDA) on the CPU: the step's forward computes in bf16, the loss is finite, and the
    parameters and their gradients stay float32 (a dtype mismatch in the model, loss or penalties fails here)."""
    run = build(members(config, k), 'cpu')
    head_dtypes, grads = [], []
    run.module.head.register_forward_hook(lambda module, args, out: head_dtypes.append(out.dtype))
    step = run.optimizer.step

    def record_then_step(it):
        grads.extend((p.dtype, p.grad) for p in params(run.optimizer))
        step(it)
    run.optimizer.step = record_then_step
    # with oneDNN's CPU bf16 kernels the ResNet path's gradients came out non-finite in about half of the runs, the same
    # loss every time: 8 of 18 on an AVX512 EPYC, 0 of 16 with oneDNN off (CUDA runs cuDNN, not oneDNN)
    with torch.backends.mkldnn.flags(enabled=False):
        loss = train_step(run.forward, run.optimizer, run.sampler, 0, run.exposure, run.terms,
                          torch.autocast('cpu', dtype=torch.bfloat16))
    # a group's Linear under vmap is a bf16 matmul plus a float32 bias add (torch's batching rule): float32 out
    assert head_dtypes == [torch.bfloat16 if k == 1 else torch.float32]
    assert loss.dtype == torch.float32 and loss.shape == (() if k == 1 else (k,)) and torch.isfinite(loss).all()
    assert len(grads) == len(params(run.optimizer))
    assert all(dtype == torch.float32 and g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
               for dtype, g in grads)
