"""Several processes, one run: process groups from torchrun, source-image sharding, LR scaling, sync BN.

``torchrun --nproc_per_node=N -m drsf_kit train ...`` starts N copies of the training command; torchrun
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address, ``init_distributed`` joins the
process group (NCCL on CUDA, gloo on CPU) and pins each process to GPU ``LOCAL_RANK``. Without those
variables (or with ``WORLD_SIZE=1``) nothing is initialised and every helper here is a no-op, so a
single-process run behaves exactly as it would without this module.

Each process draws ``batch_source`` source images per step (and their twins): the global batch is
``batch_source * world_size`` source images. ``TwinDistributedSampler`` cuts the engine's endless,
seeded stream of ``TwinItem`` s into per-process slices: step ``i`` covers stream items
``[start + i*G, start + (i+1)*G)`` and process ``r`` takes ``B`` consecutive ones. A source image and its
twin are one item, so they always land in the same process. Its position is the number of *global source
images consumed*, which means the same thing for any number of processes: a run checkpointed by 8
processes continues on 1 (or 4) with the next image of the same stream.

Also here: ``scale_lr`` / ``effective_lr`` (``train.lr_scaling``, ``train.reference_batch``), collectives for
logging (``all_reduce_mean``), per-process random streams, a replica check, and ``run.json`` (world size,
global batch, scaled lr of every launch). ``drsf_kit.train.sync_bn`` holds ``train.sync_bn``'s BatchNorm.
"""

from __future__ import annotations

import datetime
import gc
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drsf_kit.config import LR_SCALINGS
from drsf_kit.errors import ConfigError
from drsf_kit.train.rundir import RUN_JSON  # the run folder's layout has one owner
from drsf_kit.utils.io import atomic_write_json
from drsf_kit.utils.runtime import resolve_device

TIMEOUT_ENV = "DRSF_DIST_TIMEOUT_MIN"  # minutes a process waits at a collective (rank 0 may be evaluating)


# ------------------------------------------------------------------------------------------- process group
@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, local rank, its device and the backend in use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: no process group (single process)
    owns_group: bool = False  # init_distributed created the group, so cleanup() may destroy it

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs, checkpoints and results (rank 0)."""
        return self.rank == 0


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _multi() -> bool:
    return _initialized() and torch.distributed.get_world_size() > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} must be an integer (torchrun sets it)") from None


def init_distributed(backend: str | None = None, device: str | None = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment (no-op for one process).

    Args:
        backend: ``nccl``, ``gloo`` or None = NCCL when the device is CUDA, gloo otherwise.
        device: the run's device setting (``auto``, ``cpu``, ``cuda``); under torchrun CUDA processes use
            GPU ``LOCAL_RANK`` (limit the GPUs with ``CUDA_VISIBLE_DEVICES``).
    Returns:
        The ``DistContext`` of this process. A group initialised by the caller is reused as is.
    """
    dev = resolve_device(device)
    if _initialized():
        dist = torch.distributed
        local = _env_int("LOCAL_RANK", 0)
        if dev.type == "cuda":
            dev = torch.device("cuda", local)
        return DistContext(dist.get_rank(), dist.get_world_size(), local, dev, dist.get_backend(), False)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext(device=dev)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} has no GPU: this machine shows {torch.cuda.device_count()}; "
                              "start at most that many processes per node (--nproc_per_node)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend == "nccl" and dev.type != "cuda":
        raise ConfigError(f"backend 'nccl' needs CUDA devices, but this run uses {dev}; use gloo on CPU")
    timeout = datetime.timedelta(minutes=_env_int(TIMEOUT_ENV, 60))
    kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
    torch.distributed.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return DistContext(rank, world, local, dev, backend, True)


def is_main_process() -> bool:
    """True in a single-process run and on rank 0 of a distributed one."""
    return not _initialized() or torch.distributed.get_rank() == 0


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if _initialized() else 0


def world_size() -> int:
    """Number of processes in the run (1 without a process group)."""
    return _world_size()


def _world_size() -> int:
    # a private alias: the sampler's ``world_size`` argument hides the public name inside it
    return torch.distributed.get_world_size() if _initialized() else 1


def barrier() -> None:
    """Wait until every process gets here (no-op for one process)."""
    if _multi():
        torch.distributed.barrier()


def cleanup(ctx: DistContext | None = None) -> None:
    """Destroy the process group, when ``ctx`` (or, without one, anybody) created it."""
    if _initialized() and (ctx is None or ctx.owns_group):
        # Collect what a finished DDP run left in reference cycles first: without it a gloo process
        # aborted at exit in about 1 launch in 8 here ("terminate called without an active exception");
        # with it, in none of 74.
        gc.collect()
        torch.distributed.destroy_process_group()


def _collective_device() -> torch.device:
    # NCCL moves only CUDA tensors; gloo only CPU ones
    if _initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------------------------------- collectives
