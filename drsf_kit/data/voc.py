"""Pascal VOC building blocks: XML annotations, id lists, folder discovery and the ``Problem`` record.

VOC boxes are 1-based inclusive pixel indices. The kit uses torchvision's 0-based ``xyxy`` pixel
floats, so a VOC box ``(xmin, ymin, xmax, ymax)`` becomes ``(xmin - 1, ymin - 1, xmax, ymax)``: the
width ``xmax - xmin + 1`` of the inclusive box is kept exactly.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from drsf_kit.data.classes import DWD_CLASSES
from drsf_kit.errors import DataError

# Problem kinds, shared by every loader and by `drsf data check`.
UNREADABLE_IMAGE = "unreadable_image"
MISSING_IMAGE = "missing_image"
BAD_XML = "bad_xml"
BOX_CLIPPED = "box_clipped"
ZERO_AREA_BOX = "zero_area_box"
UNKNOWN_CLASS = "unknown_class"
EMPTY_ANNOTATION = "empty_annotation"
MISSING_ANNOTATION = "missing_annotation"
MISSING_MASK = "missing_mask"
BAD_MASK = "bad_mask"
SIZE_MISMATCH = "size_mismatch"
LAYOUT = "layout"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset file: ``severity`` is ``error`` (item unusable), ``warning``
    (item repaired, e.g. a clipped box) or ``info`` (worth knowing, e.g. an image without objects)."""

    path: str
    kind: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class VocObject:
    """One ``<object>`` of a VOC annotation, box already converted to 0-based xyxy pixels."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False


@dataclass
class VocAnnotation:
    """A parsed VOC XML file. ``size`` is ``(width, height)`` or None when the XML does not give one."""

    path: str
    filename: str | None
    size: tuple[int, int] | None
    objects: list[VocObject] = field(default_factory=list)


def _text(node: ET.Element, tag: str) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def parse_voc_xml(path: str | os.PathLike) -> VocAnnotation:
    """Parse one VOC XML file; raises ``DataError(path, ...)`` for a file that is unreadable, not XML,
    or has an object without a usable name or box. Class names are lower-cased and stripped."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(path, f"annotation is not valid XML ({exc})") from None
    except OSError as exc:
        raise DataError(path, f"annotation cannot be read ({exc.strerror or exc})") from None
    if root.tag != "annotation":
        raise DataError(path, f"root element is <{root.tag}>, expected <annotation>")

    size = None
    size_node = root.find("size")
    if size_node is not None:
        try:
            w, h = int(float(_text(size_node, "width") or 0)), int(float(_text(size_node, "height") or 0))
        except ValueError:
            raise DataError(path, "<size> has a non-numeric width or height") from None
        # Some real copies write 0x0 sizes; treat them as absent so the image header is used instead.
        size = (w, h) if w > 0 and h > 0 else None

    objects = []
    for k, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj, "name")
        if not name:
            raise DataError(path, f"object {k} has no <name>")
        box_node = obj.find("bndbox")
        if box_node is None:
            raise DataError(path, f"object {k} ({name}) has no <bndbox>")
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            value = _text(box_node, tag)
            try:
                coords.append(float(value))
                if not math.isfinite(coords[-1]):
                    raise ValueError(value)
            except (TypeError, ValueError):
                raise DataError(path, f"object {k} ({name}) has a missing or non-numeric <{tag}>: {value!r}") from None
        xmin, ymin, xmax, ymax = coords
        difficult = (_text(obj, "difficult") or "0") not in ("0", "", "false", "False")
        objects.append(VocObject(name.lower(), (xmin - 1.0, ymin - 1.0, xmax, ymax), difficult))
    return VocAnnotation(str(path), _text(root, "filename"), size, objects)


