"""Feature extraction for gap analysis: any ``nn.Module``, any named stage, cached on disk.

A *stage* is the name of a sub-module (``dict(model.named_modules())``); its output is captured
with a forward hook and the forward pass is cut short right after it, so early stages are cheap.
Kit models that expose ``stage_names()`` and ``extract_features(images, stages)`` are asked
through that method for their own stage names. Features are cached as ``.npz`` files keyed by
(model or run id, stage, pooling, image list), so notebooks re-open instantly.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from drsf_kit.data.classes import DWD_DOMAINS, SOURCE_DOMAIN
from drsf_kit.data.dwd import split_ids
from drsf_kit.data.manifest import manifest_files, read_manifests, row_path
from drsf_kit.data.voc import find_voc_root, list_images, voc_candidates
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.models import build_model
from drsf_kit.utils.io import atomic_write_bytes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Inputs are resized to this (H, W) so batches stack: the native size of the mini benchmark.
DEFAULT_SIZE = (180, 320)
_CACHE_VERSION = 1


@dataclass
class Features:
    """Features of one image list at one stage.

    ``pooled`` is ``[N, C]`` (global average over positions) or None; ``spatial`` is
    ``[N, C, h, w]`` or None; ``from_cache`` says whether the cache answered.
    """

    stage: str
    pooled: np.ndarray | None
    spatial: np.ndarray | None = None
    cache_path: Path | None = None
    from_cache: bool = False
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DomainImage:
    """One image for gap analysis: its path, domain name and kind (``real`` or ``synthetic``)."""

    path: str
    domain: str
    kind: str
    source_id: str | None = None

    @property
    def group(self) -> str:
        """The key the analysis uses: the domain for real images, ``synth:<domain>`` for generated ones."""
        return group_name(self.domain, self.kind)


def group_name(domain: str, kind: str) -> str:
    """Analysis key of a (domain, kind) pair: real images keep the domain name, synthetic get ``synth:``."""
    return domain if kind == "real" else f"synth:{domain}"


# ----------------------------------------------------------------------------------------------
# stages


def available_stages(model: nn.Module) -> list[str]:
    """Names usable as ``stage``: the model's own ``stage_names()`` first, then every sub-module."""
    names: list[str] = []
    if callable(getattr(model, "stage_names", None)):
        names.extend(str(s) for s in model.stage_names())
    names.extend(name for name, _ in model.named_modules() if name and name not in names)
    return names


def _stage_error(model: nn.Module, stage: str) -> ConfigError:
    stages = available_stages(model)
    # Deep models have hundreds of modules: list the model's stages, or the modules two levels deep.
    shown = list(model.stage_names()) if callable(getattr(model, "stage_names", None)) else [
        s for s in stages if s.count(".") <= 1
    ]
    more = f" ({len(stages)} modules in all: see available_stages(model))" if len(stages) > len(shown) else ""
    return ConfigError(
        f"model {type(model).__name__} has no stage {stage!r}; available stages: {', '.join(shown)}{more}"
    )


def resolve_module(model: nn.Module, stage: str) -> nn.Module:
    """The sub-module called ``stage``, or the one whose dotted name ends in ``.<stage>`` when exactly one
    does (``layer2`` finds ``body.stages.layer2``); otherwise ConfigError listing the available stages."""
    modules = dict(model.named_modules())
    if stage and stage in modules:
        return modules[stage]
    matches = [name for name in modules if stage and name.endswith("." + stage)]
    if len(matches) == 1:
        return modules[matches[0]]
    raise _stage_error(model, stage)


def default_stage(model: nn.Module) -> str:
    """A sensible stage for gap analysis: the deepest backbone stage (``layer4`` of the mini detector or a
    ResNet, ``layer3`` of the mini segmenter), else the model's last declared stage."""
    body = getattr(model, "body", None)
    if body is not None and callable(getattr(body, "stage_names", None)) and body.stage_names():
        return body.stage_names()[-1]
    if callable(getattr(model, "stage_names", None)) and list(model.stage_names()):
        return list(model.stage_names())[-1]
    modules = dict(model.named_modules())
    for name in ("layer4", "body.layer4", "backbone.body.layer4", "features"):
        if name in modules:
            return name
    raise _stage_error(model, "<default>")


def default_backbone(task: str = "det", seed: int = 0) -> nn.Module:
    """An untrained mini model of the kit (``source_only``) for gap analysis before any training.

    Weights are random (nothing downloads) but seeded, so the same call gives the same features; its
    ``extract_features`` applies the model's own input normalisation.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(task, "mini", "source_only", num_domains=1).eval()


def model_fingerprint(model: nn.Module) -> str:
    """A SHA-256 over the model's class name and weights: the cache key of a model without a run id."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# images


