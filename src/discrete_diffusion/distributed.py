"""Distributed data parallel helpers: torchrun detection, process-group setup, sharding and reductions.

Reference: PyTorch "Getting started with DistributedDataParallel" and the ``torchrun`` documentation
(https://pytorch.org/docs/stable/elastic/run.html). ``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` (plus ``MASTER_ADDR`` / ``MASTER_PORT``) in every worker; when they say ``WORLD_SIZE > 1``
:func:`setup` joins the default process group with ``gloo`` on CPU and ``nccl`` on CUDA. Without them
everything here degrades to single-process no-ops, so the same code path serves both.

The contract the trainer builds on (see docs/distributed.md):

* every rank draws the *global* batch (indices, augmentation, lam and x_t) from identically seeded
  generators and keeps its contiguous chunk (:func:`shard_bounds`), so the union over ranks is the batch
  a single process would train on and generator states stay equal on every rank (one checkpoint serves all);
* only rank 0 writes files; a failure on any rank is turned into an error on every rank
  (:meth:`DistContext.agree`) instead of a hang in the next collective.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

__all__ = ["DistContext", "env_world", "setup", "teardown", "shard_bounds", "resolve_local_device",
           "gather_shards", "pool_mean_stderr", "rank_seed", "sample_sharded"]

T = TypeVar("T")


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment; (0, 1, 0) when absent.

    Raises ValueError for malformed or inconsistent values."""
    raw = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if raw["WORLD_SIZE"] is None:
        return 0, 1, 0
    try:
        world = int(raw["WORLD_SIZE"])
        rank = int(raw["RANK"] if raw["RANK"] is not None else 0)
        local = int(raw["LOCAL_RANK"] if raw["LOCAL_RANK"] is not None else rank)
    except ValueError:
        raise ValueError(f"malformed torchrun environment {raw}: RANK, WORLD_SIZE and LOCAL_RANK must be "
                         "integers") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job. ``world_size == 1`` means no process group (plain run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ----- collectives (no-ops when not distributed) --------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce (``sum`` or ``max``) of a tensor on the collective device; returns it."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def any_true(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.collective_device(device))
        return bool(self.all_reduce(t, "max").item() > 0)

    def collective_device(self, device: torch.device | str | None = None) -> torch.device:
        """Where reduced tensors must live: this rank's GPU for NCCL, the CPU for gloo."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def agree(self, fn: Callable[[], T], what: str, device: torch.device | str = "cpu") -> T:
        """Run ``fn`` on every rank; if it raised anywhere, raise on every rank (the failing rank re-raises
        its own error, the others a ValueError naming ``what``) so that no rank waits forever."""
        try:
            result, error = fn(), None
        except BaseException as err:  # noqa: BLE001 - re-raised below, after telling the other ranks
            result, error = None, err
        if self.any_true(error is not None, device) and error is None:
            raise ValueError(f"{what} failed on another rank (see that rank's error); stopping rank {self.rank}")
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def on_main(self, fn: Callable[[], T], what: str, device: torch.device | str = "cpu") -> T | None:
        """Run ``fn`` on rank 0 only (file writes), then agree on success across ranks."""
        return self.agree(lambda: fn() if self.is_main else None, what, device)


def resolve_local_device(name: str, ctx: DistContext) -> torch.device:
    """The device for this rank: "auto" and bare "cuda" mean this rank's local GPU under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use device=cpu or auto")
        if device.index is None:
            device = torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            if ctx.enabled and device.index == ctx.local_rank:
                raise ValueError(f"rank {ctx.rank} (LOCAL_RANK {ctx.local_rank}) needs {device} but only {count} CUDA "
                                 f"device(s) are visible: start at most {count} process(es) per node "
                                 "(torchrun --nproc_per_node) or use --device cpu / train.device=cpu (gloo)")
            raise ValueError(f"device {device} requested but only {count} CUDA device(s) are visible")
    return device


def setup(device_name: str = "auto") -> tuple[DistContext, torch.device]:
    """Join the default process group when launched by torchrun with ``WORLD_SIZE > 1`` (idempotent).

    Returns the context and this rank's device (``cuda:LOCAL_RANK`` for "auto"/"cuda" on GPUs)."""
    rank, world, local = env_world()
    ctx = DistContext(rank, world, local)
    device = resolve_local_device(device_name, ctx)
    if world == 1:
        return ctx, device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed; run a single process")
    if dist.is_initialized():
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise ValueError("an existing process group disagrees with RANK / WORLD_SIZE")
        backend = str(dist.get_backend())
    else:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local, backend), device