def objects_to_arrays(ann: VocAnnotation, size: tuple[int, int], strict: bool = False,
                      classes: tuple[str, ...] = DWD_CLASSES):
    """Turn parsed objects into clean boxes, 1-based labels and difficult flags.

    Boxes reaching outside the ``(width, height)`` image are clipped (warning); boxes with no area
    left are dropped (warning); unknown class names are dropped (warning, or error when ``strict``).

    Returns:
        ``(boxes, labels, difficult, problems)``: lists of 4-tuples, ints and bools, plus ``Problem``s.
    """
    width, height = size
    boxes, labels, difficult, problems = [], [], [], []
    for k, obj in enumerate(ann.objects, start=1):
        if obj.name not in classes:
            severity = "error" if strict else "warning"
            problems.append(Problem(ann.path, UNKNOWN_CLASS,
                                    f"object {k} has unknown class {obj.name!r} (valid: {', '.join(classes)}); dropped",
                                    severity))
            continue
        x0, y0, x1, y1 = obj.box
        cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
            problems.append(Problem(ann.path, ZERO_AREA_BOX,
                                    f"object {k} ({obj.name}) box {_fmt_box(obj.box)} has no area inside the "
                                    f"{width}x{height} image; dropped", "warning"))
            continue
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            problems.append(Problem(ann.path, BOX_CLIPPED,
                                    f"object {k} ({obj.name}) box {_fmt_box(obj.box)} reaches outside the "
                                    f"{width}x{height} image; clipped", "warning"))
        boxes.append((cx0, cy0, cx1, cy1))
        labels.append(classes.index(obj.name) + 1)
        difficult.append(obj.difficult)
    if not ann.objects:
        problems.append(Problem(ann.path, EMPTY_ANNOTATION, "annotation has no objects; kept as an image without boxes",
                                "info"))
    return boxes, labels, difficult, problems


def _fmt_box(box) -> str:
    # show the box as written in the XML (1-based), so the message can be matched against the file
    x0, y0, x1, y1 = box
    return f"(xmin, ymin, xmax, ymax) = ({x0 + 1:g}, {y0 + 1:g}, {x1:g}, {y1:g})"


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Read an ImageSets-style id list (one id per line; extra columns and blanks ignored), de-duplicated
    in order. Raises ``DataError`` when the file is missing or is not UTF-8 text (naming the line)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "split file is missing") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # a replaced byte would name an id whose files do not exist
        line = raw[: exc.start].count(b"\n") + 1
        bad = raw.splitlines()[line - 1].strip() if raw.splitlines() else b""
        raise DataError(path, f"line {line} is not UTF-8 text ({bad!r}, byte 0x{raw[exc.start]:02x}); "
                              f"image ids must be UTF-8 (rename the files and the id)") from None
    seen: dict[str, None] = {}
    for line in text.splitlines():
        parts = line.split()
        if parts:
            seen.setdefault(Path(parts[0]).stem if parts[0].lower().endswith(IMAGE_SUFFIXES) else parts[0], None)
    return list(seen)


def voc_candidates(root: str | os.PathLike, domain: str) -> list[Path]:
    """The folders a domain's ``VOC2007`` may live in, in the order they are tried."""
    root = Path(root)
    return [root / domain / "VOC2007", root / domain / domain / "VOC2007", root / domain / "VOC2007" / "VOC2007"]


def find_voc_root(root: str | os.PathLike, domain: str) -> Path:
    """Return the ``VOC2007`` folder of ``domain`` under ``root`` (any known nesting variant).

    A folder qualifies when it holds ``Annotations`` or ``JPEGImages``. Raises ``DataError`` naming
    every folder that was tried.
    """
    candidates = voc_candidates(root, domain)
    for cand in candidates:
        if (cand / "Annotations").is_dir() or (cand / "JPEGImages").is_dir():
            return cand
    if not Path(root).is_dir():
        raise DataError(root, "dataset root folder does not exist")
    tried = ", ".join(str(c) for c in candidates)
    raise DataError(Path(root) / domain, f"no VOC2007 folder with Annotations/JPEGImages for domain {domain!r}; "
                                         f"expected one of: {tried}")


def list_images(folder: str | os.PathLike) -> dict[str, str]:
    """Map file stem -> file name for the images in ``folder`` (one directory listing, no stat calls).

    When a stem exists with several suffixes, the earliest of ``IMAGE_SUFFIXES`` (``.jpg``) wins.
    """
    found: dict[str, tuple[int, str]] = {}
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    for entry in entries:
        stem, suffix = os.path.splitext(entry.name)
        suffix = suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            rank = IMAGE_SUFFIXES.index(suffix)
            if stem not in found or rank < found[stem][0]:
                found[stem] = (rank, entry.name)
    return {stem: name for stem, (_, name) in found.items()}