def all_reduce_mean(values: torch.Tensor | dict[str, float]) -> torch.Tensor | dict[str, float]:
    """Mean over processes of a tensor or of a ``{name: float}`` mapping (for logging; no gradient).

    A mapping may hold different keys on different processes (e.g. a statistic only defined when a
    batch had mixed rows): each key is averaged over the processes that report it.
    """
    if not _multi():
        return values.clone() if isinstance(values, torch.Tensor) else dict(values)
    if isinstance(values, torch.Tensor):
        out = values.detach().to(_collective_device(), torch.float64, copy=True)
        torch.distributed.all_reduce(out)
        return (out / torch.distributed.get_world_size()).to(values.device, values.dtype)
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, {k: float(v) for k, v in values.items()})
    keys = list(dict.fromkeys(k for part in gathered for k in part))
    return {k: sum(p[k] for p in gathered if k in p) / sum(k in p for p in gathered) for k in keys}


def any_process(flag: bool) -> bool:
    """True when ``flag`` is true on any process (e.g. a non-finite loss somewhere: all must stop)."""
    if not _multi():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as process ``src`` holds it, on every process (e.g. a checkpoint only rank 0 can read)."""
    if not _multi():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` for one process)."""
    if not _multi():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def replica_max_difference(model: nn.Module) -> float:
    """Largest absolute difference between this process's parameters and rank 0's (0.0 alone).

    Every process must call it; the result is the maximum over all processes, so one number tells
    whether the replicas still hold the same weights.
    """
    if not _multi():
        return 0.0
    params = [p.detach().reshape(-1).float() for p in model.parameters()]
    flat = torch.cat(params).to(_collective_device()) if params else torch.zeros(1, device=_collective_device())
    reference = flat.clone()
    torch.distributed.broadcast(reference, src=0)
    diff = (flat - reference).abs().max().reshape(1) if flat.numel() else torch.zeros(1, device=flat.device)
    torch.distributed.all_reduce(diff, op=torch.distributed.ReduceOp.MAX)
    return float(diff.item())


# ------------------------------------------------------------------------------------------- learning rate
def scale_lr(base_lr: float, global_batch: int, reference_batch: int, rule: str = "linear") -> float:
    """The learning rate for ``global_batch`` source images per step, given ``base_lr`` tuned for ``reference_batch``.

    ``linear`` (Goyal et al. 2017, with warm-up) multiplies by ``global_batch / reference_batch``;
    ``sqrt`` by its square root (often better for Adam-type optimizers); ``none`` keeps ``base_lr``.
    """
    if rule not in LR_SCALINGS:
        raise ConfigError(f"unknown train.lr_scaling {rule!r}; valid: {', '.join(LR_SCALINGS)}")
    if global_batch < 1 or reference_batch < 1:
        raise ConfigError(f"batch sizes must be positive to scale the learning rate "
                          f"(global {global_batch}, reference {reference_batch})")
    ratio = global_batch / reference_batch
    return float(base_lr) * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


# ------------------------------------------------------------------------------------------- sampler
class TwinDistributedSampler:
    """Per-process slices of the engine's twin stream; the state is the number of global sources consumed.

    Args:
        base: a ``drsf_kit.train.samplers.TwinBatchSampler``; only its ``item(k)`` (a pure function of the
            seed and ``k``) is used, so each epoch is one seeded permutation of the source images.
        batch_source: B, source images per process and step.
        rank, world_size: this process and the number of processes (None: from the process group).
        start: global source images already consumed (0 for a new run; from ``state_dict`` on resume).
        steps: steps to yield (None = endless).
    """

    def __init__(self, base: Any, batch_source: int, rank: int | None = None, world_size: int | None = None,
                 start: int = 0, steps: int | None = None):
        self.base = base
        self.batch_source = int(batch_source)
        self.world_size = int(world_size if world_size is not None else _world_size())
        self.rank = int(rank if rank is not None else get_rank())
        if self.batch_source < 1:
            raise ConfigError(f"batch_source must be at least 1, got {batch_source}")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside [0, {self.world_size})")
        if start < 0:
            raise ConfigError(f"sampler start (sources consumed) must be >= 0, got {start}")
        self.start, self.steps = int(start), steps

    @property
    def global_batch(self) -> int:
        """Source images per step over all processes."""
        return self.batch_source * self.world_size

    def step_items(self, i: int) -> list:
        """This process's ``TwinItem`` s for step ``i`` (counted from ``start``)."""
        first = self.start + i * self.global_batch + self.rank * self.batch_source
        return [self.base.item(first + j) for j in range(self.batch_source)]

    def consumed(self, steps_done: int) -> int:
        """Global source images consumed after ``steps_done`` steps of this sampler."""
        return self.start + int(steps_done) * self.global_batch

    def __iter__(self) -> Iterator[list]:
        i = 0
        while self.steps is None or i < self.steps:
            yield self.step_items(i)
            i += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless TwinDistributedSampler has no length")
        return max(0, int(self.steps))

    def state_dict(self, steps_done: int) -> dict:
        """What a resumed run needs, valid for any number of processes (plus the engine's old keys)."""
        consumed = self.consumed(steps_done)
        epoch, position = divmod(consumed, self.base.n)
        return {"seed": self.base.seed, "sources_consumed": consumed, "batch_source": self.batch_source,
                "world_size": self.world_size, "next_batch": consumed // self.global_batch, "epoch": epoch,
                "position": position, "num_sources": self.base.n}

    @staticmethod
    def position(state: dict | None) -> int:
        """Global source images consumed according to a checkpoint's sampler state (0 when empty).

        Checkpoints from before this sampler stored only ``next_batch`` of a single process.
        """
        if not state:
            return 0
        if "sources_consumed" in state:
            return int(state["sources_consumed"])
        return int(state.get("next_batch", 0)) * int(state.get("batch_source", 1))


