"""The logic behind the widgets, tested without them.

Ablation dashboard: tidy result rows (CONTRIBUTING.md, one per run, domain, metric[, class]) -> the
kit's domain table (``evaluation.tables``) -> displayed table and a bar chart with the seed spread.
The lambda sweep's figure (the sweep itself is computed by ``analysis.explore``). Image rendering lives
in ``viz.images``; ``viz.widgets`` only wires controls to these functions. Nothing here runs a model.
"""

from __future__ import annotations

import html
from typing import Iterable

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


def lambda_sweep_figure(sweep, title: str | None = None):
    """Discriminator probabilities against lambda (left) and what the prediction does (right).

    The title and axes name the two domains from ``sweep.attrs`` (set by ``lambda_sweep``). Detection
    sweeps show the top score on the left axis of the right panel and the number of boxes above the
    score threshold on a second axis (they are a count, not a score); segmentation sweeps show the
    pixel agreement with image A alone.
    """
    from matplotlib.figure import Figure

    name_a, name_b = sweep.attrs.get("domain_a", "A"), sweep.attrs.get("domain_b", "B")
    title = title or f"MDSF soft fusion: z = lam * z({name_a}) + (1 - lam) * z({name_b})"
    xlabel = f"lambda (0 = {name_b} alone, 1 = {name_a} alone)"
    fig = Figure(figsize=(10, 3.8), dpi=100)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    prob_columns = [c for c in sweep.columns if c.startswith("p(")]
    for column in prob_columns:
        name = column[2:-1]
        left.plot(sweep["lam"], sweep[column], marker=".", label=name, color=DOMAIN_COLORS.get(name))
    if prob_columns:
        left.legend(fontsize=7)
    else:
        left.text(0.5, 0.5, "no discriminator (variant without MDSF)", ha="center", transform=left.transAxes)
    left.set_title("domain discriminator on the mixed features", fontsize=9)
    left.set_ylabel("probability")
    if "top_score" in sweep.columns:
        right.plot(sweep["lam"], sweep["top_score"], marker=".", color="tab:blue", label="top detection score")
        right.set_ylabel("top detection score", color="tab:blue")
        right.set_ylim(0, 1)
        counts = right.twinx()
        threshold = sweep.attrs.get("score_threshold")
        count_label = "boxes" + (f" with score >= {threshold:g}" if threshold is not None else "")
        counts.step(sweep["lam"], sweep["boxes"], where="mid", color="tab:orange", label=count_label)
        counts.set_ylabel(count_label, color="tab:orange")
        counts.set_ylim(0, max(1, int(sweep["boxes"].max())) + 1)
        counts.yaxis.get_major_locator().set_params(integer=True)
        right.set_title("detections from the mixed features", fontsize=9)
    elif "agreement_with_a" in sweep.columns:
        right.plot(sweep["lam"], sweep["agreement_with_a"], marker=".", color="tab:blue")
        right.set_ylabel(f"pixels labelled as with {name_a} alone")
        right.set_ylim(0, 1.02)
        right.set_title("segmentation from the mixed features", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
