"""The logic behind the widgets, tested without them.

Ablation dashboard: tidy result rows (CONTRIBUTING.md, one per run, domain, metric[, class]) -> seed
summary -> table and bar chart. Explorers: feature maps to RGB by a fixed PCA basis, predictions (boxes
or masks) drawn over images, probability bars, PNG bytes. ``viz.widgets`` only wires controls to these.
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from drsf_kit.data.classes import (
    CITYSCAPES_PALETTE,
    DOMAIN_COLORS,
    DOMAIN_SHORT,
    DWD_CLASSES,
    DWD_DOMAINS,
    IGNORE_INDEX,
    SOURCE_DOMAIN,
)
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.models.variants import VARIANTS

# Which blocks each ablation variant carries, read from the one VARIANTS dict; the "neither" case maps
# to both block-free variants: with synthetic data (naive_synth) and without (source_only).
VARIANT_BLOCKS = {name: (spec.use_dfdr, spec.use_mdsf) for name, spec in VARIANTS.items()}
VARIANT_ORDER = tuple(VARIANTS)
SUMMARY_COLUMNS = ["variant", "domain", "mean", "std", "n_seeds"]


def variants_for_blocks(dfdr: bool, mdsf: bool, available: Iterable[str] | None = None) -> list[str]:
    """Variants whose blocks match the toggles (both -> drsf, DFDR only -> dfdr, MDSF only -> mdsf,
    neither -> naive_synth and source_only), restricted to ``available`` when given."""
    chosen = [v for v, blocks in VARIANT_BLOCKS.items() if blocks == (bool(dfdr), bool(mdsf))]
    if available is not None:
        available = set(available)
        chosen = [v for v in chosen if v in available]
    return chosen


def order_variants(variants: Iterable[str]) -> list[str]:
    """Variants in ablation order (source_only ... drsf), unknown names after them alphabetically."""
    variants = set(variants)
    known = [v for v in VARIANT_ORDER if v in variants]
    return known + sorted(variants - set(VARIANT_ORDER))


def order_domains(domains: Iterable[str]) -> list[str]:
    """Domains with the source first, then the DWD targets, then anything else alphabetically."""
    domains = set(domains)
    known = [d for d in DWD_DOMAINS if d in domains]
    return known + sorted(domains - set(DWD_DOMAINS))


def load_rows(source):
    """A DataFrame of tidy result rows from a DataFrame, a run folder, a folder of runs, or a list of
    run folders / results files (read with ``evaluation.results.load_results``).

    Raises ``DataError`` when a row lacks a required column.
    """
    import pandas as pd

    from drsf_kit.evaluation.results import COLUMNS, load_results

    df = source.copy() if isinstance(source, pd.DataFrame) else load_results(source)
    if len(df) == 0:
        return pd.DataFrame(columns=list(COLUMNS))
    missing = [k for k in ("task", "variant", "seed", "domain", "metric", "value") if k not in df.columns]
    if missing:
        raise DataError("results", f"result rows lack the column(s) {', '.join(missing)}")
    for key in COLUMNS:
        if key not in df.columns:
            df[key] = None
    return df


def overall_rows(df):
    """Rows that are not per-class (``class`` is null)."""
    return df[df["class"].isna()] if "class" in df.columns else df


def available_options(df, task: str | None = None, metric: str | None = None) -> dict[str, list]:
    """The choices the dashboard offers: tasks; for ``task`` its variants, domains and metrics; for
    ``metric`` too, the protocols it was scored under."""
    rows = overall_rows(df)
    tasks = sorted(rows["task"].dropna().unique().tolist())
    if task is not None:
        rows = rows[rows["task"] == task]
    metrics = sorted(rows["metric"].dropna().unique().tolist())
    if metric is not None:
        rows = rows[rows["metric"] == metric]
    return {
        "tasks": tasks,
        "metrics": metrics,
        "protocols": sorted(rows["protocol"].dropna().astype(str).unique().tolist()),
        "variants": order_variants(rows["variant"].dropna().unique()),
        "domains": order_domains(rows["domain"].dropna().unique()),
    }


def ablation_table(df, task: str, metric: str, variants: Iterable[str] | None = None,
                   domains: Iterable[str] | None = None, protocol: str | None = None,
                   source_domain: str = SOURCE_DOMAIN):
    """``evaluation.tables.domain_table`` over a selection: rows = variants, columns = the chosen
    domains (source first) and ``target_mean``; fractions, ``±std`` over seeds, caption in ``attrs``.

    Returns None when the selection holds no rows.
    """
    from drsf_kit.evaluation.tables import domain_table

    rows = df[(df["task"] == task) & (df["metric"] == metric)]
    if protocol is not None:
        rows = rows[rows["protocol"].astype(str) == str(protocol)]
    if variants is not None:
        rows = rows[rows["variant"].isin(list(variants))]
    if domains is not None:
        rows = rows[rows["domain"].isin(list(domains))]
    if len(overall_rows(rows)) == 0:
        return None
    present = order_domains(overall_rows(rows)["domain"].unique())
    source = source_domain if source_domain in present else None
    targets = [d for d in present if d != source]
    return domain_table(rows, metric, task=task, source=source, targets=targets)


def long_summary(table):
    """The table as long rows: variant, domain, mean, std (NaN for one seed), n_seeds."""
    import pandas as pd

    from drsf_kit.evaluation.tables import SEEDS, STD, TARGET_MEAN

    if table is None:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    out = []
    for variant, row in table.iterrows():
        for domain in table.attrs["value_columns"]:
            if domain == TARGET_MEAN:
                continue
            std = row[domain + STD] if domain + STD in table.columns else float("nan")
            out.append({"variant": variant, "domain": domain, "mean": row[domain], "std": std, "n_seeds": int(row[SEEDS])})
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def table_caption(table, task: str, metric: str) -> str:
    """The table's own caption (metric, protocol, splits, seeds), or a note for an empty selection."""
    if table is None:
        return f"{task}: {metric}: no result rows match this selection"
    return f"{task}: {table.attrs['caption']}"


