"""Paired differences with a 95% interval: the arithmetic behind every "variant A vs B" table.

Runs are paired by seed (same warm start, same data order), so the per-seed difference ``a_s - b_s``
removes the seed's shared luck; the interval is Student's t over those differences:
``mean ± t_{0.975, n-1} · sd / sqrt(n)`` with the sample standard deviation (``ddof=1``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
from scipy import stats

from drsf_kit.errors import ConfigError


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over the shared seeds, its 95% t interval, and what it was computed from."""

    mean: float
    low: float  # NaN with fewer than two pairs: no interval without a spread
    high: float
    sd: float
    n: int
    seeds: tuple

    def as_dict(self) -> dict:
        """Plain dict (for JSON rows and DataFrames)."""
        return asdict(self)


def t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom (scipy)."""
    return float(stats.t.ppf(p, dof))


def paired_difference(a: Mapping, b: Mapping, level: float = 0.95) -> PairedDifference:
    """``a`` and ``b`` map seed -> score; only seeds present in both count (pairs, not two samples).

    Raises ConfigError when no seed is shared.
    """
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        raise ConfigError(f"no seed in common between the two arms (a: {sorted(a)}, b: {sorted(b)})")
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, math.nan, n, seeds)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, sd, n, seeds)


def sign_flip_p(diffs) -> float:
    """Exact two-sided sign-flip permutation p-value of the mean of paired differences: every one of the
    2^n sign patterns (scipy's ``permutation_test``), the test to use when seeds are few."""
    d = np.asarray(diffs, dtype=float)
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided", n_resamples=np.inf)
    return float(res.pvalue)
