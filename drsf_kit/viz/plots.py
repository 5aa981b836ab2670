"""Figures shared by the analysis module and the notebooks; every function returns a matplotlib Figure.

Domains keep one colour everywhere (``DOMAIN_COLORS``); real images are drawn as circles and
synthetic ones (analysis keys ``synth:<domain>``) as triangles, so a legend entry reads
"<domain> (real)" or "<domain> (synthetic)".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from drsf_kit.data.classes import DOMAIN_COLORS
from drsf_kit.errors import ConfigError
from drsf_kit.utils.io import atomic_write_bytes
from drsf_kit.viz.images import heatmap_overlay, to_numpy_image

SYNTH_PREFIX = "synth:"
_MARKERS = {"real": "o", "synthetic": "^"}
# Extra colours for domains outside the DWD list (a researcher's own pseudo-domains).
_FALLBACK = ("#d62728", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#843c39")


def split_group(name: str) -> tuple[str, str]:
    """``synth:night_rainy`` -> (``night_rainy``, ``synthetic``); a plain domain -> (domain, ``real``)."""
    if name.startswith(SYNTH_PREFIX):
        return name[len(SYNTH_PREFIX):], "synthetic"
    return name, "real"


def domain_color(name: str) -> str:
    """The colour of a domain (or analysis key); unknown domains get a stable fallback colour."""
    domain, _ = split_group(name)
    if domain in DOMAIN_COLORS:
        return DOMAIN_COLORS[domain]
    return _FALLBACK[sum(map(ord, domain)) % len(_FALLBACK)]


def domain_label(name: str, with_kind: bool = True) -> str:
    """Readable legend text: ``synth:dusk_rainy`` -> ``dusk rainy (synthetic)``."""
    domain, kind = split_group(name)
    text = domain.replace("_", " ")
    return f"{text} ({kind})" if with_kind else text


def _new_axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, constrained_layout=True)
    return fig, ax


def plot_embedding(emb, groups: Sequence[str], kinds: Sequence[str] | None = None, title: str | None = None,
                   xlabel: str = "dimension 1", ylabel: str = "dimension 2", ax=None):
    """Scatter a 2-D embedding: colour by domain, circle = real, triangle = synthetic, legend names domains.

    Args:
        emb: ``[N, 2]`` coordinates.
        groups: domain per point (``synth:<domain>`` marks synthetic points when ``kinds`` is None).
        kinds: ``real``/``synthetic`` per point; overrides the prefix.
    """
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[1] < 2 or len(emb) != len(groups):
        raise ValueError(f"plot_embedding: expected [N, 2] coordinates for {len(groups)} points, got {emb.shape}")
    doms = [split_group(g)[0] for g in groups]
    kinds = list(kinds) if kinds is not None else [split_group(g)[1] for g in groups]
    fig, ax = _new_axes(ax, (7.5, 5.5))
    keys = list(dict.fromkeys(zip(doms, kinds)))
    keys.sort(key=lambda k: (k[1] != "real", k[0]))
    doms_arr, kinds_arr = np.asarray(doms), np.asarray(kinds)
    for dom, kind in keys:
        sel = (doms_arr == dom) & (kinds_arr == kind)
        real = kind == "real"
        ax.scatter(emb[sel, 0], emb[sel, 1], s=22 if real else 26, marker=_MARKERS.get(kind, "s"),
                   c=domain_color(dom), alpha=0.8, linewidths=0.6 if real else 0.9,
                   edgecolors="white" if real else "black",
                   label=f"{dom.replace('_', ' ')} ({kind}, n={int(sel.sum())})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.ticklabel_format(axis="both", style="sci", scilimits=(-2, 3))  # tiny or huge feature scales stay legible
    ax.set_title(title or "Feature embedding by domain")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False,
              title="domain (kind)", title_fontsize=9)
    ax.grid(alpha=0.2)
    return fig


def plot_gap_heatmap(matrix, metric: str = "mmd", title: str | None = None, ax=None, digits: int = 3):
    """Heatmap of a ``target x compared-domain`` gap matrix (``gap.gap_matrix``); the best pseudo-domain
    per target is outlined, and the source column (when present) is the reference."""
    from matplotlib import patches

    values = matrix.to_numpy(dtype=float)
    rows, cols = [str(r) for r in matrix.index], [str(c) for c in matrix.columns]
    fig, ax = _new_axes(ax, (1.6 + 1.25 * len(cols), 1.4 + 0.7 * len(rows)))
    im = ax.imshow(values, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(cols)), [domain_label(c).replace(" (", "\n(") for c in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), [domain_label(r, with_kind=False) for r in rows], fontsize=9)
    ax.set_xlabel("compared domain")
    ax.set_ylabel("real target")
    finite = values[np.isfinite(values)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.{digits}f}", ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] > mid else "black")
        pseudo = [j for j, c in enumerate(cols) if c.startswith(SYNTH_PREFIX) and np.isfinite(values[i, j])]
        if pseudo:
            best = min(pseudo, key=lambda j: values[i, j])
            ax.add_patch(patches.Rectangle((best - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(im, ax=ax, label=f"{metric} (lower = closer)")
    ax.set_title(title or f"Feature gap to each real target ({metric}; red box = closest pseudo-domain)", fontsize=10)
    return fig


def plot_gap_change(compare, metric: str = "mmd", labels: tuple[str, str] = ("before", "after"),
                    title: str | None = None):
    """Before/after dumbbells of one metric (``compare_gap_tables``): one panel per real target, one row
    per compared domain; a hollow marker is the first model, a filled one the second."""
    import matplotlib.pyplot as plt

    a, b = f"{metric}_{labels[0]}", f"{metric}_{labels[1]}"
    if a not in compare or b not in compare:
        raise ValueError(f"plot_gap_change: columns {a!r}/{b!r} not in the comparison table")
    targets = list(dict.fromkeys(compare["target"]))
    order = list(dict.fromkeys(compare["domain"]))  # one row per compared domain, shared by the panels
    fig, axes = plt.subplots(1, len(targets), figsize=(2.8 * len(targets) + 2.5, 0.45 * len(order) + 1.6),
                             sharex=True, sharey=True, squeeze=False, constrained_layout=True)
    for ax, target in zip(axes[0], targets):
        rows = compare[compare["target"] == target]
        for _, row in rows.iterrows():
            y = order.index(row["domain"])
            colour = domain_color(row["domain"])
            ax.annotate("", xy=(row[b], y), xytext=(row[a], y),
                        arrowprops=dict(arrowstyle="->", color=colour, lw=1.5, shrinkA=4, shrinkB=4))
            ax.scatter([row[a]], [y], s=40, facecolors="white", edgecolors=colour, linewidths=1.5, zorder=3)
            ax.scatter([row[b]], [y], s=40, color=colour, zorder=3)
        ax.set_title(f"target: {domain_label(target, with_kind=False)}", fontsize=9)
        ax.set_xlabel(f"{metric} (lower = closer)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(range(len(order)), [domain_label(d) for d in order], fontsize=8)
    axes[0, 0].set_ylim(len(order) - 0.5, -0.5)  # first compared domain on top
    handles = [plt.Line2D([], [], marker="o", ls="", markerfacecolor="white", markeredgecolor="black",
                          label=labels[0]),
               plt.Line2D([], [], marker="o", ls="", color="black", label=labels[1])]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(title or f"Feature gap: {labels[0]} (hollow) -> {labels[1]} (filled), {metric}", fontsize=10)
    return fig


def plot_histograms(values_by_domain: Mapping[str, np.ndarray], xlabel: str, title: str | None = None,
                    bins: int = 30, value_range: tuple[float, float] | None = None, ax=None):
    """Overlaid step histograms (density) of one value per domain, e.g. per-channel gates or entropies.

    Drawn with seaborn's ``histplot`` (each domain normalised on its own, so domains of different sizes
    compare); real domains are solid, synthetic ones dashed, each in its domain colour.
    """
    import seaborn as sns

    fig, ax = _new_axes(ax, (7.0, 4.2))
    arrays = {k: np.asarray(v, dtype=float).ravel() for k, v in values_by_domain.items()}
    arrays = {k: v[np.isfinite(v)] for k, v in arrays.items() if v.size}
    if value_range is None and arrays:
        allv = np.concatenate(list(arrays.values()))
        value_range = (float(allv.min()), float(allv.max()) + 1e-9)
    for name, vals in arrays.items():
        _, kind = split_group(name)
        sns.histplot(x=vals, bins=bins, binrange=value_range, stat="density", element="step", fill=False, ax=ax,
                     linewidth=1.8, linestyle="-" if kind == "real" else "--", color=domain_color(name),
                     label=f"{domain_label(name)} (mean {vals.mean():.3f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title or xlabel)
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.2)
    return fig


def _colorbar(fig, ax, heat, cmap: str, vmin, vmax, **kwargs):
    """A colour bar for a map drawn as a blended picture (imshow of RGB carries no scale of its own)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    lo = float(np.nanmin(heat)) if vmin is None else vmin
    hi = float(np.nanmax(heat)) if vmax is None else vmax
    bar = fig.colorbar(ScalarMappable(Normalize(lo, hi if hi > lo else lo + 1e-9), cmap), ax=ax, **kwargs)
    if hasattr(bar.formatter, "set_useOffset"):  # plain tick values: an offset label reads as a stray formula
        bar.formatter.set_useOffset(False)
    return bar


