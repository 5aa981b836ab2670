"""The logic behind the widgets, tested without them.

Ablation dashboard: tidy result rows (CONTRIBUTING.md, one per run, domain, metric[, class]) -> the
kit's domain table (``evaluation.tables``) -> displayed table and a bar chart with the seed spread.
The lambda sweep's figure (the sweep itself is computed by ``analysis.explore``). Image rendering lives
in ``viz.images``; ``viz.widgets`` only wires controls to these functions. Nothing here runs a model.
"""

from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from drsf_kit.data.classes import DOMAIN_COLORS, DOMAIN_SHORT, DWD_DOMAINS, SOURCE_DOMAIN
from drsf_kit.errors import DataError
from drsf_kit.evaluation.results import COLUMNS, load_results
from drsf_kit.evaluation.tables import SEEDS, STD, TARGET_MEAN, domain_table, to_markdown
from drsf_kit.models.variants import VARIANTS
from drsf_kit.viz.images import figure_png  # noqa: F401  (the dashboard's PNG bytes)

# Which blocks each ablation variant carries, read from the one VARIANTS dict; the "neither" case maps
# to both block-free variants: with synthetic data (naive_synth) and without (source_only).
VARIANT_BLOCKS = {name: (spec.use_dfdr, spec.use_mdsf) for name, spec in VARIANTS.items()}
VARIANT_ORDER = tuple(VARIANTS)
SUMMARY_COLUMNS = ["variant", "domain", "mean", "std", "n_seeds"]


def variants_for_blocks(dfdr: bool, mdsf: bool, available: Iterable[str] | None = None) -> list[str]:
    """Variants whose blocks match the toggles (both -> drsf, DFDR only -> dfdr, MDSF only -> mdsf,
    neither -> naive_synth, naive_consistency and source_only), restricted to ``available`` when given."""
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
    table = shown.to_html(escape=True, border=0, classes="drsf-table").replace(
        "<thead>", f"<caption>{html.escape(caption)}</caption><thead>", 1
    )
    return TABLE_STYLE + table


# Widget HTML gets no notebook table styling: numbers right-aligned under their headers, light rules.
TABLE_STYLE = (
    "<style>.drsf-table{border-collapse:collapse;font-size:12px}"
    ".drsf-table caption{caption-side:top;text-align:left;padding:4px 0;max-width:60em}"
    ".drsf-table th,.drsf-table td{padding:3px 10px;text-align:right;border-bottom:1px solid #ddd}"
    ".drsf-table tbody th{text-align:left}.drsf-table tbody tr:nth-child(even){background:#f6f6f6}</style>"
)


def table_markdown(table) -> str:
    """The table as Markdown (``evaluation.tables.to_markdown``: caption line, percentages)."""
    return "(no result rows match this selection)\n" if table is None else to_markdown(table)


def seed_note(summary) -> str:
    """How many seeds the bars average: 'one seed (no error bars)', 'mean ± std over 3 seeds', ..."""
    counts = sorted({int(n) for n in summary["n_seeds"].dropna()}) if "n_seeds" in summary else []
    if not counts or counts == [1]:
        return "one seed (no error bars)"
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"mean ± std over {span} seeds"


