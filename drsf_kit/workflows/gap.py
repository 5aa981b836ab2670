"""Measure how far each pseudo-domain sits from each real target, in one call (what ``drsf gap`` runs).

Writes ``gap_table.{csv,md,json}`` to ``--out`` and PNG figures (t-SNE, PCA, gap heatmap, channel
entropy / DFDR gates, attribution across one scene's twins) to ``--figures`` (``<out>/figures``).
``run_gap`` is the one code path of the command, the notebooks and the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from drsf_kit.analysis import features as F
from drsf_kit.analysis.attribution import attribution_maps, auto_target
from drsf_kit.analysis.embedding import pca_embed, tsne_embed
from drsf_kit.analysis.entropy import channel_stats_by_domain
from drsf_kit.analysis.gap import compare_gap_tables, gap_matrix, gap_table
from drsf_kit.data.classes import SOURCE_DOMAIN
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.evaluation.tables import frame_to_markdown
from drsf_kit.train import load_run
from drsf_kit.utils.io import atomic_write_json, atomic_write_text
from drsf_kit.utils.runtime import resolve_device
from drsf_kit.viz.plots import (
    gate_histograms,
    plot_embedding,
    plot_gap_change,
    plot_gap_heatmap,
    plot_map_grid,
    save_figure,
)

DEFAULT_OUT = "outputs/gap"
DEFAULT_CACHE = "data/cache/features"


def _load_model(run_dir, task: str, seed: int):
    if run_dir is None:
        return F.default_backbone(task, seed=seed), f"untrained {task} backbone (seed {seed})"
    if not Path(run_dir).is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    model, _cfg = load_run(run_dir)
    return model, f"run {Path(run_dir).name}"


def _summary(table) -> list[str]:
    """One line per real target: the closest pseudo-domain, its distance and the source's distance."""
    closest_by = table.attrs.get("closest_by", "mmd")
    col = "proxy_a_distance" if closest_by == "domain_acc" else closest_by
    lines = []
    for target, grp in table.groupby("target", sort=False):
        best = grp["closest_pseudo_domain"].iloc[0]
        ref = grp[grp["kind"] == "source"]
        ref_txt = f"; source {ref[col].iloc[0]:.4f}" if len(ref) else ""
        if best is None or pd.isna(best):
            lines.append(f"{target}: no pseudo-domain to compare{ref_txt}")
            continue
        val = grp.loc[grp["domain"] == best, col].iloc[0]
        lines.append(f"{target}: closest pseudo-domain {best} ({col} {val:.4f}{ref_txt})")
    return lines


def run_gap(data_root, synth_root=None, run_dir=None, stage: str | None = None, limit: int | None = 64,
            split: str | None = None, task: str = "det", out_dir=DEFAULT_OUT, figures_dir=None,
            cache_dir=DEFAULT_CACHE, compare=None, closest_by: str = "mmd", device: str | None = "auto",
            batch_size: int = 32, seed: int = 0, figures: bool = True, model=None, progress: bool = True,
            size: tuple[int, int] | None = (180, 320), ig_steps: int = 16) -> dict:
    """Collect images, extract features, write the gap tables and figures; returns what was written.

    Args:
        data_root: DWD-layout root; synth_root: generated pseudo-domains (or None).
        run_dir: trained run to analyse (``drsf_kit.train.load_run``); None uses an untrained backbone
            unless ``model`` is given directly.
        compare: path of an earlier ``gap_table.json``; adds ``gap_compare.{csv,md}`` and a change figure.
        size: (H, W) every image is resized to (real and generated images often differ in size).

    Returns:
        ``{"table", "summary", "stage", "model", "n_images", "out_dir", "tables", "figures"}``.
    """
    records = F.collect_domain_images(data_root, synth_root, split=split, limit=limit, seed=seed)
    groups = F.source_first(records)
    if model is None:
        model, model_name = _load_model(run_dir, task, seed)
    else:
        model_name = type(model).__name__
    model = model.to(resolve_device(device))
    stage = stage or F.default_stage(model)
    feats = F.extract_features(model, [r.path for r in records], stage, batch_size=batch_size,
                               cache_dir=cache_dir, progress=progress, size=size)
    by_group = F.features_by_group(feats.pooled, records)
    real_targets = [g for g in groups if not g.startswith("synth:") and g != SOURCE_DOMAIN]
    pseudo = [g for g in groups if g.startswith("synth:")]
    source = SOURCE_DOMAIN if SOURCE_DOMAIN in by_group else None
    if not real_targets:
        raise ConfigError(f"{data_root}: no real target domain found next to the source (need e.g. night_rainy)")
    table = gap_table(by_group, pseudo, real_targets, source, closest_by=closest_by, seed=seed, progress=progress)

    out = Path(out_dir)
    meta = {"stage": stage, "model": model_name, "run": str(run_dir) if run_dir else None, "data": str(data_root),
            "synth": str(synth_root) if synth_root else None, "limit": limit, "split": split, "seed": seed,
            "closest_by": closest_by, "n_per_group": {g: len(v) for g, v in by_group.items()}}
    caption = (f"Feature gap at stage `{stage}` of {model_name} (MMD^2 unbiased, RBF median bandwidth; Frechet "
               f"distance of Gaussian fits; balanced accuracy of a 5-fold linear domain probe and proxy A-distance; "
               f"closest pseudo-domain by {closest_by}). Up to {limit} images per domain, real split "
               f"`{split or 'source train, targets all'}`.")
    tables = [out / "gap_table.csv", out / "gap_table.md", out / "gap_table.json"]
    atomic_write_text(tables[0], table.to_csv(index=False))
    atomic_write_text(tables[1], frame_to_markdown(table, caption, index=False))
    atomic_write_json(tables[2], {"meta": meta, "rows": json.loads(table.to_json(orient="records"))})
    comparison = None
    if compare is not None:
        before = _read_table(compare)
        comparison = compare_gap_tables(before, table)
        tables += [out / "gap_compare.csv", out / "gap_compare.md"]
        atomic_write_text(tables[-2], comparison.to_csv(index=False))
        caption = f"Gap change from {compare} (before) to this analysis (after); negative delta = closer."
        atomic_write_text(tables[-1], frame_to_markdown(comparison, caption, index=False))
    written = []
    if figures:
        written = write_figures(model, records, feats.pooled, table, Path(figures_dir or out / "figures"),
                                stage=stage, comparison=comparison, seed=seed, batch_size=batch_size,
                                size=size, ig_steps=ig_steps, progress=progress)
    return {"table": table, "summary": _summary(table), "stage": stage, "model": model_name,
            "n_images": len(records), "out_dir": out, "tables": tables, "figures": written,
            "comparison": comparison if comparison is not None else pd.DataFrame()}


