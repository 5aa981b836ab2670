"""Overview tables and figures for the notebooks: a dataset check per domain, samples per domain, the
twins of a few scenes, the synthetic manifests, and training curves. Each returns a DataFrame or a
matplotlib Figure (no pyplot state), which ``drsf_kit.workflows.notebook.save_table/save_figure`` write out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from drsf_kit.data.classes import DWD_DOMAINS
from drsf_kit.data.dwd import DWDDetection
from drsf_kit.data.manifest import read_manifests
from drsf_kit.errors import ConfigError
from drsf_kit.train.rundir import RunDir
from drsf_kit.viz import images as im


def check_table(report):
    """A ``drsf data check`` report as a DataFrame: one row per domain with its images per split,
    boxes per class, masks and problems."""
    import pandas as pd

    rows = []
    for summary in report.domains:
        row = {f"images ({split})": count for split, count in summary.images.items()}
        row.update({f"boxes: {cls}": n for cls, n in summary.boxes.items()})
        row["boxes"] = sum(summary.boxes.values())
        row["masks"] = summary.masks
        row["problems"] = sum(summary.problems.values())
        rows.append(pd.Series(row, name=summary.name))
    return pd.DataFrame(rows).fillna(0)


def domain_samples_figure(data_root: str | os.PathLike, domains=None, n: int = 3, split: str = "all"):
    """Rows = domains, columns = ``n`` images with their boxes plus the first image's mask overlay
    (when the dataset has masks): what each weather looks like, and that the labels fit it."""
    domains = list(domains or DWD_DOMAINS)
    cells = []
    for domain in domains:
        ds = DWDDetection(data_root, domain, split, with_masks=True, progress=False)
        row = []
        for i in range(min(n, len(ds))):
            image, target = ds[i]
            row.append(im.draw_boxes(im.to_numpy_image(image), target, score_threshold=0.0))
        image, target = ds[0]
        row.append(im.overlay_mask(im.to_numpy_image(image), im.as_numpy(target["mask"])))
        cells.append(row)
    titles = [f"image {i + 1}" for i in range(len(cells[0]) - 1)] + ["mask of image 1"]
    return im.grid_figure(cells, titles, domains, title=f"{Path(data_root).name}: samples per domain")


def twins_figure(scenes: Mapping[str, Mapping]):
    """Rows = scenes, columns = the source image and its pseudo-domain twins (same layout)."""
    domains = list(next(iter(scenes.values())))
    cells = [[im.to_numpy_image(twins[d]) for d in domains] for twins in scenes.values()]
    return im.grid_figure(cells, domains, list(scenes), title="source images and their generated twins")


def manifest_table(synth_root: str | os.PathLike):
    """Per pseudo-domain: twins generated, generator, mean/min layout consistency, seconds per image."""
    import pandas as pd

    rows = pd.DataFrame(read_manifests(synth_root))
    if rows.empty:
        raise ConfigError(f"no manifest rows under {synth_root}: run `drsf synth` (or ensure_synth) first")
    for column in ("consistency", "seconds"):
        if column not in rows:
            rows[column] = float("nan")
    table = rows.groupby("domain").agg(
        twins=("path", "size"), generator=("generator", "first"), consistency_mean=("consistency", "mean"),
        consistency_min=("consistency", "min"), seconds_per_image=("seconds", "mean"),
    )
    return table


def training_curves_figure(run_dirs, key: str = "loss", smooth: int = 1):
    """One line per run of ``key`` (a ``metrics.jsonl`` column) against the step; ``smooth`` = moving
    average window."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for run_dir in run_dirs:
        rows = [r for r in RunDir(run_dir).metric_rows() if key in r and "event" not in r]
        if not rows:
            continue
        steps = np.array([r["step"] for r in rows], float)
        values = np.array([r[key] for r in rows], float)
        if smooth > 1 and len(values) >= smooth:
            values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
            steps = steps[smooth - 1:]
        ax.plot(steps, values, marker="." if len(values) < 20 else None, label=Path(run_dir).name)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(f"training {key}" + (f" (moving average of {smooth})" if smooth > 1 else ""))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
