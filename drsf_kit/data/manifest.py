"""Manifests of generated pseudo-domain images: validation, reading, appending, resume keys, geometry.

A manifest is a JSON-lines file with one row per generated image (see CONTRIBUTING.md). ``path`` is
relative to the manifest's folder; ``size`` ``[W,H]`` is the generated image's size and ``crop``
``[x0,y0,x1,y1]`` the source region it was made from (``null`` = the whole source). Source labels
follow the image through *crop, then resize*: ``map_boxes`` and ``map_mask`` do exactly that.
"""

from __future__ import annotations

import os
import re
from numbers import Real
from pathlib import Path

import numpy as np

from drsf_kit.data.classes import IGNORE_INDEX
from drsf_kit.errors import DataError
from drsf_kit.utils.io import append_jsonl, iter_jsonl

REQUIRED_FIELDS: tuple[str, ...] = ("source_id", "source_domain", "domain", "path", "generator", "prompt", "seed")
MANIFEST_NAME = "manifest.jsonl"
PART_NAME = re.compile(r"^manifest\.part-\d+-of-\d+\.jsonl$")
_STRING_FIELDS = ("source_id", "source_domain", "domain", "path", "generator")


def _fail(path, where: str, problem: str):
    raise DataError(path, f"{where}{problem}")


def validate_row(row: dict, path: str | os.PathLike, where: str = "") -> dict:
    """Check one manifest row; raises ``DataError(path, ...)`` naming the row and the bad field.

    ``where`` (e.g. ``"row 3: "``) is put in front of the problem. Returns the row unchanged.
    """
    if not isinstance(row, dict):
        _fail(path, where, f"row is not a JSON object but {type(row).__name__}")
    who = f"source_id {row.get('source_id')!r}: " if "source_id" in row else ""
    missing = [f for f in REQUIRED_FIELDS if f not in row]
    if missing:
        _fail(path, where, f"{who}missing required field(s) {', '.join(missing)}")
    for name in _STRING_FIELDS:
        if not isinstance(row[name], str) or not row[name]:
            _fail(path, where, f"{who}field {name!r} must be a non-empty string, got {row[name]!r}")
    if row["prompt"] is not None and not isinstance(row["prompt"], str):
        _fail(path, where, f"{who}field 'prompt' must be a string or null, got {row['prompt']!r}")
    if not isinstance(row["seed"], int) or isinstance(row["seed"], bool):
        _fail(path, where, f"{who}field 'seed' must be an integer, got {row['seed']!r}")
    if os.path.isabs(row["path"]):
        _fail(path, where, f"{who}field 'path' must be relative to the manifest's folder, got {row['path']!r}")
    size = row.get("size")
    if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 2
                                 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        _fail(path, where, f"{who}field 'size' must be [W, H] with positive integers or null, got {size!r}")
    crop = row.get("crop")
    if crop is not None:
        if not (isinstance(crop, (list, tuple)) and len(crop) == 4
                and all(isinstance(v, Real) and not isinstance(v, bool) for v in crop)):
            _fail(path, where, f"{who}field 'crop' must be [x0, y0, x1, y1] numbers or null, got {crop!r}")
        if not (crop[2] > crop[0] and crop[3] > crop[1]):
            _fail(path, where, f"{who}field 'crop' {crop!r} is empty (needs x1 > x0 and y1 > y0)")
    index = row.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        _fail(path, where, f"{who}field 'index' must be a non-negative integer, got {index!r}")
    return row


def row_key(row: dict) -> tuple[str, str, int]:
    """The identity of a generated image: ``(domain, source_id, index)``."""
    return row["domain"], row["source_id"], int(row.get("index", 0) or 0)


def row_path(row: dict) -> Path:
    """Absolute location of a row's generated image (rows from ``read_manifests`` carry ``_manifest_dir``)."""
    return Path(row.get("_manifest_dir", ".")) / row["path"]