# ---- image files: every decode failure becomes a DataError naming the file -------------------------

DECODE_FAILURE = "cannot be decoded, the file is truncated or corrupt"


@contextmanager
def _open_image(path, what: str = "image", missing: str = "image file is missing", failure: str = DECODE_FAILURE,
                errors: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError)):
    """``PIL.Image.open(path)`` whose failures become a DataError naming the file: ``missing`` for a
    missing file, ``"<what> <failure> (<reason>)"`` for any of ``errors`` (PIL's UnidentifiedImageError is
    an OSError). DataErrors raised inside the block (a ValueError subclass) pass through unchanged."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            yield im
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(path, missing) from None
    except Image.DecompressionBombError as exc:  # a tiny file that would decode to gigabytes
        raise DataError(path, f"{what} is too large to decode safely ({exc})") from None
    except errors as exc:
        raise DataError(path, f"{what} {failure} ({exc})") from None


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the image header only (no decode)."""
    with _open_image(path, failure="cannot be read", errors=(OSError, ValueError)) as im:
        return im.size


def verify_image(path: str | os.PathLike) -> tuple[int, int]:
    """Decode the whole file to prove it is readable; returns ``(width, height)``.

    JPEGs are decoded at 1/8 scale (``draft``): every entropy-coded byte is still read, so a truncated
    or corrupt file fails exactly as in a full decode, at about half the cost.
    """
    with _open_image(path) as im:
        size = im.size
        problem = _rgb_mode_problem(im.mode)
        if problem:
            raise DataError(path, problem)
        if im.format == "JPEG":
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        im.load()
    return size


# 16-bit greyscale modes: PIL's convert("RGB") clips them to 255 (an all-white image), so they are
# scaled here instead; "I" is how PIL opens some 16-bit PNGs
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def _rgb_mode_problem(mode: str) -> str | None:
    """Why an image of PIL ``mode`` cannot become 8-bit RGB correctly (None when it can)."""
    if mode in EIGHT_BIT_MODES or mode in SIXTEEN_BIT_MODES:
        return None
    return (f"image mode {mode} (e.g. floating-point or signed pixels) cannot be converted to 8-bit RGB "
            "without guessing its range; save it as an 8- or 16-bit PNG or a JPEG")


def load_rgb(path: str | os.PathLike):
    """Decode an image file to a ``uint8`` array ``[H, W, 3]``.

    16-bit greyscale is scaled to 0..255 (``v / 257``, rounded); 16-bit colour PNGs are reduced by PIL
    itself; modes whose range is unknown (float, signed) raise a ``DataError`` naming the file.
    """
    import numpy as np

    with _open_image(path) as im:
        problem = _rgb_mode_problem(im.mode)
        if problem:
            raise DataError(path, problem)
        if im.mode not in SIXTEEN_BIT_MODES:
            return np.asarray(im.convert("RGB"))
        arr = np.asarray(im).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataError(path, f"image values span {arr.min()}..{arr.max()}; expected 16-bit 0..65535")
    grey = np.rint(arr / 257.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def load_label_png(path: str | os.PathLike):
    """Decode a single-channel label image (``L``, ``P`` or 16-bit ``I``) to a ``uint8`` array ``[H, W]``."""
    import numpy as np

    with _open_image(path, what="label image", missing="label file is missing") as im:
        if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise DataError(path, f"label image has mode {im.mode}; expected single-channel ids (L or P)")
        arr = np.asarray(im)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(path, f"label values span {arr.min()}..{arr.max()}; expected 0..255")
        arr = arr.astype(np.uint8)
    return arr


def rgb_to_tensor(arr):
    """``uint8 [H, W, 3]`` array -> float32 tensor ``[3, H, W]`` in [0, 1] (same values as torchvision's
    ``to_tensor``)."""
    import numpy as np
    import torch

    # The conversion is done in NumPy: torch's threaded elementwise kernels cost ~25x more on a busy
    # 2-core machine, and DataLoader workers run this once per image.
    out = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
    out /= 255.0
    return torch.from_numpy(out)