def plot_overlay(image, heat, alpha: float = 0.75, cmap: str = "inferno", title: str | None = None,
                 vmin: float | None = None, vmax: float | None = None, ax=None, colorbar: bool = True,
                 label: str = "value"):
    """An image with a heat map blended over it (``viz.images.heatmap_overlay``), with a colour bar."""
    fig, ax = _new_axes(ax, (6.0, 3.6))
    ax.imshow(heatmap_overlay(image, heat, alpha=alpha, cmap=cmap, vmin=vmin, vmax=vmax))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        _colorbar(fig, ax, np.asarray(heat, np.float32), cmap, vmin, vmax, fraction=0.03, pad=0.02, label=label)
    return fig


def _image_axes(ax, ylabel: str | None = None) -> None:
    """An axes showing a picture: no ticks (pixel numbers say nothing here), a frame, and ``ylabel``."""
    ax.set_xticks([])
    ax.set_yticks([])
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)


def plot_map_grid(images_by_column: Mapping[str, object], maps_by_row: Mapping[str, Mapping[str, np.ndarray]],
                  shared_scale: bool = True, cmap: str = "inferno", alpha: float = 0.8, title: str | None = None,
                  cmaps: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None):
    """A grid: the first row shows one image per column (domain), each further row one map per column
    (e.g. GradCAM, integrated gradients) overlaid on it. With ``shared_scale`` every row uses one colour
    scale across its columns, so magnitudes compare across domains; each row has its colour bar
    (``labels[row]`` names its values, default the row's name) and its name on the first column's
    y axis. ``cmaps`` gives a row its own colour map (default ``cmap``)."""
    import matplotlib.pyplot as plt

    cols = list(images_by_column)
    rows = list(maps_by_row)
    cmaps, labels = dict(cmaps or {}), dict(labels or {})
    if not cols:
        raise ConfigError("plot_map_grid: no images to show")
    fig, axes = plt.subplots(1 + len(rows), len(cols), figsize=(2.9 * len(cols) + 0.8, 1.9 * (1 + len(rows)) + 0.5),
                             squeeze=False, constrained_layout=True)
    for j, col in enumerate(cols):
        axes[0, j].imshow(to_numpy_image(images_by_column[col]))
        axes[0, j].set_title(domain_label(col), fontsize=9, color=domain_color(col))
        _image_axes(axes[0, j], "image" if j == 0 else None)
    for i, row in enumerate(rows, start=1):
        row_cmap = cmaps.get(row, cmap)
        maps = {c: np.asarray(maps_by_row[row][c], dtype=np.float32) for c in cols if c in maps_by_row[row]}
        vmax = max((float(np.nanmax(m)) for m in maps.values()), default=1.0) if shared_scale else None
        vmin = min((float(np.nanmin(m)) for m in maps.values()), default=0.0) if shared_scale else None
        for j, col in enumerate(cols):
            ax = axes[i, j]
            _image_axes(ax, row if j == 0 else None)
            if col in maps:
                ax.imshow(heatmap_overlay(images_by_column[col], maps[col], alpha=alpha, cmap=row_cmap, vmin=vmin,
                                          vmax=vmax))
            else:
                ax.set_axis_off()
        if maps:
            heat = np.concatenate([m.ravel() for m in maps.values()])
            _colorbar(fig, list(axes[i, :]), heat, row_cmap, vmin, vmax, fraction=0.02, pad=0.01,
                      label=labels.get(row, row))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def attribution_grid(images_by_domain: Mapping[str, object], maps_by_method: Mapping[str, Mapping],
                     title: str | None = None, shared_scale: bool = True):
    """Side-by-side figure: one column per domain of a scene, one row per attribution method.

    ``maps_by_method`` comes from ``drsf_kit.analysis.attribution.attribution_maps``; rows share one colour
    scale across domains, so magnitudes compare.
    """
    return plot_map_grid(images_by_domain, maps_by_method, shared_scale=shared_scale,
                         title=title or "Attribution across the domains of one scene")