def teardown() -> None:
    """Leave the default process group if this process joined one (with gloo: then wait until its worker
    threads are idle, :func:`_wait_for_gloo_workers`)."""
    if dist.is_available() and dist.is_initialized():
        gloo = dist.get_backend() == "gloo"
        dist.destroy_process_group()
        if gloo:
            _wait_for_gloo_workers()


def _wait_for_gloo_workers(timeout: float = 5.0, poll: float = 0.002) -> None:
    """Return once no gloo worker thread of this process is runnable, polling with the GIL released
    (at most ``timeout`` seconds; at once where there is no ``/proc/self/task``).

    Why: a gloo worker thread (``pt_gloo_runloop``) drops the last collective's Work after the caller's ``wait()``
    has returned; freeing the Python-owned tensors it holds takes the GIL. ``destroy_process_group`` does not join
    these threads (the backend lives on while anything refers to it; after FSDP2, DTensor's caches of its
    DeviceMesh do). If the main thread keeps the GIL until ``Py_FinalizeEx`` starts, the worker waiting for it is
    ended by ``pthread_exit`` inside a noexcept destructor: "terminate called without an active exception", then
    SIGABRT (exit code -6) once the run's work is done, in about one 2-process CPU run in 30 (seen with FSDP and
    with DDP). Sleeping releases the GIL; the workers are done once all of them sleep (state S) at two polls in a
    row. PyTorch PR #179291 describes the same abort (gloo workers freeing Work tensors during finalization)."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(poll)
        busy = False
        for tid in os.listdir(tasks):
            try:
                with open(f"{tasks}/{tid}/stat") as f:
                    stat = f.read()
            except OSError:   # the thread ended
                continue
            name, state = stat[stat.find("(") + 1:stat.rfind(")")], stat[stat.rfind(")") + 2:][:1]
            busy = busy or (name == "pt_gloo_runloop" and state != "S")
        quiet = 0 if busy else quiet + 1


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous chunk of n items, as ``torch.tensor_split`` cuts them
    (the first ``n % world_size`` ranks get one item more)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def gather_shards(ctx: DistContext, local: torch.Tensor, total: int) -> torch.Tensor | None:
    """Concatenate every rank's chunk (rank order) on rank 0; None on other ranks.

    Chunk sizes must follow :func:`shard_bounds` for ``total`` items; they may differ by one, so chunks
    are padded to a common size for ``all_gather``."""
    if not ctx.enabled:
        return local
    sizes = [b - a for a, b in (shard_bounds(total, r, ctx.world_size) for r in range(ctx.world_size))]
    assert local.shape[0] == sizes[ctx.rank], (local.shape, sizes)
    width = max(sizes)
    device = ctx.collective_device(local.device)
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    if not ctx.is_main:
        return None
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(local.device)


def pool_mean_stderr(count: float, total: float, total_sq: float) -> tuple[float, float]:
    """Mean and standard error of the mean from pooled (count, sum, sum of squares)."""
    if count < 1:
        raise ValueError("cannot pool an empty set of values")
    mean = total / count
    if count < 2:
        return mean, float("nan")
    var = max(total_sq - count * mean * mean, 0.0) / (count - 1)
    return mean, math.sqrt(var / count)


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s own stream in sharded sampling / evaluation (rank 0 keeps ``seed``)."""
    return int(seed) + 1_000_003 * int(rank)


def sample_sharded(ctx: DistContext, draw: Callable[[int, int], torch.Tensor], num: int,
                   site_shape: tuple[int, ...], seed: int) -> torch.Tensor | None:
    """Draw ``num`` samples split over ranks: rank r calls ``draw(count_r, rank_seed(seed, r))`` for its
    contiguous share; rank 0 gets all of them (rank order), other ranks None. One process: ``draw(num, seed)``."""
    if not ctx.enabled:
        return draw(num, seed)
    start, stop = shard_bounds(num, ctx.rank, ctx.world_size)
    local = draw(stop - start, rank_seed(seed, ctx.rank)) if stop > start else \
        torch.zeros((0, *site_shape), dtype=torch.long)
    return gather_shards(ctx, local.cpu(), num)