def load_image(item, size: tuple[int, int] | None = DEFAULT_SIZE) -> torch.Tensor:
    """One image as float32 ``[3, H, W]`` in [0, 1]: a path, PIL image, ``HxWx3`` uint8 array or tensor."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        try:
            with Image.open(item) as im:
                item = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DataError(item, f"cannot read image ({exc})") from None
    if isinstance(item, Image.Image):
        item = np.array(item.convert("RGB"))  # a writable copy: torch warns on read-only arrays
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3:
            raise DataError("<array>", f"expected an HxWx3 image array, got shape {item.shape}")
        scale = 255.0 if item.dtype == np.uint8 else 1.0
        item = torch.from_numpy(np.ascontiguousarray(item)).permute(2, 0, 1).float() / scale
    if not isinstance(item, torch.Tensor) or item.ndim != 3 or item.shape[0] != 3:
        shape = tuple(item.shape) if hasattr(item, "shape") else type(item).__name__
        raise DataError("<image>", f"expected a [3,H,W] image tensor, path, PIL image or HxWx3 array, got {shape}")
    item = item.float()
    if size is not None and tuple(item.shape[-2:]) != tuple(size):
        item = torch.nn.functional.interpolate(item[None], size=tuple(size), mode="bilinear",
                                               align_corners=False, antialias=True)[0].clamp(0, 1)
    return item


def _images_hash(images, size) -> str:
    """Paths hash by name, size and modification time; in-memory images by their bytes."""
    h = hashlib.sha256(repr(size).encode())
    if isinstance(images, torch.Tensor):
        h.update(images.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
    for item in images:
        if isinstance(item, (str, os.PathLike)):
            st = os.stat(item) if os.path.exists(item) else None
            h.update(f"{os.path.abspath(item)}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
        elif isinstance(item, torch.Tensor):
            h.update(item.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(np.asarray(item).tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# the stage runner shared by features and entropy


class _StopForward(Exception):
    """Raised by the hook once the stage output is captured: the rest of the forward is not needed."""


def _first_tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for t in output if isinstance(t, torch.Tensor)]
    return []


def prepare_batch(chunk, size: tuple[int, int] | None, device) -> torch.Tensor:
    """A float ``[B, 3, H, W]`` batch in [0, 1] on ``device`` from a slice of images (see ``load_image``) or
    of an ``[N, 3, H, W]`` tensor (uint8 is scaled by 1/255), resized to ``size`` when given."""
    batch = chunk if isinstance(chunk, torch.Tensor) else torch.stack([load_image(x, size) for x in chunk])
    # uint8 batches (4x less memory for large in-memory sets) are scaled to [0, 1] here.
    scale = 255.0 if batch.dtype == torch.uint8 else 1.0
    batch = batch.to(device, dtype=torch.float32) / scale
    if size is not None and tuple(batch.shape[-2:]) != tuple(size):
        batch = torch.nn.functional.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False,
                                                antialias=True).clamp(0, 1)
    return batch


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def iter_stage_outputs(model: nn.Module, images, stage: str, batch_size: int = 32, device: str | None = None,
                       size: tuple[int, int] | None = DEFAULT_SIZE, normalize: bool = False,
                       progress: bool = True, desc: str | None = None) -> Iterator[list[torch.Tensor]]:
    """Yield, per batch, the list of tensors the ``stage`` module outputs (on the CPU, detached).

    Args:
        model: any ``nn.Module``; kit models with ``extract_features`` are asked for their own stages.
        images: a list of paths / PIL images / arrays / ``[3,H,W]`` tensors, or an ``[N,3,H,W]`` tensor
            (float in [0, 1], or uint8 in [0, 255]).
        stage: a name from ``available_stages(model)``.
        device: where batches go; None = the model's device (the model is not moved).
        normalize: apply ImageNet mean/std before the model (for backbones that expect it).
    """
    from tqdm.auto import tqdm

    own_stage = callable(getattr(model, "stage_names", None)) and stage in list(model.stage_names()) \
        and callable(getattr(model, "extract_features", None))
    module = None if own_stage else resolve_module(model, stage)
    dev = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    n = len(images)
    captured: list = []

    def hook(_mod, _inp, out):
        captured.append(out)
        raise _StopForward

    handle = module.register_forward_hook(hook) if module is not None else None
    try:
        bar = tqdm(range(0, n, batch_size), desc=desc or f"features {stage}", unit="batch",
                   disable=not progress, leave=False)
        for start in bar:
            batch = prepare_batch(images[start:start + batch_size], size, dev)
            if normalize:
                batch = (batch - mean) / std
            with torch.inference_mode():
                if own_stage:
                    outputs = [model.extract_features(batch, [stage])[stage]]
                else:
                    captured.clear()
                    try:
                        model(batch)
                    except _StopForward:
                        pass
                    if not captured:
                        raise ConfigError(f"stage {stage!r} of {type(model).__name__} did not run in the forward "
                                          "pass; pick another stage from available_stages(model)")
                    outputs = _first_tensors(captured[0])
            if not outputs:
                raise ConfigError(f"stage {stage!r} returned {type(captured[0]).__name__}, not tensors")
            yield [o.detach().float().cpu() for o in outputs]
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)


def _pool(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Average each output over its positions and concatenate (FPN-style dict outputs give one vector)."""
    pooled = []
    for o in outputs:
        if o.ndim == 4:
            pooled.append(o.mean(dim=(2, 3)))
        elif o.ndim == 3:  # token sequences [N, L, C]
            pooled.append(o.mean(dim=1))
        elif o.ndim == 2:
            pooled.append(o)
        else:
            raise ConfigError(f"cannot pool a stage output of shape {tuple(o.shape)}")
    return torch.cat(pooled, dim=1)


