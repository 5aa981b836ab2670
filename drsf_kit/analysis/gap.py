"""Distances between feature distributions: MMD, Frechet distance, domain-classifier accuracy.

``gap_table`` measures every (pseudo-domain, real target) pair, plus the source against every
target as the reference a useful pseudo-domain should beat, and names the closest pseudo-domain
per real target. Its numbers do not depend on the features' scale: the Frechet distance is taken on
features standardised by the real target's statistics (per dimension) and divided by the dimension,
and ``frechet_vs_source`` divides it by the source-to-target value. The domain probe reports, next to
its accuracy (which reaches 1.0 as soon as two domains are linearly separable), its held-out log-loss
and mean margin, which keep growing with the separation. Measuring the same images with two models (before / after DFDR+MDSF training)
gives two tables; ``compare_gap_tables`` puts them side by side.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from drsf_kit.errors import ConfigError, DataError

METRICS = ("mmd", "frechet", "domain_acc")
# Lower is closer for every distance column; domain_acc is closest at 0.5 (chance), so it ranks by PAD.
_RANK_COLUMN = {"mmd": "mmd", "frechet": "frechet", "domain_acc": "proxy_a_distance"}


def check_features(x, name: str) -> np.ndarray:
    """Validate one feature matrix: 2-D, at least 2 rows, finite. Returns float64."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(name, f"features are not numeric ({exc})") from None
    if arr.ndim != 2:
        raise DataError(name, f"features must be a 2-D [samples, dims] array, got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise DataError(name, f"needs at least 2 samples, got {arr.shape[0]}")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise DataError(name, f"{len(rows)} feature rows contain NaN or inf (first: row {rows[0]})")
    return arr


def _pair(x, y, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    a, b = check_features(x, names[0]), check_features(y, names[1])
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"feature dimensions differ: {names[0]} has {a.shape[1]}, {names[1]} has {b.shape[1]} "
                          "(extract both at the same stage of the same model)")
    return a, b


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)  # rounding can make tiny distances negative


def median_bandwidth(x, y, max_points: int = 1000, seed: int = 0) -> float:
    """Median-heuristic RBF bandwidth: the median pairwise distance in the pooled sample."""
    z = np.concatenate([np.asarray(x, np.float64), np.asarray(y, np.float64)])
    if len(z) > max_points:  # the median is stable long before all pairs are seen
        z = z[np.random.default_rng(seed).choice(len(z), max_points, replace=False)]
    d = _sq_dists(z, z)[np.triu_indices(len(z), k=1)]
    med = float(np.median(d))
    if med <= 0.0:  # more than half the points coincide: fall back to the mean distance
        med = float(d.mean())
    return float(np.sqrt(med)) if med > 0 else 1.0


def mmd(x, y, bandwidth: float | None = None, max_samples: int | None = 2000, seed: int = 0) -> float:
    """Unbiased squared MMD between samples ``x`` [m, d] and ``y`` [n, d] with an RBF kernel.

    k(a, b) = exp(-||a - b||^2 / (2 sigma^2)), sigma from the median heuristic on the pooled sample
    unless ``bandwidth`` is given. The U-statistic is unbiased, so it can be slightly negative when
    both samples come from one distribution. Samples above ``max_samples`` are subsampled (seeded).
    """
    a, b = _pair(x, y, ("x", "y"))
    rng = np.random.default_rng(seed)
    if max_samples is not None:
        if len(a) > max_samples:
            a = a[rng.choice(len(a), max_samples, replace=False)]
        if len(b) > max_samples:
            b = b[rng.choice(len(b), max_samples, replace=False)]
    sigma = float(bandwidth) if bandwidth is not None else median_bandwidth(a, b, seed=seed)
    if sigma <= 0:
        raise ConfigError(f"mmd: bandwidth must be positive, got {sigma}")
    gamma = 1.0 / (2.0 * sigma * sigma)
    kxx, kyy, kxy = (np.exp(-gamma * _sq_dists(a, a)), np.exp(-gamma * _sq_dists(b, b)),
                     np.exp(-gamma * _sq_dists(a, b)))
    m, n = len(a), len(b)
    # U-statistic: the diagonal (k(x, x) = 1) is left out of the within-sample terms.
    term_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def _trace_sqrt_product_samples(a: np.ndarray, b: np.ndarray) -> float:
    """tr((C_a C_b)^(1/2)) from the samples, exact: the nuclear norm of A B^T / sqrt((m-1)(n-1)).

    With A, B the centred samples, C_a C_b = A^T A B^T B / k shares its non-zero eigenvalues with
    (A B^T)(A B^T)^T / k, the squared singular values of A B^T over k. An m x n problem instead of d x d.
    """
    ca, cb = a - a.mean(0), b - b.mean(0)
    sv = np.linalg.svd(ca @ cb.T, compute_uv=False)
    return float(sv.sum() / np.sqrt((len(a) - 1) * (len(b) - 1)))