# ------------------------------------------------------------------------------------------- models
def wrap_model(model: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` inside ``DistributedDataParallel`` when ``ctx`` is distributed, else unchanged."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None,
                                   find_unused_parameters=find_unused_parameters)


# ------------------------------------------------------------------------------------------- random state
def process_rng_state(generator: torch.Generator | None = None) -> dict:
    """This process's torch CPU (and current CUDA device) and ``generator`` states, weights-only safe."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def seed_process(ctx: DistContext, seed: int, step: int, generator: torch.Generator | None = None,
                 saved: list | None = None) -> None:
    """Give process ``rank`` > 0 its own random stream; rank 0 keeps the run's (one process: no change).

    Draws made inside the model (MDSF's mixing coefficients, detection's proposal sampling) would
    otherwise repeat identically on every process. ``saved`` (the per-process states a checkpoint
    holds) continues them exactly when it covers this rank; otherwise the stream is seeded from
    (seed, rank, step), so a resume on more processes is still reproducible.
    """
    if not ctx.distributed or ctx.rank == 0:
        return
    if saved and ctx.rank < len(saved):
        state = saved[ctx.rank]
        torch.set_rng_state(state["torch"])
        if "cuda" in state and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], ctx.device)
        if generator is not None and "generator" in state:
            generator.set_state(state["generator"])
        return
    derived = (int(seed) * 1_000_003 + ctx.rank * 97_409 + int(step) * 7_919 + 1) % (2**63 - 1)
    torch.manual_seed(derived)
    if generator is not None:
        generator.manual_seed(derived)


# ------------------------------------------------------------------------------------------- run.json


def reference_batch(tcfg: Any) -> int:
    """The global batch ``train.lr`` was tuned for: ``train.reference_batch``, 0 meaning ``batch_source``
    (the lr was tuned on one process)."""
    return int(tcfg.reference_batch or tcfg.batch_source)


def effective_lr(tcfg: Any, world: int) -> float:
    """``train.lr`` scaled by ``train.lr_scaling`` from ``reference_batch`` to the global batch
    ``batch_source * world``."""
    return scale_lr(tcfg.lr, tcfg.batch_source * int(world), reference_batch(tcfg), tcfg.lr_scaling)


def launch_record(ctx: DistContext, cfg: Any, lr: float, start_step: int, sources_consumed: int,
                  twins: bool) -> dict:
    """One launch as ``run.json`` records it: processes, batches, learning rate, BatchNorm mode.

    Args:
        lr: the learning rate actually used (after ``effective_lr``).
        start_step, sources_consumed: where this launch starts (0, 0 for a new run).
        twins: whether each source image brings a twin (variants that train on synthetic data).
    """
    t = cfg.train
    global_batch = t.batch_source * ctx.world_size
    return {
        "world_size": ctx.world_size,
        "nodes": _env_int("GROUP_WORLD_SIZE", 1) if ctx.distributed else 1,
        "processes_per_node": _env_int("LOCAL_WORLD_SIZE", 1) if ctx.distributed else 1,
        "backend": ctx.backend,
        "device": str(ctx.device),
        "batch_source_per_process": t.batch_source,
        "global_batch_source": global_batch,
        "global_batch_images": global_batch * (2 if twins else 1),  # sources without a twin train alone
        "lr_scaling": t.lr_scaling,
        "reference_batch": reference_batch(t),
        "base_lr": t.lr,
        "lr": lr,
        "sync_bn": bool(t.sync_bn and ctx.distributed),
        "find_unused_parameters": bool(t.find_unused_parameters and ctx.distributed),
        "start_step": int(start_step),
        "start_sources_consumed": int(sources_consumed),
        "torch": torch.__version__,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _read_run_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged bookkeeping must not block a resume: the history restarts
    return data if isinstance(data, dict) else {}


def write_launch(run_dir: str | Path, record: dict, resume: bool) -> None:
    """Write ``run.json``: the current launch's fields at the top plus every launch in ``launches``."""
    path = Path(run_dir) / RUN_JSON
    history = list(_read_run_json(path).get("launches", [])) if resume else []
    atomic_write_json(path, {**record, "launches": history + [record]})


def finish_launch(run_dir: str | Path, **fields: Any) -> None:
    """Add ``fields`` (final step, replica check, seconds) to the current launch in ``run.json``."""
    path = Path(run_dir) / RUN_JSON
    data = _read_run_json(path)
    launches = list(data.get("launches", [])) or [{}]
    launches[-1] = {**launches[-1], **fields}
    atomic_write_json(path, {**data, **fields, "launches": launches})