def seed_spread_figure(summary, metric: str, title: str | None = None):
    """Grouped bars: one group per domain, one bar per variant, error bars = std over seeds (percent).

    The title (``metric`` by default) ends with ``seed_note``; a bar from one seed has no error bar.
    """
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
            yerr=100 * part["std"].to_numpy(dtype=float),  # NaN (one seed): no error bar drawn
            capsize=2,
            color=cmap(VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else i),
            label=variant,
        )
    ax.set_xticks(range(len(domains)))
    # short name over full name: the chart names its domains without the reader looking elsewhere
    ax.set_xticklabels([f"{DOMAIN_SHORT[d]}\n{d}" if d in DOMAIN_SHORT else d for d in domains], fontsize=8)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{title or metric}: {seed_note(summary)}")
    # outside the axes: inside, it covered the tallest bars
    ax.legend(fontsize=8, title="variant", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ MDSF's interpolation
NO_ADVERSARY = "no adversary in this model"


@dataclass(frozen=True)
class FusionReading:
    """What ``model.predict_mixed(image_a, image_b, lam)`` moves, read from the model's MDSF block.

    ``method`` is ``v3`` (twin A's map at ``stage`` takes the channel statistics ``lam * stats(A) +
    (1 - lam) * stats(B)``: the operation v3 training applies to two twins of one source from different
    pseudo-domains), ``v2``/``v1`` (the maps the head reads are mixed, ``lam * z(A) + (1 - lam) * z(B)``)
    ``none`` (a kit model without MDSF: the same head-map mix, which its training never applies) or
    ``mix`` (a model that only implements ``predict_mixed``: read as a head-map mix).
    """

    method: str
    stage: str  # where the mixing happens: a body stage (v3) or "head" (the maps the head reads)

    @property
    def restyles(self) -> bool:
        """True when lambda moves only feature statistics (v3): twin A's content stays, the prediction is A's."""
        return self.method == "v3"

    def formula(self, a: str = "A", b: str = "B") -> str:
        """The mixing as one line, naming the twins."""
        if self.restyles:
            return f"{a}'s {self.stage} map with channel statistics lam * stats({a}) + (1 - lam) * stats({b})"
        return f"z = lam * z({a}) + (1 - lam) * z({b}) on the maps the head reads"

    def lam_axis(self, a: str = "A", b: str = "B") -> str:
        """The x-axis label of a sweep along lambda."""
        zero = f"{a}'s content in {b}'s statistics" if self.restyles else f"{b} alone"
        return f"lambda (1 = {a} alone, 0 = {zero})"

    def title(self, a: str = "A", b: str = "B") -> str:
        """A figure title: which design mixes what."""
        name = {"v3": "MDSF v3 style fusion", "v2": "MDSF v2 soft fusion", "v1": "MDSF v1 soft fusion",
                "none": "feature mixing (no MDSF in this model: its training never mixes)"}.get(self.method, "soft fusion")
        return f"{name}: {self.formula(a, b)}"


def fusion_reading(model) -> FusionReading:
    """How ``model.predict_mixed`` mixes (``FusionReading``), from ``model.mdsf``'s ``method``.

    A kit model whose ``mdsf`` is None reads ``none``; an object without a ``mdsf`` attribute (a stand-in
    implementing ``predict_mixed`` only) reads ``mix``, a head-map mix.
    """
    if not hasattr(model, "mdsf"):
        return FusionReading("mix", "head")
    if model.mdsf is None:
        return FusionReading("none", "head")
    hp = model.mdsf.hparams
    method = str(hp.method)
    return FusionReading(method, str(hp.fuse_stage) if method == "v3" else "head")


def lambda_sweep_figure(sweep, title: str | None = None, fusion: FusionReading | None = None):
    """What the prediction does along lambda, and the discriminator's probabilities when there is one.

    The title and axes name the two twins from ``sweep.attrs`` (set by ``lambda_sweep``) and say what
    lambda mixes (``fusion``, default ``sweep.attrs["fusion"]``, else a head-map mix). Detection sweeps
    show the top score and, on a second axis, the number of boxes above the score threshold (a count,
    not a score); segmentation sweeps show the pixel agreement with twin A alone. A sweep without
    discriminator columns (a model without an adversary) gets one panel and says so in its title,
    instead of an empty or flat posterior.
    """
    from matplotlib.figure import Figure

    fusion = fusion or sweep.attrs.get("fusion") or FusionReading("mix", "head")
    name_a, name_b = sweep.attrs.get("domain_a", "A"), sweep.attrs.get("domain_b", "B")
    prob_columns = [c for c in sweep.columns if c.startswith("p(")]
    if title is None:
        scene = sweep.attrs.get("scene")
        notes = ([f"scene {scene}"] if scene else []) + ([] if prob_columns else [f"{NO_ADVERSARY}: no discriminator posterior"])
        title = fusion.title(name_a, name_b) + ("\n" + "; ".join(notes) if notes else "")
    xlabel = fusion.lam_axis(name_a, name_b)
    fig = Figure(figsize=(10 if prob_columns else 6.2, 4.2), dpi=100)
    if prob_columns:
        left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for column in prob_columns:
            name = column[2:-1]
            left.plot(sweep["lam"], sweep[column], marker=".", label=name, color=DOMAIN_COLORS.get(name))
        left.legend(fontsize=7, title="p(domain)", title_fontsize=7)
        left.set_title("domain discriminator on the mixed features", fontsize=9)
        left.set_ylabel("probability")
        left.set_ylim(0, 1.02)
        panels = (left, right)
    else:
        right = fig.add_subplot(1, 1, 1)
        panels = (right,)
    if "top_score" in sweep.columns:
        line = right.plot(sweep["lam"], sweep["top_score"], marker=".", color="tab:blue", label="top detection score")
        right.set_ylabel("top detection score", color="tab:blue")
        right.set_ylim(0, 1)
        counts = right.twinx()
        threshold = sweep.attrs.get("score_threshold")
        count_label = "boxes" + (f" with score >= {threshold:g}" if threshold is not None else "")
        step = counts.step(sweep["lam"], sweep["boxes"], where="mid", color="tab:orange", label=count_label)
        counts.set_ylabel(count_label, color="tab:orange")
        counts.set_ylim(0, max(1, int(sweep["boxes"].max())) + 1)
        counts.yaxis.get_major_locator().set_params(integer=True)
        right.legend(line + step, [h.get_label() for h in line + step], fontsize=7, loc="lower right")
        right.set_title("detections from the mixed features", fontsize=9)
    elif "agreement_with_a" in sweep.columns:
        label = f"pixels labelled as with {name_a} alone"
        right.plot(sweep["lam"], sweep["agreement_with_a"], marker=".", color="tab:blue", label=label)
        right.set_ylabel(label)
        right.set_ylim(0, 1.02)
        right.legend(fontsize=7, loc="lower right")
        right.set_title("segmentation from the mixed features", fontsize=9)
    for ax in panels:
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
    width = 130 if prob_columns else 80  # characters per title line at this figure's width
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize=9)
    fig.tight_layout()
    return fig