def frechet_distance(x, y, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to ``x`` and ``y`` (the FID formula).

    ||mu_x - mu_y||^2 + tr(C_x + C_y - 2 (C_x C_y)^(1/2)), with ``scipy.linalg.sqrtm`` and FID's guards:
    ``eps`` is added to both diagonals when the root is not finite, and a small imaginary part from
    rounding is dropped. With fewer samples than dimensions the covariances are singular and
    ``sqrtm`` is slow and inexact; then, or when its residual shows a poor root, the trace is taken
    exactly from the samples (the nuclear norm of the centred cross-product, see
    ``_trace_sqrt_product_samples``). Small samples in many
    dimensions inflate the distance (the sample covariances differ): compare values at equal n.
    """
    from scipy import linalg

    a, b = _pair(x, y, ("x", "y"))
    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu1 - mu2
    if min(len(a), len(b)) <= a.shape[1]:
        # Fewer samples than dimensions: both covariances are singular, where sqrtm is slow and inexact.
        tr_covmean = _trace_sqrt_product_samples(a, b)
        return max(float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_covmean), 0.0)
    prod = c1 @ c2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular products are handled below
        covmean = linalg.sqrtm(prod)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(c1)) * eps
            prod = (c1 + offset) @ (c2 + offset)
            covmean = linalg.sqrtm(prod)
    if np.iscomplexobj(covmean):
        covmean = covmean.real if np.abs(covmean.imag).max() <= 1e-3 * max(1.0, np.abs(covmean).max()) else None
    scale = max(float(np.abs(prod).max()), 1e-300)
    if covmean is None or not np.isfinite(covmean).all() or np.abs(covmean @ covmean - prod).max() > 1e-5 * scale:
        tr_covmean = _trace_sqrt_product_samples(a, b)
    else:
        tr_covmean = float(np.trace(covmean))
    value = float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_covmean)
    return max(value, 0.0)  # the distance is >= 0; rounding can push identical inputs just below


def standardize_by(x, reference) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``reference`` shifted and scaled by the reference's per-dimension mean and std.

    Dimensions that are constant in the reference are scaled by the pooled std of both (or left at 1
    when that is zero too), so no division by zero hides a difference.
    """
    a, ref = _pair(x, reference, ("x", "reference"))
    mean, std = ref.mean(0), ref.std(0)
    pooled = np.concatenate([a, ref]).std(0)
    scale = np.where(std > 1e-12, std, np.where(pooled > 1e-12, pooled, 1.0))
    return (a - mean) / scale, (ref - mean) / scale


def domain_classifier_accuracy(x, y, folds: int = 5, seed: int = 0, C: float = 1.0) -> dict:
    """Cross-validated linear probe telling ``x`` from ``y``; ~0.5 means the domains are indistinguishable.

    A logistic regression on standardised features, scored on held-out folds. Returns ``accuracy``
    (balanced, so unequal sample sizes do not inflate it), ``accuracy_std`` over folds, ``folds``, the
    proxy A-distance ``2 (1 - 2 err)`` with err = 1 - accuracy (Ben-David et al.), and two numbers that
    do not saturate when the domains are separable: ``log_loss``, the held-out cross-entropy of the
    probe's probabilities (balanced by class; log 2 = 0.693 at chance, falling towards 0 as the domains
    part), and ``margin``, the mean held-out logit on the correct side of the boundary (0 at chance,
    growing with the separation; negative when the probe is wrong on average).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a, b = _pair(x, y, ("x", "y"))
    k = min(int(folds), len(a), len(b))
    if k < 2:
        raise DataError("domain_classifier_accuracy", f"needs >= 2 samples per side for {folds} folds, "
                        f"got {len(a)} and {len(b)}")
    z = np.concatenate([a, b])
    labels = np.r_[np.zeros(len(a), int), np.ones(len(b), int)]
    # liblinear: an order of magnitude faster than lbfgs on these small, wide problems.
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, solver="liblinear", max_iter=2000,
                                                               class_weight="balanced"))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    scores, logits = [], np.zeros(len(z))
    for train, test in cv.split(z, labels):
        probe.fit(z[train], labels[train])
        logits[test] = probe.decision_function(z[test])
        scores.append(balanced_accuracy_score(labels[test], (logits[test] > 0).astype(int)))
    acc = float(np.mean(scores))
    signed = np.where(labels == 1, logits, -logits)  # > 0: the held-out point is on its own side
    weight = np.where(labels == 1, 0.5 / len(b), 0.5 / len(a))  # each domain counts half
    log_loss = float(np.sum(weight * np.logaddexp(0.0, -signed)))  # -log sigmoid(signed logit)
    return {"accuracy": acc, "accuracy_std": float(np.std(scores)), "folds": k,
            "proxy_a_distance": 2.0 * (1.0 - 2.0 * (1.0 - acc)), "log_loss": log_loss,
            "margin": float(np.sum(weight * signed))}


def gap_table(features_by_domain: Mapping[str, np.ndarray], pseudo_domains: Sequence[str],
              real_targets: Sequence[str], source: str | None = None, metrics: Sequence[str] = METRICS,
              closest_by: str = "mmd", seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """One row per (real target, compared domain): every pseudo-domain, and the source as reference.

    Args:
        features_by_domain: ``{name: [n, d] features}`` (same stage and model for all).
        pseudo_domains: names of the synthetic domains to compare with each real target.
        real_targets: names of the real target domains.
        source: name of the real source domain (a reference row per target), or None.
        metrics: any of ``mmd``, ``frechet``, ``domain_acc``.
        closest_by: the metric that picks ``closest_pseudo_domain`` per target.

    Returns:
        DataFrame with ``target, domain, kind (pseudo|source), n_target, n_domain``, the metric
        columns, ``closest_pseudo_domain`` (per target) and ``closer_than_source`` (the pseudo-domain
        is closer to the target than the source is). ``frechet`` is the Frechet distance per feature
        dimension between the two sets standardised by the target's mean and std (scale-free), and
        ``frechet_vs_source`` is it over the source-to-target value (below 1: closer than the source);
        ``domain_acc`` adds ``proxy_a_distance``, ``domain_logloss`` and ``domain_margin``.
    """
    from tqdm.auto import tqdm

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown gap metrics {unknown}; valid: {', '.join(METRICS)}")
    if closest_by not in metrics:
        raise ConfigError(f"closest_by={closest_by!r} must be one of the computed metrics {list(metrics)}")
    names = list(pseudo_domains) + list(real_targets) + ([source] if source else [])
    missing = [n for n in names if n not in features_by_domain]
    if missing:
        raise ConfigError(f"no features for {missing}; have: {', '.join(features_by_domain)}")
    if not real_targets:
        raise ConfigError("gap_table needs at least one real target domain")
    feats = {n: check_features(features_by_domain[n], f"features[{n}]") for n in names}
    dims = {n: f.shape[1] for n, f in feats.items()}
    if len(set(dims.values())) > 1:
        raise ConfigError(f"feature dimensions differ between domains: {dims}")

    pairs = [(t, p, "pseudo") for t in real_targets for p in pseudo_domains]
    pairs += [(t, source, "source") for t in real_targets] if source else []
    rows = []
    for target, other, kind in tqdm(pairs, desc="gap pairs", disable=not progress, leave=False):
        ft, fo = feats[target], feats[other]
        row = {"target": target, "domain": other, "kind": kind, "n_target": len(ft), "n_domain": len(fo)}
        if "mmd" in metrics:
            row["mmd"] = mmd(ft, fo, seed=seed)
        if "frechet" in metrics:
            # standardised by the target: a feature's scale (2.5e-07 or 1e3) no longer sets the value
            zo, zt = standardize_by(fo, ft)
            row["frechet"] = frechet_distance(zt, zo) / ft.shape[1]
        if "domain_acc" in metrics:
            probe = domain_classifier_accuracy(ft, fo, seed=seed)
            row["domain_acc"], row["proxy_a_distance"] = probe["accuracy"], probe["proxy_a_distance"]
            row["domain_logloss"], row["domain_margin"] = probe["log_loss"], probe["margin"]
        rows.append(row)
    table = pd.DataFrame(rows)
    col = _RANK_COLUMN[closest_by]
    table["closest_pseudo_domain"] = None
    table["closer_than_source"] = pd.array([pd.NA] * len(table), dtype="boolean")
    for target, grp in table.groupby("target", sort=False):
        pseudo = grp[grp["kind"] == "pseudo"]
        if len(pseudo):
            table.loc[grp.index, "closest_pseudo_domain"] = pseudo.loc[pseudo[col].idxmin(), "domain"]
        ref = grp[grp["kind"] == "source"]
        if len(ref) and len(pseudo):
            table.loc[pseudo.index, "closer_than_source"] = pseudo[col] < float(ref[col].iloc[0])
    if "frechet" in metrics:  # the source-to-target distance as each target's yardstick
        reference = table[table["kind"] == "source"].set_index("target")["frechet"]
        table["frechet_vs_source"] = table["frechet"] / table["target"].map(reference)
    table.attrs["closest_by"] = closest_by
    return table


def closest_pseudo_domains(table: pd.DataFrame) -> dict[str, str | None]:
    """``{real target: closest pseudo-domain}`` from a ``gap_table``."""
    return {t: grp["closest_pseudo_domain"].iloc[0] for t, grp in table.groupby("target", sort=False)}


def gap_matrix(table: pd.DataFrame, metric: str = "mmd") -> pd.DataFrame:
    """A ``target x compared domain`` pivot of one metric (the heatmap's data); source column last."""
    if metric not in table.columns:
        raise ConfigError(f"metric {metric!r} not in the gap table; columns: {', '.join(table.columns)}")
    order = list(dict.fromkeys(table.loc[table["kind"] == "pseudo", "domain"]))
    order += list(dict.fromkeys(table.loc[table["kind"] == "source", "domain"]))
    pivot = table.pivot(index="target", columns="domain", values=metric)
    return pivot.reindex(index=list(dict.fromkeys(table["target"])), columns=order)


def compare_gap_tables(before: pd.DataFrame, after: pd.DataFrame, labels: tuple[str, str] = ("before", "after"),
                       ) -> pd.DataFrame:
    """Join two gap tables on (target, domain): ``<metric>_before``, ``<metric>_after``, ``<metric>_delta``.

    A negative delta in a distance means the pair moved closer (the gap shrank) from the first to the
    second model. ``closest_<label>`` columns show whether the closest pseudo-domain changed.
    """
    keys = ["target", "domain"]
    for name, t in zip(labels, (before, after)):
        if not set(keys) <= set(t.columns):
            raise ConfigError(f"the {name} table is not a gap table (needs columns {keys})")
    values = [c for c in ("mmd", "frechet", "frechet_vs_source", "domain_acc", "proxy_a_distance", "domain_logloss",
                          "domain_margin") if c in before and c in after]
    if not values:
        raise ConfigError("the two gap tables share no metric column")
    left = before[keys + ["kind"] + values + ["closest_pseudo_domain"]]
    right = after[keys + values + ["closest_pseudo_domain"]]
    merged = left.merge(right, on=keys, how="inner", suffixes=(f"_{labels[0]}", f"_{labels[1]}"))
    if merged.empty:
        raise ConfigError("the two gap tables have no (target, domain) pair in common")
    for v in values:
        merged[f"{v}_delta"] = merged[f"{v}_{labels[1]}"] - merged[f"{v}_{labels[0]}"]
    merged = merged.rename(columns={f"closest_pseudo_domain_{lab}": f"closest_{lab}" for lab in labels})
    return merged
