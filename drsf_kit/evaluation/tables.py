"""Results tables: domains as columns, variants (or runs) as rows, metric and protocol in the caption.

Every table carries a caption naming the metric (``METRIC_LABELS``) and the protocol (the rows'
``protocol`` and ``split`` columns). Rows that mix protocols, or splits of one domain, are refused
rather than averaged together. Values are fractions in the frames and percentages with one decimal in
the written files.

Aggregation, in order: for each (run, domain, metric, class) the row of the latest ``step`` is kept;
then each (row key, seed, domain) must come from a single run (two runs would be merged silently
otherwise, so that is an error); ``target_mean`` is the mean over the target domains *within a seed*;
finally seeds are aggregated (``agg``, default the mean) with the sample standard deviation beside it.
A missing value (a domain not scored for one seed, a class without ground truth) stays missing: it is
never averaged over fewer seeds or domains.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from drsf_kit.data.classes import CITYSCAPES_CLASSES, DWD_CLASSES, DWD_DOMAINS, SOURCE_DOMAIN, TARGET_DOMAINS
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.evaluation.results import HEADLINE_METRIC, PER_CLASS_METRICS, PROTOCOL_LABELS
from drsf_kit.utils.io import atomic_write_text

METRIC_LABELS = {
    "map50_voc07": "mAP@0.5, VOC2007 11-point, %",
    "ap50_voc07": "AP@0.5 per class, VOC2007 11-point, %",
    "ap50_coco": "AP50, COCO-style 101-point (pycocotools), %",
    "ap_coco": "AP@[0.5:0.95], COCO-style 101-point (pycocotools), %",
    "ap75_coco": "AP75, COCO-style 101-point (pycocotools), %",
    "ece": "detection expected calibration error (score vs TP at IoU 0.5, equal-width bins), %, lower is better",
    "miou": "mIoU over the classes present, %",
    "pixel_acc": "pixel accuracy, %",
    "iou": "IoU per class, %",
}
# The per-class table written beside a summary whose metric has no per-class rows of its own.
PER_CLASS_FOR = {**PER_CLASS_METRICS, "ap_coco": "ap50_coco", "ap75_coco": "ap50_coco", "ece": "ap50_voc07",
                 "pixel_acc": "iou"}
# The variants in the order of the paper's ablation (docs/method.md, "Ablation variants"); others follow
# alphabetically.
ROW_ORDER = ("source_only", "naive_synth", "naive_consistency", "dfdr", "mdsf", "drsf")
AGGREGATES = {"mean": np.mean, "median": np.median, "max": np.max, "min": np.min}
TARGET_MEAN = "target_mean"
SEEDS = "seeds"
STD = " ±std"


def _label(metric: str) -> str:
    if metric not in METRIC_LABELS:
        raise ConfigError(f"no caption for metric {metric!r}; known metrics: {', '.join(METRIC_LABELS)}")
    return METRIC_LABELS[metric]


def _ordered(values, preferred: Sequence[str]) -> list:
    values = list(dict.fromkeys(values))
    first = [v for v in preferred if v in values]
    return first + sorted((v for v in values if v not in preferred), key=str)


def _select(df: pd.DataFrame, metric: str, task: str | None, per_class: bool) -> pd.DataFrame:
    """Rows of one metric (summary or per-class), latest step per (run, domain, protocol, split, class)."""
    sel = df[df["metric"] == metric]
    if task is not None:
        sel = sel[sel["task"] == task]
    has_class = sel["class"].notna() if "class" in sel else pd.Series(False, index=sel.index)
    sel = sel[has_class] if per_class else sel[~has_class]
    if sel.empty:
        kind = "per-class" if per_class else "summary"
        raise DataError(f"results for metric {metric}", f"no {kind} rows" + (f" for task {task}" if task else ""))
    sel = sel.assign(_step=sel["step"].fillna(-1), _cls=sel["class"] if per_class else "")
    keys = ["run", "domain", "protocol", "split", "_cls"]
    latest = sel.groupby(keys, dropna=False)["_step"].transform("max")
    sel = sel[sel["_step"] == latest].drop_duplicates(keys, keep="last")
    return sel


def _protocol(sel: pd.DataFrame, metric: str) -> tuple[str, dict[str, str]]:
    """The single protocol of ``sel`` and the split of each domain; mixing either is an error."""
    protocols = sorted(sel["protocol"].astype(str).unique())
    if len(protocols) > 1:
        raise DataError(
            f"results for metric {metric}",
            f"rows mix protocols {protocols}; filter first, e.g. df[df.protocol == {protocols[0]!r}]",
        )
    splits = {}
    for domain, group in sel.groupby("domain"):
        found = sorted(group["split"].astype(str).unique())
        if len(found) > 1:
            raise DataError(
                f"results for metric {metric}",
                f"domain {domain} was scored on several splits {found}; filter to one split per domain",
            )
        splits[domain] = found[0]
    return protocols[0], splits


def _per_seed(sel: pd.DataFrame, rows: str, column: str, metric: str) -> pd.DataFrame:
    """Wide frame indexed by (row key, seed) with one column per ``column`` value."""
    if rows not in sel.columns:
        raise ConfigError(f"rows={rows!r} is not a column of the results; columns: {', '.join(map(str, sel.columns))}")
    key = [rows, "seed", column]
    runs = sel.groupby(key, dropna=False)["run"].nunique()
    if (runs > 1).any():
        (r, seed, col) = runs[runs > 1].index[0]
        names = sorted(sel[(sel[rows] == r) & (sel["seed"] == seed) & (sel[column] == col)]["run"].unique())
        raise DataError(
            f"results for metric {metric}",
            f"{rows}={r} seed {seed} {column}={col} comes from several runs {names}; use rows='run' or filter",
        )
    # each (row key, seed, column) is now a single row, so unstacking never merges values
    return sel.set_index(key)["value"].astype(float).unstack(column)


def _across_seeds(wide: pd.DataFrame, rows: str, agg: str, order: Sequence[str]) -> pd.DataFrame:
    """Aggregate the per-seed frame over seeds: value, sample std and the seed count per row."""
    if agg not in AGGREGATES:
        raise ConfigError(f"unknown agg {agg!r}; valid: {', '.join(AGGREGATES)}")
    fn = AGGREGATES[agg]
    out = {}
    for key, group in wide.groupby(level=0, sort=False):
        entry = {}
        for col in wide.columns:
            v = group[col].to_numpy(dtype=float)
            entry[col] = float(fn(v))  # NaN propagates: a missing seed is not averaged away
            entry[col + STD] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
        entry[SEEDS] = len(group)
        out[key] = entry
    table = pd.DataFrame.from_dict(out, orient="index")
    table = table.loc[_ordered(table.index, ROW_ORDER)]
    table.index.name = rows
    columns = list(order)
    if (table[SEEDS] > 1).any():
        columns = [c for col in order for c in (col, col + STD)]
    return table[columns + [SEEDS]]


def _seed_text(table: pd.DataFrame, agg: str) -> str:
    counts = sorted(table[SEEDS].unique())
    if counts == [1]:
        return "One seed per row."
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]} (see the seeds column)"
    return f"{agg.capitalize()} ± sample std over {n} seeds."


def _protocol_text(protocol: str, splits: dict[str, str], order: Sequence[str], source: str | None) -> str:
    described = f"{protocol}, {PROTOCOL_LABELS[protocol]}" if protocol in PROTOCOL_LABELS else protocol
    by_split: dict[str, list[str]] = {}
    for domain in [d for d in order if d in splits]:
        by_split.setdefault(splits[domain], []).append(f"{domain} (source)" if domain == source else domain)
    parts = "; ".join(f"{split}: {', '.join(ds)}" for split, ds in by_split.items())
    return f"Protocol: {described}. Splits scored: {parts}."


def domain_table(
    df: pd.DataFrame,
    metric: str,
    task: str | None = None,
    rows: str = "variant",
    source: str | None = SOURCE_DOMAIN,
    targets: Sequence[str] | None = None,
    agg: str = "mean",
) -> pd.DataFrame:
    """Rows = variants (or runs, or any column), columns = source, targets and ``target_mean``.

    Args:
        df: tidy results (``load_results``).
        metric: a summary metric name (``map50_voc07``, ``ap50_coco``, ``miou``, ...).
        task: keep only rows of this task.
        rows: the column whose values become the table's rows.
        source: the source domain's column (None: no source column).
        targets: target domains in column order (default: every other domain in the rows).
        agg: how seeds are combined: mean, median, max or min.

    Returns:
        Fractions in [0, 1], with ``<column> ±std`` companions when a row has several seeds, a
        ``seeds`` column, and ``attrs`` holding ``caption``, ``metric``, ``protocol``, ``splits``.
    """
    label = _label(metric)
    sel = _select(df, metric, task, per_class=False)
    domains = list(sel["domain"].unique())
    if source is not None and source not in domains:
        raise ConfigError(f"source domain {source!r} has no {metric} rows; domains present: {', '.join(domains)}")
    if targets is None:
        targets = _ordered([d for d in domains if d != source], TARGET_DOMAINS)
    missing = [t for t in targets if t not in domains]
    if missing:
        raise ConfigError(f"target domain(s) {missing} have no {metric} rows; domains present: {', '.join(domains)}")
    columns = ([source] if source is not None else []) + list(targets)
    sel = sel[sel["domain"].isin(columns)]
    protocol, splits = _protocol(sel, metric)
    wide = _per_seed(sel, rows, "domain", metric).reindex(columns=columns)
    order = list(columns)
    if targets:
        wide[TARGET_MEAN] = wide[list(targets)].mean(axis=1, skipna=False)
        order.append(TARGET_MEAN)
    table = _across_seeds(wide, rows, agg, order)
    mean_text = f" {TARGET_MEAN}: mean over the {len(targets)} targets within each seed." if targets else ""
    table.attrs.update({
        "metric": metric, "protocol": protocol, "splits": splits, "value_columns": order,
        "caption": f"{label}. {_protocol_text(protocol, splits, columns, source)}{mean_text} "
        f"{_seed_text(table, agg)}",
    })
    return table


def per_class_table(
    df: pd.DataFrame,
    metric: str,
    domain: str | Sequence[str] | None = None,
    task: str | None = None,
    rows: str = "variant",
    agg: str = "mean",
) -> pd.DataFrame:
    """Rows = (variant, domain), columns = classes plus ``class_mean`` (the mean over classes with a value).

    ``metric`` is a per-class metric (``ap50_voc07``, ``ap50_coco``, ``iou``) or a summary metric that
    has one (``map50_voc07`` -> ``ap50_voc07``). ``domain``: one domain, several, or None for all.
    """
    metric = PER_CLASS_METRICS.get(metric, metric)
    label = _label(metric)
    sel = _select(df, metric, task, per_class=True)
    present = list(sel["domain"].unique())
    if domain is None:
        domains = _ordered(present, DWD_DOMAINS)
    else:
        domains = [domain] if isinstance(domain, str) else list(domain)
    missing = [d for d in domains if d not in present]
    if missing:
        raise ConfigError(f"domain(s) {missing} have no per-class {metric} rows; present: {', '.join(present)}")
    sel = sel[sel["domain"].isin(domains)]
    protocol, splits = _protocol(sel, metric)
    names = list(sel["class"].unique())
    known = next((c for c in (DWD_CLASSES, CITYSCAPES_CLASSES) if set(names) <= set(c)), ())
    classes = [c for c in known if c in names] if known else names
    parts = []
    for d in domains:
        wide = _per_seed(sel[sel["domain"] == d], rows, "class", metric).reindex(columns=classes)
        # classes without ground truth are NaN and are left out of the mean, as in mAP
        wide["class_mean"] = wide[classes].mean(axis=1, skipna=True)
        part = _across_seeds(wide, rows, agg, classes + ["class_mean"])
        part.index = pd.MultiIndex.from_product([part.index, [d]], names=[rows, "domain"])
        parts.append(part)
    table = pd.concat(parts)
    if any(STD in c for c in table.columns):
        # parts with one seed lack std columns; line every part up on the same columns
        table = table[[c for col in classes + ["class_mean"] for c in (col, col + STD)] + [SEEDS]]
    table.attrs.update({
        "metric": metric, "protocol": protocol, "splits": splits, "value_columns": classes + ["class_mean"],
        "caption": f"{label}. {_protocol_text(protocol, splits, domains, None)} class_mean: mean over the "
        f"classes that have a value (a class without ground truth has none). {_seed_text(table, agg)}",
    })
    return table


def _cell(value: float, std: float | None) -> str:
    if value is None or np.isnan(value):
        return "–"
    if std is None or np.isnan(std):
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} ± {100 * std:.1f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    """The kit's one Markdown table writer: a header, a rule (``---`` or ``---:`` per ``align`` "l"/"r") and rows."""
    align = align or ["l"] * len(header)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    lines = ["| " + " | ".join(map(str, header)) + " |", rule]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _plain_cell(value, digits: int) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}g}"
    return str(value)