def display_table(table):
    """Percent strings ``mean ± std`` per cell, domain short names in the headers, a seeds column."""
    import pandas as pd

    from drsf_kit.evaluation.tables import SEEDS, STD

    if table is None:
        return pd.DataFrame()
    shown = pd.DataFrame(index=table.index)
    for col in table.attrs["value_columns"]:
        header = f"{col} ({DOMAIN_SHORT[col]})" if col in DOMAIN_SHORT else col
        stds = table[col + STD] if col + STD in table.columns else [float("nan")] * len(table)
        shown[header] = [
            "–" if pd.isna(m) else f"{100 * m:.1f}" + ("" if pd.isna(s) else f" ± {100 * s:.1f}")
            for m, s in zip(table[col], stds)
        ]
    shown[SEEDS] = table[SEEDS].astype(int)
    return shown


def table_html(shown, caption: str) -> str:
    """An HTML table (with caption) for an ``ipywidgets.HTML``; an empty table becomes a short note."""
    if shown is None or len(shown) == 0:
        return f"<p><b>{html.escape(caption)}</b></p><p>No result rows match this selection.</p>"
    return shown.to_html(escape=True, border=0, classes="drsf-table").replace(
        "<thead>", f"<caption>{html.escape(caption)}</caption><thead>", 1
    )


def table_markdown(table) -> str:
    """The table as Markdown (``evaluation.tables.to_markdown``: caption line, percentages)."""
    from drsf_kit.evaluation.tables import to_markdown

    return "(no result rows match this selection)\n" if table is None else to_markdown(table)