def manifest_files(path: str | os.PathLike) -> list[Path]:
    """The manifest file ``path``, or every ``manifest.jsonl`` / ``manifest.part-*-of-*.jsonl`` below the
    folder ``path`` (sorted). Raises ``DataError`` when nothing is there."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(path, "manifest file or folder does not exist")
    found = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        found += [Path(folder) / f for f in sorted(files) if f == MANIFEST_NAME or PART_NAME.match(f)]
    if not found:
        raise DataError(path, f"no {MANIFEST_NAME} or manifest.part-<I>-of-<N>.jsonl found in this folder or below")
    return found


def check_inside(row: dict, root: Path, manifest: Path, where: str = "") -> None:
    """Refuse (``DataError``) a row whose image resolves outside ``root`` (the folder the manifests were
    read from): a ``..`` or a symbolic link leaving it could make a real target image a "twin" of a
    source image and leak the target into training."""
    target = (manifest.parent / row["path"]).resolve()
    if not target.is_relative_to(root):
        how = "a symbolic link" if ".." not in Path(row["path"]).parts else "'..'"
        _fail(manifest, where, f"field 'path' {row['path']!r} leads outside {root} (through {how}, to {target}); "
                               f"generated images must lie inside the folder their manifests are read from")


def _read(path, check_duplicates: bool) -> list[dict]:
    rows, seen = [], {}
    path = Path(path)
    root = (path.parent if path.is_file() else path).resolve()
    for file in manifest_files(path):
        for k, row in enumerate(iter_jsonl(file), start=1):
            validate_row(row, file, f"row {k}: ")
            check_inside(row, root, file, f"row {k}: ")
            key = row_key(row)
            if check_duplicates and key in seen:
                other_file, other_k = seen[key]
                raise DataError(file, f"row {k}: duplicate (domain, source_id, index) = {key}, already in "
                                      f"{other_file} row {other_k}; each generated image must appear once "
                                      f"(point at one generator's folder, or remove the repeated row)")
            seen.setdefault(key, (file, k))
            rows.append({**row, "_manifest_dir": str(file.parent), "_manifest": str(file)})
    return rows


def read_manifests(path: str | os.PathLike) -> list[dict]:
    """All rows of a manifest file or of every manifest below a folder, validated.

    Each row gets ``_manifest_dir`` (so ``row_path(row)`` resolves ``path``) and ``_manifest``. A repeated
    ``(domain, source_id, index)`` raises ``DataError`` naming both places. A truncated last line (a
    write cut short) is ignored.
    """
    return _read(path, check_duplicates=True)


def append_manifest_row(path: str | os.PathLike, row: dict) -> None:
    """Validate ``row`` and append it to the manifest ``path`` as one whole line (private ``_`` keys dropped)."""
    validate_row(row, path)
    append_jsonl(path, {k: v for k, v in row.items() if not k.startswith("_")})


def completed_keys(path: str | os.PathLike) -> set[tuple[str, str, int]]:
    """``(domain, source_id, index)`` of every row whose image exists, for resuming a generation run.

    A manifest file or folder that does not exist yet gives an empty set.
    """
    path = Path(path)
    if not path.exists():
        return set()
    try:
        rows = _read(path, check_duplicates=False)
    except DataError as exc:
        if path.is_dir() and exc.path == str(path):
            return set()  # a folder with no manifest yet: nothing is done
        raise
    return {row_key(row) for row in rows if row_path(row).is_file()}


# ---- geometry: crop, then resize ----------------------------------------------------------------

def _crop_and_scale(crop, size, src_size):
    if crop is None:
        if src_size is None:
            raise ValueError("crop is None (whole source image) so src_size (W, H) is needed")
        crop = (0, 0, src_size[0], src_size[1])
    x0, y0, x1, y1 = (float(v) for v in crop)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty crop {list(crop)}")
    out_w, out_h = (x1 - x0, y1 - y0) if size is None else (float(size[0]), float(size[1]))
    return (x0, y0, x1, y1), out_w / (x1 - x0), out_h / (y1 - y0), (out_w, out_h)


def map_boxes(boxes, crop, size, src_size=None):
    """Map xyxy source boxes into a generated image made by cropping ``crop`` and resizing to ``size``.

    Args:
        boxes: ``[N, 4]`` tensor or array, xyxy in source pixels.
        crop: ``[x0, y0, x1, y1]`` in source pixels, or None for the whole source image.
        size: ``[W, H]`` of the generated image, or None for no resize.
        src_size: ``(W, H)`` of the source image (needed when ``crop`` is None).

    Returns:
        ``(mapped, keep)``: the kept boxes (float32, tensor when ``boxes`` is one) and a bool mask over the
        input rows (index labels with it);
        boxes are clipped to the crop and dropped when under 1 px wide or tall after mapping.
    """
    (x0, y0, x1, y1), sx, sy, _ = _crop_and_scale(crop, size, src_size)
    is_torch = type(boxes).__module__.startswith("torch")
    arr = (boxes.detach().cpu().numpy() if is_torch else np.asarray(boxes)).astype(np.float64).reshape(-1, 4)
    out = np.empty_like(arr)
    out[:, 0] = (np.clip(arr[:, 0], x0, x1) - x0) * sx
    out[:, 2] = (np.clip(arr[:, 2], x0, x1) - x0) * sx
    out[:, 1] = (np.clip(arr[:, 1], y0, y1) - y0) * sy
    out[:, 3] = (np.clip(arr[:, 3], y0, y1) - y0) * sy
    keep = ((out[:, 2] - out[:, 0]) >= 1.0) & ((out[:, 3] - out[:, 1]) >= 1.0)
    out = out[keep].astype(np.float32)
    if is_torch:
        import torch

        return torch.from_numpy(out), torch.from_numpy(keep)
    return out, keep


def map_mask(mask, crop, size):
    """Crop a ``[H, W]`` label mask to ``crop`` and resize it to ``size`` ``[W, H]`` with nearest sampling.

    Output pixel centres are sampled from the source (the convention of PIL's resize); pixels whose
    source lies outside the mask become 255 (ignore). ``crop`` None = whole mask, ``size`` None = no
    resize. Returns the same type as ``mask`` (tensor or array).
    """
    is_torch = type(mask).__module__.startswith("torch")
    arr = mask.detach().cpu().numpy() if is_torch else np.asarray(mask)
    height, width = arr.shape[:2]
    (x0, y0, x1, y1), _, _, (out_w, out_h) = _crop_and_scale(crop, size, (width, height))
    out_w, out_h = int(round(out_w)), int(round(out_h))
    xs = np.floor(x0 + (np.arange(out_w) + 0.5) * (x1 - x0) / out_w).astype(np.int64)
    ys = np.floor(y0 + (np.arange(out_h) + 0.5) * (y1 - y0) / out_h).astype(np.int64)
    valid = (ys[:, None] >= 0) & (ys[:, None] < height) & (xs[None, :] >= 0) & (xs[None, :] < width)
    out = arr[np.clip(ys, 0, height - 1)[:, None], np.clip(xs, 0, width - 1)[None, :]]
    out = np.where(valid, out, np.asarray(IGNORE_INDEX, dtype=arr.dtype))
    if is_torch:
        import torch

        return torch.from_numpy(np.ascontiguousarray(out)).to(mask.dtype)
    return out