def extract_features(model: nn.Module, images_or_paths, stage: str, pooled: bool = True, spatial: bool = False,
                     batch_size: int = 32, device: str | None = None, cache_dir: str | os.PathLike | None = None,
                     cache_key: str | None = None, size: tuple[int, int] | None = DEFAULT_SIZE,
                     normalize: bool = False, progress: bool = True) -> Features:
    """Features of every image at ``stage``, batched, optionally cached on disk.

    Args:
        model: any ``nn.Module`` (see ``iter_stage_outputs``).
        images_or_paths: image paths, PIL images, arrays, ``[3,H,W]`` tensors or one ``[N,3,H,W]`` tensor.
        stage: a module name (``available_stages(model)``); a missing one raises ConfigError listing them.
        pooled: return ``[N, C]`` position-averaged features.
        spatial: also return the ``[N, C, h, w]`` maps (memory grows with the stage resolution).
        cache_dir: folder of ``.npz`` caches; None disables caching.
        cache_key: the run or model id in the cache key; None hashes the model's weights.
        size: (H, W) every image is resized to; None keeps sizes (they must then agree).

    Returns:
        ``Features`` with ``pooled``, ``spatial``, ``cache_path`` and ``from_cache``.
    """
    if not pooled and not spatial:
        raise ConfigError("extract_features: ask for pooled and/or spatial features")
    if len(images_or_paths) == 0:
        raise ConfigError("extract_features: the image list is empty")
    if not (callable(getattr(model, "stage_names", None)) and stage in list(model.stage_names())):
        resolve_module(model, stage)  # fail fast, before any image is read
    cache_path = None
    meta = {"stage": stage, "pooled": pooled, "spatial": spatial, "size": list(size) if size else None,
            "normalize": normalize, "n": len(images_or_paths), "version": _CACHE_VERSION}
    if cache_dir is not None:
        meta["model"] = cache_key or model_fingerprint(model)
        meta["images"] = _images_hash(images_or_paths, size)
        digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]
        safe_stage = "".join(c if c.isalnum() else "_" for c in stage)
        cache_path = Path(cache_dir) / f"feat_{safe_stage}_{digest}.npz"
        if cache_path.exists():
            try:
                with np.load(cache_path, allow_pickle=False) as z:
                    return Features(stage, z["pooled"] if pooled else None, z["spatial"] if spatial else None,
                                    cache_path, True, json.loads(str(z["meta"])))
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file is simply recomputed and replaced
    pooled_parts, spatial_parts = [], []
    for outputs in iter_stage_outputs(model, images_or_paths, stage, batch_size, device, size, normalize, progress):
        if pooled:
            pooled_parts.append(_pool(outputs).numpy())
        if spatial:
            if outputs[0].ndim != 4:
                raise ConfigError(f"stage {stage!r} output has shape {tuple(outputs[0].shape)}: no spatial map")
            spatial_parts.append(outputs[0].numpy())
    feats = Features(stage, np.concatenate(pooled_parts) if pooled else None,
                     np.concatenate(spatial_parts) if spatial else None, cache_path, False, meta)
    if cache_path is not None:
        buf = io.BytesIO()
        arrays = {"meta": np.array(json.dumps(meta))}
        if pooled:
            arrays["pooled"] = feats.pooled
        if spatial:
            arrays["spatial"] = feats.spatial
        np.savez(buf, **arrays)
        atomic_write_bytes(cache_path, buf.getvalue())
    return feats


