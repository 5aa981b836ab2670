"""Tidy result rows: build them from metric dicts and load them back from run folders.

One row per (run, domain, metric[, class]), as fixed in CONTRIBUTING.md::

    {"task", "variant", "seed", "domain", "split", "protocol", "metric", "value", "step", "run", "class"}

``value`` is a fraction in [0, 1], or ``None`` where the metric is undefined (a class without ground
truth, a class absent from a segmentation set): NaN is not valid JSON, so it is never written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from drsf_kit.errors import ConfigError, DataError
from drsf_kit.utils.io import iter_jsonl

REQUIRED_COLUMNS = ("task", "variant", "seed", "domain", "split", "protocol", "metric", "value", "step", "run")
COLUMNS = REQUIRED_COLUMNS + ("class",)
RESULTS_FILE = "results.jsonl"

# Metric names as fixed in CONTRIBUTING.md.
DETECTION_SUMMARY_METRICS = ("map50_voc07", "ap50_coco", "ap_coco", "ap75_coco", "ece")
SEGMENTATION_SUMMARY_METRICS = ("miou", "pixel_acc")
# The one number per task that summaries, `drsf eval` and the dashboard lead with.
HEADLINE_METRIC = {"det": "map50_voc07", "seg": "miou"}
# Summary metric -> its per-class companion.
PER_CLASS_METRICS = {"map50_voc07": "ap50_voc07", "ap50_coco": "ap50_coco", "miou": "iou"}

# Human descriptions of the evaluation protocols (the split each domain gets is fixed by
# ``drsf_kit.data.dwd.PROTOCOLS``); rows carry the name in ``protocol``, captions print the description.
PROTOCOL_LABELS = {
    "all_images": "targets scored on all their images, train.txt and test.txt together; source on its test split",
    "drsf_code": "daytime_foggy and night_sunny scored on their test split, the rainy targets on all their "
    "images, as the DRSF code does; source on its test split",
}


def _clean(value: Any) -> float | None:
    """A JSON-safe float: NaN / None become None."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _base(task, variant, seed, domain, split, protocol, step, run, extra) -> dict:
    base = {"task": task, "variant": variant, "seed": int(seed), "domain": domain, "split": split,
            "protocol": protocol, "step": None if step is None else int(step), "run": str(run)}
    if extra:
        clash = sorted(set(extra) & set(COLUMNS))
        if clash:
            raise ConfigError(f"extra keys {clash} would overwrite the result row's own columns")
        base.update(extra)
    return base


def _row(base: dict, metric: str, value, cls: str | None) -> dict:
    row = dict(base)
    row.update({"metric": metric, "value": _clean(value), "class": cls})
    return row


def detection_rows(
    result: Mapping, *, task: str = "det", variant: str, seed: int, domain: str, split: str, protocol: str,
    step: int | None, run: str, extra: Mapping | None = None,
) -> list[dict]:
    """Turn an ``evaluate_detections`` dict into tidy rows: summary rows, then per-class rows.

    Keyword args fill the row columns of CONTRIBUTING.md; ``extra`` adds further columns (e.g. the
    backbone) and may not overwrite them.
    """
    if result.get("iou_threshold", 0.5) != 0.5 and "map50_voc07" in result:
        # the row names say "50": a result scored at another IoU would be mislabelled
        raise ConfigError(f"detection result was scored at IoU {result['iou_threshold']}, but rows name AP@0.5")
    base = _base(task, variant, seed, domain, split, protocol, step, run, extra)
    rows = [_row(base, m, result[m], None) for m in DETECTION_SUMMARY_METRICS if m in result]
    for key, metric in (("ap50_voc07", "ap50_voc07"), ("ap50_coco_per_class", "ap50_coco")):
        for cls, value in result.get(key, {}).items():
            rows.append(_row(base, metric, value, cls))
    if not rows:
        raise ConfigError("detection result holds none of the metrics " + ", ".join(DETECTION_SUMMARY_METRICS))
    return rows


def segmentation_rows(
    result: Mapping, *, task: str = "seg", variant: str, seed: int, domain: str, split: str, protocol: str,
    step: int | None, run: str, extra: Mapping | None = None,
) -> list[dict]:
    """Turn a ``SegmentationMeter.compute()`` dict into tidy rows (miou, pixel_acc, per-class iou)."""
    base = _base(task, variant, seed, domain, split, protocol, step, run, extra)
    rows = [_row(base, m, result[m], None) for m in SEGMENTATION_SUMMARY_METRICS if m in result]
    for cls, value in result.get("iou", {}).items():
        rows.append(_row(base, "iou", value, cls))
    if not rows:
        raise ConfigError("segmentation result holds none of the metrics miou, pixel_acc, iou")
    return rows


def read_rows_file(path: str | os.PathLike) -> list[dict]:
    """Tidy result rows from one JSON report (``benchmarks/results/*.json``): a list of rows, or an
    object with the list under ``rows``. Raises ``DataError`` naming the file when it is missing,
    unreadable, not JSON or not such a list."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "no such results file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg}, line {exc.lineno})") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(path, "expected a JSON list of result rows, or an object with such a list under 'rows'")
    return rows


def find_results_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Every results file named by ``paths``: files as given, folders searched recursively."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            hits = sorted(p.rglob(RESULTS_FILE))
            if not hits:
                raise DataError(p, f"no {RESULTS_FILE} found in this folder or below it")
            found.extend(hits)
        else:
            raise DataError(p, "does not exist (expected a run folder, a folder of runs or a results file)")
    unique: dict[Path, None] = {}
    for f in found:
        unique.setdefault(f.resolve(), None)
    return list(unique)


def load_results(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Load tidy result rows from run folders, folders of runs (recursive) or results files.

    A truncated last line (a write cut short) is skipped; a row lacking a required column raises
    ``DataError`` naming the file and the row. The frame gains a ``results_file`` column.
    """
    frames = []
    for path in find_results_files(paths):
        rows = []
        for number, row in enumerate(iter_jsonl(path), start=1):
            if not isinstance(row, dict):
                raise DataError(path, f"row {number} is not a JSON object")
            missing = [c for c in REQUIRED_COLUMNS if c not in row]
            if missing:
                raise DataError(path, f"row {number} lacks required column(s) {missing}")
            value = row["value"]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DataError(path, f"row {number} has a non-numeric value {value!r} (metric {row['metric']})")
            row.setdefault("class", None)
            row["results_file"] = str(path)
            rows.append(row)
        if rows:
            frames.append(pd.DataFrame(rows))
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS) + ["results_file"])
    df = pd.concat(frames, ignore_index=True)
    df["value"] = df["value"].astype(float)  # None -> NaN
    # class holds None for summary rows; keep it as an object column, not NaN-filled floats
    df["class"] = df["class"].astype(object).where(df["class"].notna(), None)
    return df