def _read_table(path):
    """A gap table from a ``gap_table.json`` or ``.csv`` written earlier."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "gap table to compare with not found")
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        return pd.DataFrame(json.loads(path.read_text())["rows"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(path, f"not a gap table written by `drsf gap` ({exc})") from None


def _scene(records, limit_cols: int = 6) -> dict:
    """One scene for the attribution figure: a source image and its synthetic twins (same source id);
    without twins, the source image and the first image of each real target."""
    sources = [r for r in records if r.kind == "real" and r.domain == SOURCE_DOMAIN]
    synth = [r for r in records if r.kind == "synthetic"]
    for src in sources:
        twins = {}
        for r in synth:
            if r.source_id == src.source_id and r.group not in twins:
                twins[r.group] = r.path
        if twins:
            return dict([(src.group, src.path)] + list(twins.items())[:limit_cols - 1])
    scene = {}
    for r in records:
        if r.kind == "real" and r.group not in scene:
            scene[r.group] = r.path
    return dict(list(scene.items())[:limit_cols])


def write_figures(model, records, pooled, table, fig_dir: Path, stage: str, comparison=None, seed: int = 0,
                  batch_size: int = 32, entropy_images: int = 16, size: tuple[int, int] | None = (180, 320),
                  ig_steps: int = 16, progress: bool = True) -> list[Path]:
    """Draw and save every ``drsf gap`` figure; returns the written paths.

    t-SNE and PCA of the pooled features, the gap heatmap, channel entropy (and DFDR gates) per
    domain, attribution across one scene's domains, and the before/after change when ``comparison``
    is given.
    """
    groups = [r.group for r in records]
    n = len(records)
    written = []
    emb = tsne_embed(pooled, seed=seed)
    written.append(save_figure(plot_embedding(emb, groups, title=f"t-SNE of `{stage}` features ({n} images)",
                                              xlabel="t-SNE 1", ylabel="t-SNE 2"), fig_dir / "tsne.png"))
    emb, ratio = pca_embed(pooled, seed=seed, return_variance=True)
    written.append(save_figure(plot_embedding(emb, groups, title=f"PCA of `{stage}` features ({n} images)",
                                              xlabel=f"PC 1 ({ratio[0]:.0%} of variance)",
                                              ylabel=f"PC 2 ({ratio[1]:.0%} of variance)"), fig_dir / "pca.png"))
    metric = table.attrs.get("closest_by", "mmd")
    metric = "proxy_a_distance" if metric == "domain_acc" else metric
    written.append(save_figure(plot_gap_heatmap(gap_matrix(table, metric), metric), fig_dir / "gap_heatmap.png"))

    images_by_group: dict[str, list] = {}
    for r in records:
        if len(images_by_group.setdefault(r.group, [])) < entropy_images:
            images_by_group[r.group].append(r.path)
    stats = channel_stats_by_domain(model, images_by_group, batch_size=batch_size, size=size, progress=progress,
                                    fallback_stage=stage, standardize=True)
    dfdr = any(s["gate"] is not None for s in stats.values())
    what = "DFDR channel entropy" if dfdr else "Channel entropy of standardised feature maps"
    written.append(save_figure(gate_histograms({g: s["entropy"] for g, s in stats.items()}, what="entropy",
                                               title=f"{what} per domain"), fig_dir / "entropy.png"))
    if dfdr:
        written.append(save_figure(gate_histograms({g: s["gate"] for g, s in stats.items()}, what="gate",
                                                   title="DFDR gate values per domain"), fig_dir / "gates.png"))

    scene = {g: F.load_image(p, size) for g, p in _scene(records).items()}
    first = next(iter(scene.values()))
    fn, what = auto_target(model, first, stage)
    try:
        F.resolve_module(model, stage)
        layer, methods = stage, ("gradcam", "integrated_gradients")
    except ConfigError:  # a stage that is no module (e.g. a kit model's "head.0"): gradients only
        layer, methods = None, ("integrated_gradients",)
    with torch.enable_grad():
        maps = attribution_maps(scene, model_fn=fn, layer=layer, methods=methods, steps=ig_steps, progress=progress)
    where = f"; GradCAM at `{layer}`" if layer else ""
    fig = plot_map_grid(scene, maps, title=f"Attribution of the {what}{where}; one colour scale per row")
    written.append(save_figure(fig, fig_dir / "attribution.png"))
    if comparison is not None and len(comparison):
        written.append(save_figure(plot_gap_change(comparison, metric), fig_dir / "gap_change.png"))
    return written
