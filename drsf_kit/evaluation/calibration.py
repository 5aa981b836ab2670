"""Calibration of detection confidences: expected calibration error (ECE) and reliability bins.

A detection is *correct* when the VOC matching of ``drsf_kit.evaluation.detection`` calls it a true
positive at the IoU threshold (right class, a free non-difficult box); duplicates and misplaced boxes
are incorrect; detections on difficult boxes are left out, as they are in the AP. The confidence is
the detection score, which must lie in [0, 1]. Bins are equal-width on [0, 1]; a score of exactly 1
falls in the last bin.

``ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from drsf_kit.errors import ConfigError, DataError


def check_probabilities(preds: Mapping[str, Mapping]) -> None:
    """Raise ``DataError`` naming the image when a normalised prediction has a score outside [0, 1]."""
    for image_id, p in preds.items():
        scores = p["scores"]
        bad = np.flatnonzero((scores < 0) | (scores > 1))
        if bad.size:
            raise DataError(
                f"image {image_id}",
                f"score {float(scores[bad[0]])} is outside [0, 1]; calibration needs probabilities as scores",
            )


def reliability_bins(confidences, correct, n_bins: int = 10) -> dict:
    """Per-bin counts, accuracy and mean confidence (lists, NaN for empty bins) plus the bin edges."""
    if int(n_bins) < 1:
        raise ConfigError(f"n_bins must be >= 1, got {n_bins}")
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    hit = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.shape != hit.shape:
        raise DataError("calibration input", f"{conf.size} confidences but {hit.size} correctness flags")
    if conf.size and (not np.isfinite(conf).all() or conf.min() < 0 or conf.max() > 1):
        raise DataError("calibration input", "confidences must be finite and in [0, 1] (use probabilities as scores)")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-open bins [e_i, e_{i+1}), except that 1.0 belongs to the last bin
    index = np.clip(np.floor(conf * n_bins).astype(np.int64), 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    sum_conf = np.bincount(index, weights=conf, minlength=n_bins)
    sum_hit = np.bincount(index, weights=hit, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = np.where(counts > 0, sum_hit / counts, np.nan)
        mean_conf = np.where(counts > 0, sum_conf / counts, np.nan)
    return {
        "edges": edges.tolist(),
        "counts": counts.astype(int).tolist(),
        "accuracy": accuracy.tolist(),
        "confidence": mean_conf.tolist(),
    }


def expected_calibration_error(confidences, correct, n_bins: int = 10) -> float:
    """ECE of confidences against 0/1 correctness; NaN when there is nothing to score."""
    bins = reliability_bins(confidences, correct, n_bins)
    counts = np.asarray(bins["counts"], dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return float("nan")
    gap = np.abs(np.asarray(bins["accuracy"]) - np.asarray(bins["confidence"]))
    return float(np.sum(counts[counts > 0] / total * gap[counts > 0]))
