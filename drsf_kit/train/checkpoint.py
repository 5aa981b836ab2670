"""Checkpoints that let a run continue exactly where it stopped.

A checkpoint holds the model, optimizer, scheduler and GradScaler states, the step, every random
state the loop draws from (Python, NumPy, torch CPU/CUDA and the model's mixing generator), the
sampler's state and the run config. It is written atomically (temporary file + rename), so the last
good checkpoint survives a crash during the write. Everything is stored as tensors or plain Python
values, so ``torch.load(weights_only=True)`` reads it back.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drsf_kit.errors import DataError
from drsf_kit.utils.io import atomic_torch_save

CHECKPOINT_VERSION = 1


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model behind a DistributedDataParallel / DataParallel wrapper."""
    return getattr(model, "module", model)


def capture_rng_state(generator: torch.Generator | None = None) -> dict:
    """Python, NumPy, torch (CPU and every CUDA device) and ``generator`` states, weights-only safe."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Put back the states captured by ``capture_rng_state``."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        # a resume on fewer GPUs keeps the states of the devices that still exist
        cuda_states = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    scaler: Any | None,
    step: int,
    config: dict,
    sampler_state: dict | None = None,
    generator: torch.Generator | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a full training checkpoint to ``path`` atomically.

    Args:
        path: destination file (``drsf_kit.train.rundir`` names it).
        model, optimizer, scheduler, scaler: objects whose ``state_dict`` is stored (None skips one).
        step: number of optimizer steps completed.
        config: the run config as a plain mapping.
        sampler_state: the batch sampler's state (independent of the number of processes).
        generator: the model's random generator (MDSF mixing), stored with the other RNG states.
        extra: anything else small and JSON-like to keep (e.g. the last logged losses).

    Returns:
        The path written.
    """
    payload = {
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": capture_rng_state(generator),
        "sampler": dict(sampler_state or {}),
        "config": config,
        "extra": dict(extra or {}),
    }
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by ``save_checkpoint``; ``DataError`` when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and why
        raise DataError(path, f"cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise DataError(path, "not a drsf_kit checkpoint (no model state / step)")
    return ckpt


def restore_training_state(
    ckpt: dict,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    generator: torch.Generator | None = None,
    restore_rng: bool = True,
) -> int:
    """Load the states of ``ckpt`` into the given objects; returns the step to continue from."""
    unwrap_model(model).load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler") is not None and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    if restore_rng and ckpt.get("rng"):
        restore_rng_state(ckpt["rng"], generator)
    return int(ckpt["step"])