def features_by_group(feats: np.ndarray, records: Sequence[DomainImage]) -> dict[str, np.ndarray]:
    """Split ``[N, C]`` features into ``{group: [n_g, C]}`` following the records' groups (order kept)."""
    if len(feats) != len(records):
        raise ConfigError(f"{len(feats)} feature rows for {len(records)} images")
    out: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        out.setdefault(rec.group, []).append(i)
    return {g: feats[idx] for g, idx in out.items()}


# ----------------------------------------------------------------------------------------------
# collecting images from a DWD-layout root and a folder of generated pseudo-domains


def _subsample(items: list, limit: int | None, seed: int, prefer: set | None = None) -> list:
    """At most ``limit`` items drawn with ``seed`` (order kept); items whose ``source_id`` is in ``prefer``
    come first, so the sampled pseudo-domains hold twins of the sampled source images."""
    if limit is None or len(items) <= limit:
        return items
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    if prefer:
        order.sort(key=lambda i: items[i].source_id not in prefer)  # stable: random within each group
    return [items[i] for i in sorted(order[:limit])]


def _real_images(root: Path, domain: str, split: str) -> list[DomainImage]:
    voc_root = find_voc_root(root, domain)
    files = list_images(voc_root / "JPEGImages")
    out = []
    for i in split_ids(voc_root, split):
        if i not in files:
            raise DataError(voc_root / "JPEGImages" / f"{i}.jpg", f"listed in the {split} split but missing")
        out.append(DomainImage(str(voc_root / "JPEGImages" / files[i]), domain, "real", i))
    return out


def _synthetic_images(synth_root: Path) -> list[DomainImage]:
    try:
        manifest_files(synth_root)
    except DataError:
        # No manifests: a plain folder of images per pseudo-domain (a researcher's own generator).
        out = [DomainImage(str(img), sub.name, "synthetic", img.stem)
               for sub in sorted(p for p in synth_root.iterdir() if p.is_dir())
               for img in sorted(sub.iterdir()) if img.suffix.lower() in IMAGE_SUFFIXES]
        if not out:
            raise DataError(synth_root, "no manifest.jsonl and no <domain>/ image folders found") from None
        return out
    return [DomainImage(str(row_path(row)), str(row["domain"]), "synthetic", str(row["source_id"]))
            for row in read_manifests(synth_root)]


def collect_domain_images(data_root: str | os.PathLike | None, synth_root: str | os.PathLike | None = None,
                          domains: Sequence[str] = DWD_DOMAINS, split: str | None = None, limit: int | None = None,
                          seed: int = 0, source: str = SOURCE_DOMAIN) -> list[DomainImage]:
    """Collect real and synthetic images: ``[DomainImage(path, domain, kind, source_id)]``.

    Args:
        data_root: DWD-layout root (``ROOT/<domain>/VOC2007/...``); None skips real images.
        synth_root: folder with ``manifest.jsonl`` files (any depth) or ``<domain>/`` image folders.
        domains: real domains to read; domains without a folder are skipped unless none is found.
        split: image set of every real domain (``train``, ``test``, ``all``); None reads the source's
            ``train`` images (the ones pseudo-domains are generated from) and ``all`` images of each target.
        limit: at most this many images per (domain, kind), drawn with ``seed``; generated images whose
            source image was drawn come first, so the sample keeps twins together.
    """
    records: list[DomainImage] = []
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise DataError(root, "data root not found")
        present = [d for d in domains if any(c.is_dir() for c in voc_candidates(root, d))]
        if not present:
            raise DataError(root, f"none of the domains {', '.join(domains)} found (expected ROOT/<domain>/VOC2007)")
        for d in present:
            d_split = split or ("train" if d == source else "all")
            records.extend(_subsample(_real_images(root, d, d_split), limit, seed))
    if synth_root is not None:
        sroot = Path(synth_root)
        if not sroot.is_dir():
            raise DataError(sroot, "synthetic folder not found")
        by_domain: dict[str, list[DomainImage]] = {}
        for rec in _synthetic_images(sroot):
            by_domain.setdefault(rec.domain, []).append(rec)
        chosen_sources = {r.source_id for r in records if r.domain == source}
        for d in sorted(by_domain):
            records.extend(_subsample(by_domain[d], limit, seed, prefer=chosen_sources))
    missing = [r.path for r in records if not os.path.exists(r.path)]
    if missing:
        raise DataError(missing[0], f"image listed but missing ({len(missing)} missing in all)")
    return records


def source_first(records: Sequence[DomainImage], source: str = SOURCE_DOMAIN) -> list[str]:
    """The groups of ``records`` in display order: the real source, real targets, then synthetic ones."""
    groups = list(dict.fromkeys(r.group for r in records))
    return sorted(groups, key=lambda g: (g != source, g.startswith("synth:"), g))

