"""Fully sharded data parallel training (``train.sharding=fsdp``) with PyTorch's own engine, FSDP2.

Reference: Zhao et al., "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel", VLDB 2023, and the
``torch.distributed.fsdp.fully_shard`` documentation (FSDP2: per-parameter sharding on DTensors). The idea is
ZeRO-3 (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", SC 2020):
every rank keeps 1/W of each parameter, gradient and Adam moment; a block's full parameters exist only while
that block runs (all-gather before its forward and backward, reduce-scatter of its gradients after).

What this module does for the Trainer (train/trainer.py):

* :func:`shard_module`: ``fully_shard`` every element of every outermost ``nn.ModuleList`` of the task's network
  (the transformer blocks, the U-Net's down/up stages, the MLP's residual blocks), then the network itself (the
  root: embeddings, heads, norms outside the blocks), on a 1-D device mesh over the torchrun world. Each
  parameter becomes a ``DTensor`` sharded on dim 0 (rank r holds ``torch.chunk(p, W, 0)[r]``). The optimizer
  and the EMA are built afterwards, so Adam's moments and the EMA shadow are sharded alike.
  With ``bf16`` (``train.precision=bf16``) the blocks gather their parameters in bfloat16 and reduce gradients
  in float32 (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32, output_dtype=fp32)``); the sharded
  master weights, the root's parameters, the optimizer and the EMA stay float32. Methods other than ``forward``
  through which a network or block is run (``NETWORK_METHODS``, ``BLOCK_METHODS``, ``Task.sharded_methods``) are
  registered with ``register_fsdp_forward_method``, so they gather the parameters as ``forward`` does.
* :func:`full_tensors`: a nested state (dicts, lists, tuples) with each ``DTensor`` replaced by its full tensor
  (an all-gather, so every rank calls it, in the same order): checkpoints hold full tensors (train/checkpoint.py).
* :func:`like_layout`: a full tensor laid out like a live (sharded) one: each rank keeps its own ``Shard(0)``
  chunk, computed locally from the full tensor (no communication). This is the resharding rule: a checkpoint
  written by W processes (or by DDP, or by one process) resumes under any W', rank r taking rows
  ``torch.chunk(full, W', 0)[r]`` of every parameter, Adam moment and EMA tensor.
* :func:`clip_sharded_gradients`: the global gradient norm from the local shards (one all-reduce) and clipping.
* :func:`gathered`: the full parameters held on every rank for evaluation (validation, sample grids), so that
  ranks may run different numbers of forward passes (validation split over ranks) without collectives.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..distributed import DistContext

__all__ = ["fully_shard_available", "shard_module", "is_sharded", "full_tensors", "like_layout",
           "clip_sharded_gradients", "gathered", "block_modules"]


#: Methods other than ``forward`` through which the library runs its networks and their blocks; FSDP gathers the
#: parameters around them as around ``forward`` (``register_fsdp_forward_method``), where a module has them: the
#: sequence transformer's positions / KV-cache path (block diffusion) and its blocks' ``forward_kv``.
NETWORK_METHODS = ("forward_positions",)
BLOCK_METHODS = ("forward_kv",)


def fully_shard_available() -> bool:
    """Whether this torch build has FSDP2 (``torch.distributed.fsdp.fully_shard``, torch >= 2.6) and DTensor."""
    if not torch.distributed.is_available():
        return False
    try:
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard  # noqa: F401
        from torch.distributed.tensor import DTensor, distribute_tensor  # noqa: F401
    except ImportError:
        return False
    return True


def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return None
    return DTensor


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a ``DTensor`` (a sharded parameter, gradient, moment or EMA tensor)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def block_modules(network: nn.Module) -> list[nn.Module]:
    """The units sharded one by one: every element with parameters of every outermost ``nn.ModuleList`` of
    ``network`` (a list nested in an element is part of that element)."""
    blocks: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                blocks.extend(m for m in child if any(True for _ in m.parameters()))
            else:
                visit(child)

    visit(network)
    return blocks


def shard_module(module: nn.Module, ctx: DistContext, device: torch.device, bf16: bool = False,
                 methods: tuple[str, ...] = ()) -> nn.Module:
    """``fully_shard`` ``module``'s network in place over the world of ``ctx`` (module docstring); returns the
    network (the FSDP root): ``module.backbone`` where the module has one (denoisers, planner, classifier: their
    wrappers call the backbone), else ``module``. ``methods``: the network's methods other than ``forward`` that
    are called on it directly (``Task.sharded_methods``); they gather the parameters as ``forward`` does.
    ValueError when the torch build has no FSDP2 or when a trainable parameter of ``module`` lies outside the
    network (it would be neither sharded nor reduced)."""
    if not fully_shard_available():
        raise ValueError(f"train.sharding=fsdp needs torch.distributed.fsdp.fully_shard (torch >= 2.6); this is "
                         f"torch {torch.__version__}: use train.sharding=none (DDP)")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    network = getattr(module, "backbone", module)
    inside = {id(p) for p in network.parameters()}
    outside = [name for name, p in module.named_parameters() if p.requires_grad and id(p) not in inside]
    if outside:
        raise ValueError(f"train.sharding=fsdp shards the network {type(network).__name__}, but the trained module "
                         f"{type(module).__name__} has parameters outside it ({', '.join(outside[:3])}); "
                         "use train.sharding=none")
    mesh = init_device_mesh(device.type, (ctx.world_size,))
    fp32 = torch.float32
    block_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=fp32, output_dtype=fp32) if bf16 \
        else MixedPrecisionPolicy()
    for block in block_modules(network):
        fully_shard(block, mesh=mesh, mp_policy=block_policy)
        for name in BLOCK_METHODS:
            if callable(getattr(block, name, None)):
                register_fsdp_forward_method(block, name)
    fully_shard(network, mesh=mesh, mp_policy=MixedPrecisionPolicy(reduce_dtype=fp32) if bf16
                else MixedPrecisionPolicy())
    for name in (*NETWORK_METHODS, *methods):
        if callable(getattr(network, name, None)):
            register_fsdp_forward_method(network, name)
    return network


def full_tensors(obj: Any, keep: bool = True) -> Any:
    """``obj`` (nested dicts / lists / tuples of tensors and plain values) with every ``DTensor`` replaced by its
    full tensor on the CPU; other values unchanged. Every rank must call it on the same structure (each
    ``full_tensor`` is an all-gather). ``keep=False`` (ranks that do not write) drops the gathered tensors
    (``None``) as soon as they arrive."""
    if is_sharded(obj):
        full = obj.full_tensor()
        return full.cpu() if keep else None
    if isinstance(obj, dict):
        return {k: full_tensors(v, keep) for k, v in obj.items()}
    if isinstance(obj, list):
        return [full_tensors(v, keep) for v in obj]
    if isinstance(obj, tuple):
        return tuple(full_tensors(v, keep) for v in obj)
    return obj


def like_layout(full: Tensor, live: Any) -> Any:
    """``full`` laid out like ``live``: when ``live`` is a ``DTensor``, this rank's chunk of ``full`` as a
    ``DTensor`` of ``live``'s mesh and placements (cut locally, no communication: every rank read the same
    file); otherwise ``full`` unchanged."""
    if not is_sharded(live) or not isinstance(full, Tensor) or is_sharded(full):
        return full
    from torch.distributed.tensor import distribute_tensor

    assert tuple(full.shape) == tuple(live.shape), (full.shape, live.shape)
    return distribute_tensor(full.to(device=live.device, dtype=live.dtype), live.device_mesh, live.placements,
                             src_data_rank=None)


def clip_sharded_gradients(parameters: Any, max_norm: float | None, ctx: DistContext) -> float:
    """Like :func:`~discrete_diffusion.train.optim.clip_gradients` for sharded gradients: the global L2 norm
    ``sqrt(sum_r sum_local g^2)`` (float64 sums of each rank's shards, all-reduced) measured before clipping; with
    ``max_norm`` (not 0 / None / inf) every gradient is scaled by ``min(1, max_norm / (norm + 1e-6))`` (torch's
    ``clip_grad_norm_`` rule). Returns 0.0 when no parameter has a gradient."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    assert all(is_sharded(g) for g in grads), "every trained parameter is sharded (shard_module checks it)"
    local = [g.to_local() for g in grads]
    total = torch.zeros(1, dtype=torch.float64)
    for g in local:
        if g.numel():
            total += g.detach().double().pow(2).sum().cpu()
    total = ctx.all_reduce(total.to(ctx.collective_device())).cpu()
    norm = math.sqrt(max(float(total[0]), 0.0))
    if max_norm and not math.isinf(max_norm) and math.isfinite(norm):
        coef = min(1.0, max_norm / (norm + 1e-6))
        if coef < 1.0:
            with torch.no_grad():
                for g in local:
                    g.mul_(coef)
    return norm


@contextmanager
def gathered(network: nn.Module) -> Iterator[nn.Module]:
    """Hold ``network``'s full (unsharded) parameters on every rank inside the block (one all-gather per FSDP
    unit on entry, none per forward), then shard them again. Evaluation inside may run a different number of
    forward passes on each rank. Parameters changed inside are lost (they are gathered copies): copy weights
    (e.g. the EMA) into the sharded parameters before entering."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in network.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield network
        return
    network.set_reshard_after_forward(False, recurse=True)
    try:
        for unit in units:
            unit.unshard()
        yield network
    finally:
        for unit in units:
            unit.reshard()
        for unit in units:   # the root keeps its parameters after forward (FSDP2's default); blocks reshard
            unit.set_reshard_after_forward(unit is not network, recurse=False)