def frame_to_markdown(frame: pd.DataFrame, caption: str | None = None, digits: int = 4, index: bool = True) -> str:
    """Any DataFrame as a Markdown table (floats to ``digits`` significant digits, missing values blank),
    with the index as the first column unless ``index`` is False and ``caption`` on a line above."""
    header = ([str(frame.index.name or "")] if index else []) + [str(c) for c in frame.columns]
    rows = [([_plain_cell(key, digits)] if index else []) + [_plain_cell(v, digits) for v in values]
            for key, values in zip(frame.index, frame.itertuples(index=False))]
    head = f"{caption}\n\n" if caption else ""
    return head + markdown_table(header, rows)


def to_markdown(table: pd.DataFrame) -> str:
    """A domain table as Markdown with its caption line; values printed as percentages, one decimal."""
    value_cols = table.attrs["value_columns"]
    index_names = [str(n) for n in table.index.names]
    header = index_names + [str(c) for c in value_cols] + [SEEDS]
    rows = []
    for key, row in table.iterrows():
        keys = list(key) if isinstance(key, tuple) else [key]
        cells = [_cell(row[c], row.get(c + STD)) for c in value_cols]
        rows.append([str(k) for k in keys] + cells + [str(int(row[SEEDS]))])
    body = markdown_table(header, rows, align=["l"] * len(index_names) + ["r"] * (len(value_cols) + 1))
    return f"Table: {table.attrs['caption']}\n\n" + body


