"""Device selection, seeding and thread settings shared by every entry point."""

from __future__ import annotations

import os
import random

from drsf_kit.errors import ConfigError


def resolve_device(device: str | None = "auto") -> "torch.device":  # noqa: F821
    """``"auto"``/None picks cuda when available, else cpu; anything else is passed to torch.device."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was requested but CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def default_num_threads() -> int:
    """Threads for CPU work: DRSF_NUM_THREADS, else the usable cores shared by torchrun's processes on this node."""
    env = os.environ.get("DRSF_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = max(1, os.cpu_count() or 1)
    # N processes per node each taking every core would oversubscribe the CPU N times
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def imap_side_by_side(fn, items, jobs: int, threads: int):
    """Yield ``fn(item)`` for every item as each finishes, ``jobs`` at a time in fresh processes (spawned,
    one item each) with ``threads`` torch threads each. ``fn`` must be importable (a module-level
    function). An error, an interrupt or a caller that stops early ends every process."""
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_set_threads, initargs=(threads,),
                                                     maxtasksperchild=1)
    try:
        yield from pool.imap_unordered(fn, items)
        pool.close()
    finally:
        pool.terminate()  # after close(): the idle workers; otherwise the busy ones too
        pool.join()
