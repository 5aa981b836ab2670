"""Images for widgets and notebooks: arrays in, uint8 pictures / PNG bytes / Figures out.

Feature maps to RGB by a fixed PCA basis, predictions (boxes or masks) drawn over images, heat-map
overlays, histograms as pictures, tiled grids with titles, and small bar charts. Nothing here needs
a widget, so the tests check these directly.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np

from drsf_kit.analysis.explore import as_numpy, label_map, unwrap_prediction  # noqa: F401  (readings, re-exported)
from drsf_kit.data.classes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    DOMAIN_COLORS,
    DOMAIN_SHORT,
    DWD_CLASSES,
    IGNORE_INDEX,
)
from drsf_kit.errors import ConfigError


def to_numpy_image(image) -> np.ndarray:
    """Any image as an ``[H,W,3]`` uint8 array: the kit's one image converter.

    Accepts a ``[3,H,W]`` / ``[1,3,H,W]`` tensor or array in [0,1], an ``[H,W,3]`` or ``[H,W]`` array (uint8, or
    float in [0,1]; a float array with values above 1 is read as 0..255) and PIL images.
    """
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        if arr.size and float(np.nanmax(arr)) > 1.0 + 1e-6:  # a 0..255 float picture
            arr = arr / 255.0
        arr = (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return arr


def png_bytes(array: np.ndarray) -> bytes:
    """PNG bytes of an ``[H,W,3]`` uint8 array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``[h,w(,c)]`` array to ``size=(H, W)`` by nearest neighbour (labels stay labels)."""
    h, w = array.shape[:2]
    rows = (np.arange(size[0]) * h // size[0]).clip(0, h - 1)
    cols = (np.arange(size[1]) * w // size[1]).clip(0, w - 1)
    return array[rows][:, cols]


def feature_map(features, level: str | None = None) -> np.ndarray:
    """One ``[C,h,w]`` float array from features given as a tensor (``[C,h,w]`` or ``[1,C,h,w]``) or a
    mapping of levels (``level`` picks one; default the first, the finest FPN level)."""
    if isinstance(features, Mapping):
        if not features:
            raise ConfigError("predict_mixed returned an empty feature mapping")
        key = level if level is not None else next(iter(features))
        if key not in features:
            raise ConfigError(f"feature level {key!r} not found; levels: {', '.join(map(str, features))}")
        features = features[key]
    arr = features.detach().float().cpu().numpy() if hasattr(features, "detach") else np.asarray(features, np.float32)
    if arr.ndim == 4:
        arr = arr[0]
    if arr.ndim != 3:
        raise ConfigError(f"expected features of shape [C,h,w] or [1,C,h,w], got {tuple(arr.shape)}")
    return arr


class PcaBasis:
    """Three principal directions of feature vectors and the colour range of their projections.

    Fitting once on both unmixed twins keeps colours comparable while lambda moves between them.
    """

    def __init__(self, maps: Sequence[np.ndarray]):
        data = np.concatenate([m.reshape(m.shape[0], -1).T for m in maps], axis=0).astype(np.float64)
        self.mean = data.mean(axis=0)
        centred = data - self.mean
        _, sing, vt = np.linalg.svd(centred, full_matrices=False)
        total = float((sing ** 2).sum())
        # the share of the feature variance each colour channel (R, G, B = components 1, 2, 3) carries
        self.explained = np.zeros(3)
        self.explained[: min(3, sing.size)] = (sing[:3] ** 2) / total if total > 0 else 0.0
        comps = vt[:3]
        if comps.shape[0] < 3:  # fewer than 3 channels: pad with zero directions (grey)
            comps = np.vstack([comps, np.zeros((3 - comps.shape[0], comps.shape[1]))])
        # sign convention: the largest loading of each component is positive, so refits agree
        signs = np.sign(comps[np.arange(3), np.abs(comps).argmax(axis=1)])
        self.components = comps * np.where(signs == 0, 1.0, signs)[:, None]
        proj = centred @ self.components.T
        self.low = np.percentile(proj, 1, axis=0)
        self.high = np.percentile(proj, 99, axis=0)

    def rgb(self, fmap: np.ndarray) -> np.ndarray:
        """``[C,h,w]`` features -> ``[h,w,3]`` uint8 colours."""
        c, h, w = fmap.shape
        proj = (fmap.reshape(c, -1).T - self.mean) @ self.components.T
        scaled = (proj - self.low) / np.maximum(self.high - self.low, 1e-8)
        return (np.clip(scaled, 0, 1).reshape(h, w, 3) * 255 + 0.5).astype(np.uint8)


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a train-id mask over an ``[H,W,3]`` uint8 image with the Cityscapes palette (255 clear)."""
    mask = resize_nearest(np.asarray(mask), image.shape[:2]).astype(np.int64)
    palette = np.zeros((256, 3), np.float32)
    palette[: len(CITYSCAPES_PALETTE)] = np.asarray(CITYSCAPES_PALETTE, np.float32)
    colour = palette[np.clip(mask, 0, 255)]
    keep = ((mask != IGNORE_INDEX) & (mask >= 0) & (mask < len(CITYSCAPES_PALETTE)))[..., None]
    out = np.where(keep, (1 - alpha) * image + alpha * colour, image)
    return out.astype(np.uint8)


