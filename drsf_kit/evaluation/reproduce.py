"""Did a rerun reproduce a committed result? Row-by-row comparison of two sets of tidy result rows.

A results file (``benchmarks/results/sdg_protocol.json`` and the like) holds one row per (run, domain,
metric[, class]). A rerun of the same command on other code, another day or another machine gives a
second such file. ``compare_rows`` matches the two row by row on the columns that name a measurement
(task, variant, seed, fidelity, domain, split, metric, class, protocol) and says, per
(task, fidelity, variant), how many rows were matched, how many are bitwise equal or within a tolerance,
the largest absolute difference and which metrics differ; rows present on one side only are counted,
never dropped silently.

Rows come from ``drsf_kit.evaluation.results.read_rows_file`` (the dashboard's reader too). Values
are compared as stored: fractions in [0, 1] for the kit's metrics, ``None`` where a metric is
undefined (two ``None`` are equal; ``None`` against a number is a difference of NaN, counted as unequal).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import pandas as pd

from drsf_kit.errors import DataError

# The columns that name one measurement; "run", "step" and "role" are bookkeeping and left out, so a
# renamed run folder or a report that labels roles differently still matches.
KEY_COLUMNS = ("task", "variant", "seed", "fidelity", "domain", "split", "metric", "class", "protocol")
GROUP_COLUMNS = ("task", "fidelity", "variant")


def _frame(rows: Iterable[Mapping], keys: Sequence[str], side: str) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return pd.DataFrame(columns=[*keys, "value"])
    for key in keys:
        if key not in frame.columns:
            frame[key] = None  # a column one side never wrote (e.g. fidelity in pre-protocol rows)
    if "value" not in frame.columns:
        raise DataError(side, "its rows have no 'value' column")
    # None and NaN in a key column both mean "not applicable": make them one hashable token
    frame = frame[[*keys, "value"]].copy()
    for key in keys:
        frame[key] = frame[key].map(lambda v: "∅" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
    dupes = frame.duplicated(list(keys), keep=False)
    if dupes.any():
        first = frame[dupes].iloc[0]
        raise DataError(side, "its rows name the same measurement twice, e.g. "
                        + ", ".join(f"{k}={first[k]}" for k in keys))
    return frame


def _difference(old, new) -> float:
    old_none = old is None or (isinstance(old, float) and math.isnan(old))
    new_none = new is None or (isinstance(new, float) and math.isnan(new))
    if old_none and new_none:
        return 0.0
    if old_none or new_none:
        return math.nan
    return abs(float(new) - float(old))


def compare_rows(old: Iterable[Mapping], new: Iterable[Mapping], keys: Sequence[str] = KEY_COLUMNS,
                 group: Sequence[str] = GROUP_COLUMNS, names: tuple[str, str] = ("old", "new"),
                 atol: float = 0.0) -> pd.DataFrame:
    """One row per group: ``matched``, ``equal`` (bitwise), ``close`` (within ``atol``), ``max_abs_diff``
    over matched rows (NaN when a value is undefined on one side only), ``differing`` (the metrics with
    a difference above ``atol``, comma-separated), ``only_old`` and ``only_new`` (rows without a
    partner). Sorted by the group columns. ``names`` label the two sides in errors (the script passes
    the file paths)."""
    a = _frame(old, keys, str(names[0]))
    b = _frame(new, keys, str(names[1]))
    merged = a.merge(b, on=list(keys), how="outer", suffixes=("_old", "_new"), indicator=True)
    out = []
    for name, part in merged.groupby(list(group), sort=True, dropna=False):
        both = part[part["_merge"] == "both"]
        diffs = [_difference(o, n) for o, n in zip(both["value_old"], both["value_new"])]
        far = sorted({m for m, d in zip(both["metric"], diffs) if not d <= atol})  # NaN counts as far
        row = dict(zip(group, name if isinstance(name, tuple) else (name,)))
        row.update(matched=len(both),
                   equal=sum(1 for d in diffs if d == 0.0),  # |new - old| is 0 only for equal floats
                   close=sum(1 for d in diffs if d <= atol),
                   max_abs_diff=(math.nan if any(math.isnan(d) for d in diffs) else max(diffs, default=0.0)),
                   differing=",".join(map(str, far)),
                   only_old=int((part["_merge"] == "left_only").sum()),
                   only_new=int((part["_merge"] == "right_only").sum()))
        out.append(row)
    return pd.DataFrame(out, columns=[*group, "matched", "equal", "close", "max_abs_diff", "differing",
                                      "only_old", "only_new"])


def reproduced(table: pd.DataFrame) -> bool:
    """True when every measurement was matched and every matched value is within the table's tolerance
    (bitwise equal with the default ``atol=0``)."""
    return bool(len(table)) and bool((table["close"] == table["matched"]).all()
                                     and (table["only_old"] == 0).all() and (table["only_new"] == 0).all())