def to_csv(table: pd.DataFrame) -> str:
    """The table as CSV (percentages, one decimal) after a ``# caption`` line (read with comment='#')."""
    out = table.copy()
    for col in out.columns:
        if col != SEEDS:
            out[col] = (100 * out[col].astype(float)).round(1)
    out.columns = [c.replace(STD, "_std") for c in out.columns]
    return f"# {table.attrs['caption']}\n" + out.to_csv()


def write_tables(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    metric: str,
    name: str | None = None,
    task: str | None = None,
    rows: str = "variant",
    source: str | None = SOURCE_DOMAIN,
    targets: Sequence[str] | None = None,
    agg: str = "mean",
    per_class_metric: str | None = None,
) -> dict[str, Path]:
    """Write ``<name>.md/.csv`` (the domain table) and ``<name>_per_class.md/.csv`` beside it.

    The per-class table covers the same domains and uses ``per_class_metric`` (default: the metric's
    per-class companion, see ``PER_CLASS_FOR``). Returns the four paths keyed ``summary_md``,
    ``summary_csv``, ``per_class_md``, ``per_class_csv``.
    """
    name = name or metric
    summary = domain_table(df, metric, task=task, rows=rows, source=source, targets=targets, agg=agg)
    pc_metric = per_class_metric or PER_CLASS_FOR.get(metric)
    if pc_metric is None:
        raise ConfigError(f"metric {metric!r} has no per-class companion; pass per_class_metric")
    domains = [c for c in summary.attrs["value_columns"] if c != TARGET_MEAN]
    per_class = per_class_table(df, pc_metric, domain=domains, task=task, rows=rows, agg=agg)
    out_dir = Path(out_dir)
    paths = {
        "summary_md": atomic_write_text(out_dir / f"{name}.md", to_markdown(summary)),
        "summary_csv": atomic_write_text(out_dir / f"{name}.csv", to_csv(summary)),
        "per_class_md": atomic_write_text(out_dir / f"{name}_per_class.md", to_markdown(per_class)),
        "per_class_csv": atomic_write_text(out_dir / f"{name}_per_class.csv", to_csv(per_class)),
    }
    return paths