def draw_boxes(image: np.ndarray, prediction: Mapping, score_threshold: float = 0.3, class_names=DWD_CLASSES) -> np.ndarray:
    """Draw xyxy boxes (torchvision labels, 1-based) scoring at least ``score_threshold``."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    boxes = np.asarray(as_numpy(prediction.get("boxes", np.zeros((0, 4)))), np.float32).reshape(-1, 4)
    labels = np.asarray(as_numpy(prediction.get("labels", np.zeros(len(boxes)))), np.int64).reshape(-1)
    scored = "scores" in prediction  # ground-truth targets have no scores: label only
    scores = np.asarray(as_numpy(prediction.get("scores", np.ones(len(boxes)))), np.float32).reshape(-1)
    for box, label, score in zip(boxes, labels, scores):
        if score < score_threshold:
            continue
        name = class_names[label - 1] if 1 <= label <= len(class_names) else str(label)
        rgb = CITYSCAPES_PALETTE[(int(label) * 5) % len(CITYSCAPES_PALETTE)]
        draw.rectangle([float(v) for v in box], outline=rgb, width=2)
        draw.text((float(box[0]) + 2, float(box[1]) + 1), f"{name} {score:.2f}" if scored else name, fill=rgb)
    return np.asarray(pil)


def render_prediction(image: np.ndarray, prediction, score_threshold: float = 0.3) -> np.ndarray:
    """Boxes (a torchvision detection dict, or a one-element list of them) or a segmentation output
    (``[H,W]`` labels, ``[C,H,W]`` or ``[1,C,H,W]`` logits) drawn over ``image``."""
    content = unwrap_prediction(prediction)
    if isinstance(content, Mapping):
        return draw_boxes(image, content, score_threshold)
    labels = label_map(content)
    if labels.ndim != 2:
        raise ConfigError(f"cannot draw a prediction of shape {tuple(as_numpy(content).shape)}")
    return overlay_mask(image, labels)


def class_legend_html(prediction, min_share: float = 0.02) -> str:
    """Colour swatches naming the classes of a segmentation output (as ``render_prediction`` reads it)
    that cover at least ``min_share`` of the image, largest first; "" for boxes (they carry labels)."""
    import html

    try:
        content = unwrap_prediction(prediction)
    except ConfigError:
        return ""
    if isinstance(content, Mapping):
        return ""
    labels = label_map(content)
    ids, counts = np.unique(labels[(labels >= 0) & (labels < len(CITYSCAPES_CLASSES))], return_counts=True)
    shares = sorted(zip(counts / max(labels.size, 1), ids), reverse=True)
    swatch = '<span style="display:inline-block;width:10px;height:10px;background:rgb{}"></span>'
    items = [
        f'<span style="white-space:nowrap;margin-right:8px">{swatch.format(tuple(CITYSCAPES_PALETTE[int(i)]))} '
        f"{html.escape(CITYSCAPES_CLASSES[int(i)])} {share:.0%}</span>"
        for share, i in shares if share >= min_share
    ]
    return '<div style="font-size:11px;max-width:340px">' + " ".join(items) + "</div>" if items else ""


def probability_figure(probs: np.ndarray, names: Sequence[str], title: str = "discriminator: domain probabilities"):
    """Horizontal bars of the discriminator's domain probabilities, one per domain name."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 0.45 * len(names) + 0.9), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ys = np.arange(len(names))
    ax.barh(ys, probs, color=[DOMAIN_COLORS.get(n, "#555555") for n in names])
    for y, p in zip(ys, probs):
        ax.text(min(float(p) + 0.02, 0.9), y, f"{p:.2f}", va="center", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{n} ({DOMAIN_SHORT[n]})" if n in DOMAIN_SHORT else n for n in names], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability", fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def resize_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``size`` (H, W)."""
    import torch

    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise ConfigError(f"expected a 2-D map, got shape {tuple(heat.shape)}")
    if heat.shape == tuple(size):
        return heat
    t = torch.from_numpy(heat)[None, None]
    return torch.nn.functional.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def alpha_map(heat: np.ndarray, alpha: float, vmin=None, vmax=None) -> np.ndarray:
    """Per-pixel opacity growing with the value, so low values leave the image visible underneath."""
    lo = float(np.nanmin(heat)) if vmin is None else vmin
    hi = float(np.nanmax(heat)) if vmax is None else vmax
    norm = np.clip((heat - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(heat)
    return (alpha * np.sqrt(np.nan_to_num(norm))).astype(np.float32)


def heatmap_overlay(image, heat, alpha: float = 0.75, cmap: str = "inferno", vmin: float | None = None,
                    vmax: float | None = None) -> np.ndarray:
    """The kit's one heat-map overlay: ``heat`` coloured and blended over ``image``, as ``[H,W,3]`` uint8.

    The map is resized (bilinear) to the image and scaled by its min/max (or ``vmin``/``vmax``); the opacity
    grows with the value up to ``alpha``, so where the map is at its minimum the image shows unchanged.
    """
    import matplotlib

    img = to_numpy_image(image).astype(np.float32) / 255.0
    heat = np.asarray(heat, np.float32)
    heat = heat.reshape(heat.shape[-2:]) if heat.ndim > 2 and np.prod(heat.shape[:-2]) == 1 else heat
    heat = resize_map(heat, img.shape[:2])
    lo = float(np.nanmin(heat)) if vmin is None else vmin
    hi = float(np.nanmax(heat)) if vmax is None else vmax
    norm = np.clip((heat - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(heat)
    colour = matplotlib.colormaps[cmap](np.nan_to_num(norm))[..., :3]
    a = alpha_map(heat, alpha, lo, hi)[..., None]
    return (np.clip((1 - a) * img + a * colour, 0, 1) * 255).round().astype(np.uint8)


def histogram_image(values: np.ndarray, size: tuple[int, int], bins: int = 20, value_range=(0.0, 1.0)) -> np.ndarray:
    """An ``[H,W,3]`` uint8 picture of a histogram of ``values`` (e.g. per-channel entropies in [0,1])."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    h, w = size
    # drawn at a readable size, then scaled to the cell
    fig = Figure(figsize=(max(w, 240) / 100, max(h, 160) / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(np.asarray(values, np.float32).ravel(), bins=bins, range=value_range, color="#444444")
    ax.set_xlabel("channel entropy", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.tight_layout(pad=0.3)
    canvas.draw()
    arr = np.asarray(canvas.buffer_rgba())[..., :3]
    return np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((w, h), Image.BILINEAR))


def image_grid(cells: Sequence[Sequence[np.ndarray]], col_titles: Sequence[str] = (), row_titles: Sequence[str] = (), pad: int = 4) -> np.ndarray:
    """Tile ``cells[row][col]`` (``[H,W,3]`` uint8, resized to the first cell's size) into one image,
    with column titles above and row titles on the left."""
    from PIL import Image, ImageDraw

    h, w = cells[0][0].shape[:2]
    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    top = 14 if col_titles else 0
    left = 8 + 6 * max((len(str(t)) for t in row_titles), default=0) if row_titles else 0  # ~6 px per glyph
    canvas = Image.new("RGB", (left + n_cols * (w + pad), top + n_rows * (h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            tile = cell if cell.shape[:2] == (h, w) else resize_nearest(cell, (h, w))
            canvas.paste(Image.fromarray(np.ascontiguousarray(tile)), (left + c * (w + pad), top + r * (h + pad)))
    for c, title in enumerate(col_titles):
        draw.text((left + c * (w + pad) + 2, 1), str(title), fill=(0, 0, 0))
    for r, title in enumerate(row_titles):
        draw.text((2, top + r * (h + pad) + h // 2 - 6), str(title), fill=(0, 0, 0))
    return np.asarray(canvas)


def message_figure(text: str, size: tuple[float, float] = (4.2, 2.0)):
    """A small figure holding only ``text`` (placeholders such as "no discriminator")."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def figure_png(fig, dpi: int | None = None) -> bytes:
    """PNG bytes of a matplotlib figure (for ``ipywidgets.Image``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def grid_figure(cells: Sequence[Sequence[np.ndarray]], col_titles: Sequence[str] = (), row_titles: Sequence[str] = (),
                title: str | None = None, width: float = 11.0):
    """A matplotlib Figure showing ``image_grid(cells, ...)`` at ``width`` inches (for saving)."""
    from matplotlib.figure import Figure

    grid = image_grid(cells, col_titles=col_titles, row_titles=row_titles)
    h, w = grid.shape[:2]
    fig = Figure(figsize=(width, width * h / w + (0.4 if title else 0.0)), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1 if not title else 1 - 0.4 / fig.get_figheight()))
    ax.imshow(grid)
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