def gate_histograms(values_by_domain: Mapping[str, np.ndarray], what: str = "gate", per_channel: bool = True,
                    bins: int = 30, title: str | None = None):
    """Histogram per domain of DFDR gate (or entropy) values; ``per_channel`` averages over images first.

    The values come from ``drsf_kit.analysis.entropy.channel_stats_by_domain``. Returns a Figure; domains
    keep their colours, synthetic ones are dashed.
    """
    vals = {}
    for d, v in values_by_domain.items():
        if v is None:
            continue
        arr = np.asarray(v, dtype=float)
        vals[d] = arr.reshape(-1, arr.shape[-1]).mean(0) if per_channel and arr.ndim > 1 else arr.ravel()
    if not vals:
        raise ConfigError(f"gate_histograms: no {what} values to plot (model without a DFDR block?)")
    unit = "mean over images, one value per channel" if per_channel else "all images x channels"
    label = {"gate": "DFDR gate a (1 = shared, 0 = private)", "entropy": "channel entropy (0 = peaked, 1 = flat)"}
    rng = (0.0, 1.0) if what in ("gate", "entropy") else None
    return plot_histograms(vals, xlabel=f"{label.get(what, what)} [{unit}]", bins=bins, value_range=rng,
                           title=title or f"{what.capitalize()} distribution per domain")


def save_figure(fig, path, dpi: int = 130, close: bool = True):
    """Save ``fig`` atomically (PNG, PDF or SVG from the suffix) and close it unless ``close`` is False."""
    import io
    from pathlib import Path

    import matplotlib.pyplot as plt

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    if close:
        plt.close(fig)
    return path