# ------------------------------------------------------------------------------ demo next to the protocol
def protocol_comparison(demo: pd.DataFrame, protocol: pd.DataFrame, task: str, metric: str | None = None,
                        source: str = SOURCE_DOMAIN) -> pd.DataFrame:
    """The demo's runs next to committed protocol results, one row per variant, percentages.

    ``demo`` holds tidy rows of the demo's runs; ``protocol`` the rows of
    ``benchmarks/results/sdg_protocol.json`` (a ``fidelity`` column, ``role`` = ``source_test`` or
    ``target``). Columns ``<label>: source test`` and ``<label>: target mean`` (the mean over the target
    domains within a seed, then over seeds) for ``demo (N seeds)`` and for each protocol fidelity level,
    labelled ``protocol <level> (N seeds)``: the two come from different data builds and schedules, so
    the labels say which is which. A variant the protocol did not run is left blank.
    """
    metric = metric or HEADLINE_METRIC[task]

    def summary(rows: pd.DataFrame, label: str) -> pd.DataFrame:
        rows = rows[(rows["task"] == task) & (rows["metric"] == metric)]
        if "class" in rows:
            rows = rows[rows["class"].isna()]
        if "role" in rows:  # the protocol's validation rows are not test scores
            rows = rows[rows["role"].isin(["source_test", "target"])]
        if "step" in rows and "run" in rows:  # the final evaluation of each run
            rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
        is_source = rows["domain"] == source
        per_seed = pd.DataFrame({
            "source test": rows[is_source].groupby(["variant", "seed"])["value"].mean(),
            "target mean": rows[~is_source].groupby(["variant", "seed"])["value"].mean(),
        })
        out = 100 * per_seed.groupby(level="variant").mean()
        seeds = per_seed.reset_index()["seed"].nunique()
        return out.rename(columns=lambda c: f"{label} ({seeds} seed{'s' * (seeds != 1)}): {c}")

    parts = [summary(demo, "demo")]
    if "fidelity" in protocol:
        for level, rows in protocol.groupby("fidelity", sort=True):
            parts.append(summary(rows, f"protocol {level}"))
    elif not protocol.empty:
        parts.append(summary(protocol, "protocol"))
    table = pd.concat(parts, axis=1)
    table = table.loc[_ordered(table.index, ROW_ORDER)]
    table.index.name = "variant"
    return table.round(1)