def seed_spread_figure(summary, metric: str, title: str | None = None):
    """Grouped bars: one group per domain, one bar per variant, error bars = std over seeds (percent)."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global figure state, works headless

    fig = Figure(figsize=(7.5, 3.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    if len(summary) == 0:
        ax.text(0.5, 0.5, "no rows for this selection", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    variants = order_variants(summary["variant"].unique())
    domains = order_domains(summary["domain"].unique())
    width = 0.8 / max(1, len(variants))
    cmap = matplotlib.colormaps["tab10"]
    for i, variant in enumerate(variants):
        part = summary[summary["variant"] == variant].set_index("domain").reindex(domains)
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(domains))]
        ax.bar(
            xs,
            100 * part["mean"].fillna(0).to_numpy(),
            width=width,
            yerr=100 * part["std"].fillna(0).to_numpy(),
            capsize=2,
            color=cmap(VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else i),
            label=variant,
        )
    ax.set_xticks(range(len(domains)))
    ax.set_xticklabels([DOMAIN_SHORT.get(d, d) for d in domains])
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title or f"{metric}: mean ± std over seeds")
    ax.legend(fontsize=8, ncol=min(5, len(variants)), loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def figure_png(fig, dpi: int | None = None) -> bytes:
    """PNG bytes of a matplotlib figure (for ``ipywidgets.Image``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ image helpers
def to_numpy_image(image) -> np.ndarray:
    """A ``[3,H,W]`` float tensor/array in [0,1] (or ``[H,W,3]`` uint8) as an ``[H,W,3]`` uint8 array."""
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
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
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
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
    boxes = np.asarray(_numpy(prediction.get("boxes", np.zeros((0, 4)))), np.float32).reshape(-1, 4)
    labels = np.asarray(_numpy(prediction.get("labels", np.zeros(len(boxes)))), np.int64).reshape(-1)
    scores = np.asarray(_numpy(prediction.get("scores", np.ones(len(boxes)))), np.float32).reshape(-1)
    for box, label, score in zip(boxes, labels, scores):
        if score < score_threshold:
            continue
        name = class_names[label - 1] if 1 <= label <= len(class_names) else str(label)
        rgb = CITYSCAPES_PALETTE[(int(label) * 5) % len(CITYSCAPES_PALETTE)]
        draw.rectangle([float(v) for v in box], outline=rgb, width=2)
        draw.text((float(box[0]) + 2, float(box[1]) + 1), f"{name} {score:.2f}", fill=rgb)
    return np.asarray(pil)


def render_prediction(image: np.ndarray, prediction, score_threshold: float = 0.3) -> np.ndarray:
    """Boxes (a torchvision detection dict, or a one-element list of them) or a segmentation output
    (``[H,W]`` labels, ``[C,H,W]`` or ``[1,C,H,W]`` logits) drawn over ``image``."""
    if isinstance(prediction, (list, tuple)) and len(prediction) == 1:
        prediction = prediction[0]
    if isinstance(prediction, Mapping):
        if "boxes" in prediction:
            return draw_boxes(image, prediction, score_threshold)
        for key in ("mask", "out", "logits"):
            if key in prediction:
                return render_prediction(image, prediction[key], score_threshold)
        raise ConfigError(f"cannot draw a prediction with keys {sorted(prediction)}")
    arr = _numpy(prediction)
    if arr.ndim == 4:
        arr = arr[0]
    if arr.ndim == 3:
        arr = arr.argmax(axis=0)
    if arr.ndim != 2:
        raise ConfigError(f"cannot draw a prediction of shape {tuple(arr.shape)}")
    return overlay_mask(image, arr)


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
    ax.set_yticklabels([DOMAIN_SHORT.get(n, n) for n in names])
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _numpy(value) -> np.ndarray:
    return value.detach().float().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "inferno") -> np.ndarray:
    """Colour a 2-D map (min-max scaled, resized to the image) and blend it over ``image`` by ``alpha``."""
    import matplotlib

    heat = np.asarray(heat, np.float32)
    heat = heat.reshape(heat.shape[-2:]) if heat.ndim > 2 and np.prod(heat.shape[:-2]) == 1 else heat
    if heat.ndim != 2:
        raise ConfigError(f"expected a 2-D map, got shape {tuple(heat.shape)}")
    low, high = float(np.nanmin(heat)), float(np.nanmax(heat))
    scaled = np.nan_to_num((heat - low) / max(high - low, 1e-8))
    colour = matplotlib.colormaps[cmap](resize_nearest(scaled, image.shape[:2]))[..., :3] * 255
    return ((1 - alpha) * image + alpha * colour).astype(np.uint8)


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
    left = 70 if row_titles else 0
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