def mixed_features_figure(image_a, image_b, maps_by_lam, basis, names: tuple[str, str] = ("A", "B"),
                          fusion: FusionReading | None = None, scene: str | None = None):
    """Twin A, twin B and the mixed feature map at each lambda, as one readable figure.

    ``maps_by_lam`` maps lambda to a ``[C,h,w]`` feature map; ``basis`` (``images.PcaBasis``, fitted on
    the unmixed maps) turns each into colours, the same for every panel, so colours compare along lambda.
    Every panel has pixel axes (feature maps are stretched onto the image's extent, their cells named in
    the axis label); the legend says which principal component each colour channel shows and its share of
    the variance; the title says what lambda mixes.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from drsf_kit.viz import images

    fusion = fusion or FusionReading("mix", "head")
    name_a, name_b = names
    pictures = [images.to_numpy_image(image_a), images.to_numpy_image(image_b)]
    h, w = pictures[0].shape[:2]
    lams = sorted(maps_by_lam, reverse=True)
    n = 2 + len(lams)
    fig = Figure(figsize=(2.7 * n + 0.6, 2.7 * h / w + 1.9), dpi=100)
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    for ax, picture, label, name in zip(axes, pictures, ("twin A", "twin B"), names):
        ax.imshow(picture, extent=(0, w, h, 0))
        ax.set_title(f"{label}: {name}", fontsize=8, color=DOMAIN_COLORS.get(name, "black"))
        ax.set_xlabel("x (px)", fontsize=7)
    for ax, lam in zip(axes[2:], lams):
        fmap = np.asarray(maps_by_lam[lam])
        ax.imshow(basis.rgb(fmap), extent=(0, w, h, 0), interpolation="nearest")
        ax.set_title(f"mixed features, lambda = {lam:.2f}", fontsize=8)
        ax.set_xlabel(f"x (px; {fmap.shape[2]}x{fmap.shape[1]} feature cells)", fontsize=7)
    for ax in axes:
        ax.tick_params(labelsize=6)
    axes[0].set_ylabel("y (px)", fontsize=7)
    share = getattr(basis, "explained", np.full(3, np.nan))
    handles = [Patch(color=colour, label=f"{channel} = principal component {k + 1} ({share[k]:.0%} of variance)")
               for k, (channel, colour) in enumerate((("red", "tab:red"), ("green", "tab:green"), ("blue", "tab:blue")))]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False,
               title="colours: the feature map projected on 3 principal components of both unmixed maps",
               title_fontsize=7)
    where = f"scene {scene}: " if scene else ""
    fig.suptitle(textwrap.fill(f"{where}{fusion.title(name_a, name_b)}", int(28 * n)), fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig
