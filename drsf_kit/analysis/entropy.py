"""Entropy views: DFDR channel entropy and gates per domain, and prediction-entropy maps.

Channel entropy follows the kit's DFDR reading: p = softmax over the H*W positions of F(n,c)/tau,
H = -sum p log p / log(HW), in [0, 1] (low = spatially concentrated, object-like; high = diffuse,
style-like). Prediction entropy is the per-pixel class entropy divided by log C, also in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from drsf_kit.analysis.features import (
    DEFAULT_SIZE,
    default_stage,
    iter_stage_outputs,
    model_device,
    prepare_batch,
    resolve_module,
)
from drsf_kit.errors import ConfigError
from drsf_kit.models.dfdr import channel_entropy  # the DFDR block owns the definition


def channel_stats_by_domain(model: torch.nn.Module, images_by_domain: Mapping[str, list], stage: str | None = None,
                            tau: float = 1.0, batch_size: int = 16, device: str | None = None,
                            size: tuple[int, int] | None = DEFAULT_SIZE, progress: bool = True,
                            fallback_stage: str | None = None, standardize: bool = False) -> dict[str, dict]:
    """Per-domain channel entropy (and DFDR gate values when the model has a DFDR block).

    Args:
        model: a kit model with ``dfdr_outputs(images)`` (used when ``stage`` is None and it returns
            a result), or any ``nn.Module`` whose ``stage`` output is a feature map.
        images_by_domain: ``{domain: images}`` (paths, arrays or tensors, as ``extract_features``).
        stage: module name whose output's channel entropy is measured; None uses DFDR when present, else
            ``layer2`` (where DFDR would sit), else ``fallback_stage``, else the model's default stage.
        standardize: for a ``stage``, divide each channel map by its spatial standard deviation before the
            entropy, so the value no longer depends on the activation scale (an untrained network's
            maps are tiny and would all read as flat); the DFDR path always uses the model's own entropy.

    Returns:
        ``{domain: {"entropy": [N, C], "gate": [N, C] or None}}`` as NumPy arrays.
    """
    use_dfdr = stage is None and callable(getattr(model, "dfdr_outputs", None))
    out: dict[str, dict] = {}
    for domain, images in images_by_domain.items():
        if len(images) == 0:
            raise ConfigError(f"channel_stats_by_domain: no images for domain {domain!r}")
        ent, gates = [], []
        if use_dfdr:
            was_training = model.training
            model.eval()
            try:
                for start in range(0, len(images), batch_size):
                    batch = prepare_batch(images[start:start + batch_size], size, device or model_device(model))
                    with torch.inference_mode():
                        res = model.dfdr_outputs(batch)
                    if res is None:  # a variant without DFDR: measure its features instead
                        use_dfdr, ent, gates = False, [], []
                        break
                    ent.append(res.entropy.float().cpu().numpy())
                    # DFDR v2 splits hard (0/1); its soft gate is what shows how decided a channel is
                    gate = res.gate_soft if getattr(res, "gate_soft", None) is not None else res.gate
                    gates.append(gate.float().cpu().numpy())
            finally:
                model.train(was_training)
        if not use_dfdr:
            st = stage or _dfdr_free_stage(model, fallback_stage)
            for outputs in iter_stage_outputs(model, images, st, batch_size, device, size,
                                              progress=progress, desc=f"entropy {domain}"):
                if outputs[0].ndim != 4:
                    raise ConfigError(f"stage {st!r} gives shape {tuple(outputs[0].shape)}, not a feature map")
                f = outputs[0]
                if standardize:
                    f = f / f.flatten(2).std(dim=2).clamp_min(1e-12)[..., None, None]
                ent.append(channel_entropy(f, tau).cpu().numpy())
        out[domain] = {"entropy": np.concatenate(ent), "gate": np.concatenate(gates) if gates else None}
    return out


def _dfdr_free_stage(model: torch.nn.Module, fallback: str | None = None) -> str:
    # The DFDR default location is after ResNet layer2 (C3): measure the same features without it.
    if callable(getattr(model, "stage_names", None)) and "layer2" in model.stage_names():
        return "layer2"
    try:
        resolve_module(model, "layer2")
        return "layer2"
    except ConfigError:
        return fallback or default_stage(model)


def suppressed_channels(gates, k: int = 10) -> np.ndarray:
    """Indices of the ``k`` channels with the lowest mean gate (the most domain-private), lowest first."""
    g = np.asarray(gates, dtype=float)
    g = g.reshape(-1, g.shape[-1]).mean(0) if g.ndim > 1 else g
    if not 0 < k <= len(g):
        raise ConfigError(f"suppressed_channels: k must be in 1..{len(g)}, got {k}")
    return np.argsort(g, kind="stable")[:k]


def prediction_entropy_map(logits):
    """Per-pixel class entropy of segmentation logits ``[N, C, H, W]`` -> ``[N, H, W]`` in [0, 1].

    Divided by log C, so uniform logits give 1 and a confident prediction gives ~0. A ``[C, H, W]``
    input gives ``[1, H, W]``; NumPy in, NumPy out.
    """
    as_numpy = isinstance(logits, np.ndarray)
    t = torch.as_tensor(logits).float()
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] < 2:
        raise ConfigError(f"prediction_entropy_map expects [N, C>=2, H, W] logits, got {tuple(t.shape)}")
    logp = torch.log_softmax(t, dim=1)
    ent = (-(logp.exp() * logp).sum(1) / math.log(t.shape[1])).clamp(0.0, 1.0)
    return ent.numpy() if as_numpy else ent


def box_entropy(class_probs) -> np.ndarray:
    """Normalised entropy of each box's class distribution ``[N, K]`` -> ``[N]`` in [0, 1].

    Rows with negative values are taken as logits (softmax); other rows are normalised to sum 1
    (per-class scores such as sigmoid outputs).
    """
    p = np.asarray(class_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ConfigError("box entropy needs per-class scores [N, K>=2] per box (all classes, background "
                          f"included), got shape {p.shape}; a single top score has no class entropy")
    if (p < 0).any():
        p = np.exp(p - p.max(1, keepdims=True))
    p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
    ent = -(p * np.log(np.clip(p, 1e-12, None))).sum(1) / math.log(p.shape[1])
    return np.clip(ent, 0.0, 1.0)


def detection_entropy_map(boxes, class_probs, size: tuple[int, int], reduce: str = "max") -> np.ndarray:
    """Paint each box's class-score entropy into an ``[H, W]`` map in [0, 1] (0 where there is no box).

    Args:
        boxes: ``[N, 4]`` xyxy in pixels.
        class_probs: ``[N, K]`` class probabilities (or scores / logits) per box.
        size: (H, W) of the map.
        reduce: where boxes overlap, ``max`` keeps the most uncertain one, ``mean`` averages them.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n_probs = len(np.asarray(class_probs))
    if len(b) != n_probs:
        raise ConfigError(f"detection_entropy_map: {len(b)} boxes but {n_probs} rows of class scores")
    if reduce not in ("max", "mean"):
        raise ConfigError(f"detection_entropy_map: reduce must be 'max' or 'mean', got {reduce!r}")
    h, w = int(size[0]), int(size[1])
    total = np.zeros((h, w), np.float64)
    count = np.zeros((h, w), np.int32)
    if len(b) == 0:
        return total.astype(np.float32)
    ent = box_entropy(class_probs)
    for (x0, y0, x1, y1), e in zip(b, ent):
        c0, r0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        c1, r1 = min(w, math.ceil(x1)), min(h, math.ceil(y1))
        if c1 <= c0 or r1 <= r0:
            continue  # box outside the image or empty
        region = (slice(r0, r1), slice(c0, c1))
        total[region] = np.maximum(total[region], e) if reduce == "max" else total[region] + e
        count[region] += 1
    if reduce == "mean":
        total = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return total.astype(np.float32)
