"""A training-memory estimate printed when a run starts: will this recipe fit the card?

Weights, gradients and optimizer state are counted exactly. Activations (what autograd saves for the
backward pass, the bulk at segmentation resolutions) are measured: forwards of a copy of the model on
two small probe images under the run's autocast dtype, with a saved-tensor hook adding up the bytes of
every non-parameter tensor they keep; the per-pixel slope between the two is scaled to the crop and to
the images of one forward (``batch_source / accumulate`` sources plus their twins), plus the fixed part. It ignores the allocator's slack
and cuDNN workspaces, so leave 10-20% headroom. Detection is not probed: the detector resizes every
image to ``model.min_size``, so a small probe says little and a full-size one is slow on a CPU.
"""

from __future__ import annotations

import copy

import torch

from drsf_kit.config import RunConfig
from drsf_kit.train.precision import autocast, describe

GIB = float(1 << 30)
PROBE_CPU = (64, 128)  # probe image (h, w): small on the CPU, where the probe's time counts
PROBE_CUDA = (256, 512)


def _tensor_bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def state_bytes(model: torch.nn.Module, optimizer: str) -> dict[str, int]:
    """Bytes of weights, gradients and optimizer state (SGD momentum: 1 copy, AdamW: 2 copies)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = _tensor_bytes(trainable)
    return {"weights": _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers()), "grads": grads,
            "optimizer": grads * (2 if optimizer == "adamw" else 1)}


def _saved_bytes(model: torch.nn.Module, device: torch.device, amp_dtype: torch.dtype | None,
                 hw: tuple[int, int]) -> int:
    """Bytes of the non-parameter tensors autograd saves in one training forward of one image of ``hw``."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    h, w = hw
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, h, w, generator=g).to(device)
    y = torch.zeros(1, h, w, dtype=torch.long, device=device)
    domains = torch.zeros(1, dtype=torch.long, device=device)
    pairs = torch.zeros(0, 2, dtype=torch.long, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, amp_dtype):
        model(x, y, domains=domains, pairs=pairs, progress=0.0, generator=torch.Generator().manual_seed(0))
    return sum(saved.values())


def activation_bytes(model: torch.nn.Module, device: torch.device, amp_dtype: torch.dtype | None,
                     probe_hw: tuple[int, int]) -> tuple[float, float]:
    """``(bytes per pixel, fixed bytes)`` autograd saves in a training forward (seg models).

    Two probes, ``probe_hw`` and half its size: their difference gives the per-pixel cost without the
    fixed part (under autocast, the half-precision copies of the weights; the pooled ASPP branch).
    Runs on a deep copy with the random state restored afterwards, so the run is untouched.
    """
    probe = copy.deepcopy(model).train()
    small = (max(8, probe_hw[0] // 2), max(8, probe_hw[1] // 2))
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        big_bytes = _saved_bytes(probe, device, amp_dtype, probe_hw)
        small_bytes = _saved_bytes(probe, device, amp_dtype, small)
    del probe
    pixels, small_pixels = probe_hw[0] * probe_hw[1], small[0] * small[1]
    if pixels == small_pixels:  # a crop too small to halve: no slope, all of it counts per pixel
        return big_bytes / float(pixels), 0.0
    per_px = (big_bytes - small_bytes) / float(pixels - small_pixels)
    return per_px, max(0.0, big_bytes - per_px * pixels)


def estimate_memory(model: torch.nn.Module, cfg: RunConfig, device: torch.device, amp_dtype: torch.dtype | None,
                    image_hw: tuple[int, int] | None = None) -> dict:
    """The estimate as a flat dict of GiB figures (``activations_gib`` None when not measured).

    Args:
        image_hw: the training image size when ``train.crop_size`` is not set (seg).
    """
    state = state_bytes(model, cfg.train.optimizer)
    out = {f"{k}_gib": round(v / GIB, 3) for k, v in state.items()}
    per_forward = cfg.train.batch_source // max(1, cfg.train.accumulate)
    images = per_forward * (2 if cfg.spec.use_synth else 1)
    hw = tuple(cfg.train.crop_size) or image_hw
    out.update(dtype=describe(amp_dtype), images_per_forward=images, image_hw=list(hw) if hw else None,
               activations_gib=None)
    if cfg.task == "det":
        out["activations_note"] = "not probed for detection; benchmarks/gpu_step.py measures it on a GPU"
    elif hw:
        probe_hw = PROBE_CUDA if device.type == "cuda" else PROBE_CPU
        probe_hw = (min(probe_hw[0], hw[0]), min(probe_hw[1], hw[1]))
        try:
            per_px, fixed = activation_bytes(model, device, amp_dtype, probe_hw)
        except (RuntimeError, ValueError) as exc:  # an estimate must never stop a run
            out["activations_note"] = f"probe failed: {exc}"
        else:
            out.update(activations_gib=round((per_px * hw[0] * hw[1] * images + fixed) / GIB, 3),
                       bytes_per_pixel=round(per_px, 1), fixed_gib=round(fixed / GIB, 3), probe_hw=list(probe_hw))
    out["total_gib"] = round(sum(state.values()) / GIB + (out["activations_gib"] or 0.0), 3)
    return out


def format_estimate(est: dict) -> str:
    """One line for the console."""
    state = est["weights_gib"] + est["grads_gib"] + est["optimizer_gib"]
    if est["activations_gib"] is None:
        acts = "activations not estimated" + (f" ({est['activations_note']})" if "activations_note" in est else "")
    else:
        h, w = est["image_hw"]
        acts = (f"activations ~{est['activations_gib']:.2f} GiB for {est['images_per_forward']} images of {h}x{w} "
                f"per forward ({est['bytes_per_pixel']:.0f} B/px measured at {est['probe_hw'][0]}x{est['probe_hw'][1]})")
    return (f"memory estimate ({est['dtype']}): weights+grads+optimizer {state:.2f} GiB, {acts}; "
            f"total ~{est['total_gib']:.2f} GiB before allocator slack")
