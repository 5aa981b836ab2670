"""DRSF hyperparameters: the one place for their defaults, next to their search ranges.

Keys are the field names of ``DFDRHparams`` and ``MDSFHparams``; a variant owns the keys of the
blocks it uses (``source_only`` has none; ``naive_consistency`` owns ``w_cons``; every variant that trains
on twins owns ``twins_per_source``).
Every default marked "our reading" in ``docs/method.md`` is set here.

``method`` selects the design: ``v3`` (default since the v3 design arms, docs/method.md section 0b),
``v2``, or ``v1``, the first reading, whose defaults are ``V1_DEFAULTS``. The block dataclasses' field
defaults are v2's; ``V3_DEFAULTS`` and ``V1_DEFAULTS`` hold what the other designs change. A model
ignores the keys its design does not read (it carries them with their v2 defaults).

A run records its method: ``pin_method`` writes the resolved one into the run folder's config. A run
folder without one was written before v3 became the default and was trained with ``LEGACY_METHOD``.
"""

from __future__ import annotations

import math
import random
from dataclasses import fields
from typing import Any, Mapping, Optional

from drsf_kit.errors import ConfigError
from drsf_kit.models.dfdr import DFDRHparams
from drsf_kit.models.mdsf import MDSFHparams
from drsf_kit.models.variants import get_variant

TASKS = {"det": "det", "detection": "det", "seg": "seg", "segmentation": "seg"}

# The first reading's defaults (``method: v1``), exactly the values its code shipped with.
V1_DEFAULTS: dict[str, Any] = {
    "entropy_mode": "spatial", "split": "soft", "w_align": 1.0, "alpha": 0.4, "p_mix": 0.5, "eta_max": 1.0, "w_adv": 0.1,
    "twins_per_source": 1, "fuse_stage": "none", "fuse_head": False, "adv_warmup": 0.0, "disc_lr_mult": 1.0,
}
# v3 (``method: v3``): soft fusion in place, in feature-statistics space, at a shallow stage (no added
# rows, no head fusion); no adversary unless w_adv > 0 (docs/method.md: it was inert in detection at
# ldm_gap and cost source accuracy in segmentation). DFDR keeps the v2 block, on every path to the head.
V3_DEFAULTS: dict[str, Any] = {"fuse_stage": "layer1", "fuse_head": False, "w_adv": 0.0}
# naive_consistency's one key: weight of the paired twin-consistency loss.
CONSISTENCY_DEFAULTS: dict[str, Any] = {"w_cons": 1.0}
# Every variant that trains on twins draws `twins_per_source` of them per source image, each from a
# different pseudo-domain. MDSF owns the key (v2 default 2); the variants without MDSF own it with
# default 1, so `naive_synth` with `twins_per_source: 2` is naive training on the twins MDSF sees.
SYNTH_DEFAULTS: dict[str, Any] = {"twins_per_source": 1}

# The design a config without ``method`` gets: v3, the one the v3 design arms chose on training-domain
# validation (configs/protocol/det_v3_arms.yaml, docs/method.md section 0b).
DEFAULT_METHOD = "v3"
# The design of a run folder whose config holds no ``method``: the kit's default before v3 (such folders
# were written before the kit recorded the method in every run it starts).
LEGACY_METHOD = "v2"

# Search ranges: ("log_uniform", lo, hi), ("uniform", lo, hi) or ("choice", [options]). Ranges of the
# v2 design, the one the searches tuned (a search of method v1 fixes "method" to v1 and draws the same keys).
HPARAM_RANGES: dict[str, tuple] = {
    "method": ("choice", ["v2"]),
    "split": ("choice", ["topk", "soft"]),
    "twins_per_source": ("choice", [2, 3]),
    "fuse_stage": ("choice", ["layer1", "layer2", "none"]),
    "fuse_head": ("choice", [True, False]),
    "adv_warmup": ("uniform", 0.1, 0.4),
    "disc_lr_mult": ("log_uniform", 1.0, 30.0),
    "disc_labels": ("choice", ["balanced", "binary"]),
    "disc_arch": ("choice", ["stats", "conv"]),
    "adv_objective": ("choice", ["confusion", "reversal"]),
    "extrapolate": ("uniform", 0.0, 0.5),
    "adv_stage": ("choice", ["layer1", "layer2"]),
    "disc_cells": ("choice", [1, 2, 4]),
    "w_cons": ("log_uniform", 0.1, 10.0),
    "tau": ("log_uniform", 0.25, 4.0),
    "entropy_mode": ("choice", ["zscore", "domain_posterior"]),
    "reduction": ("choice", [8, 16]),
    "gamma_init": ("uniform", 0.05, 0.5),
    "rho": ("uniform", 0.3, 0.7),
    "reassembly": ("choice", ["residual", "swap"]),
    "w_align": ("log_uniform", 0.1, 10.0),
    "w_collapse": ("log_uniform", 0.1, 10.0),
    "w_rea": ("log_uniform", 0.01, 1.0),
    "alpha": ("uniform", 1.0, 4.0),
    "p_mix": ("uniform", 0.25, 1.0),
    "eta_max": ("log_uniform", 0.01, 0.3),
    "disc_hidden": ("choice", [8, 16, 32]),
    "w_adv": ("log_uniform", 0.1, 3.0),
    "disc_input_norm": ("choice", ["rms", "none"]),
}


def normalize_task(task: str) -> str:
    """``"det"``/``"detection"`` -> ``"det"``, ``"seg"``/``"segmentation"`` -> ``"seg"``; else ConfigError."""
    try:
        return TASKS[task]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {task!r}; valid tasks: det, seg") from None


METHODS = ("v3", "v2", "v1")


def _block_defaults(variant: str, task: str, method: str) -> list[dict[str, Any]]:
    """The default tables of the blocks ``variant`` uses, in order (DFDR, MDSF, consistency, twins).

    Each block owns its keys; ``method`` is the one key DFDR and MDSF share (same value in both).
    """
    if method not in METHODS:
        raise ConfigError(f"hparam method {method!r} is unknown; valid: {', '.join(METHODS)}")
    spec = get_variant(variant)

    def table(cls) -> dict[str, Any]:
        out = {f.name: f.default for f in fields(cls)}
        out["method"] = method
        if method == "v1":
            out.update({k: v for k, v in V1_DEFAULTS.items() if k in out})
        if method == "v3":
            out.update({k: v for k, v in V3_DEFAULTS.items() if k in out})
        if task == "seg" and "disc_hidden" in out:
            # The mini segmenter has ~1 M parameters and a 160-channel bottleneck: an 8-wide discriminator
            # keeps MDSF under 2% of the model (16 would cost ~2.7%).
            out["disc_hidden"] = 8
        return out

    blocks = []
    if spec.use_dfdr:
        blocks.append(table(DFDRHparams))
    if spec.use_mdsf:
        blocks.append(table(MDSFHparams))  # owns twins_per_source (v2 default 2; v1 pairs one twin)
    if spec.use_consistency:
        blocks.append(dict(CONSISTENCY_DEFAULTS))
    if spec.use_synth and not spec.use_mdsf:
        blocks.append(dict(SYNTH_DEFAULTS))
    return blocks


def hparam_keys(variant: str) -> tuple[str, ...]:
    """The hparam keys ``variant`` uses (those of its blocks)."""
    return tuple(default_hparams(variant, "det"))


def default_hparams(variant: str, task: str, method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """Default hyperparameters of ``variant`` for ``task`` (a new dict; empty for source_only).

    ``method="v2"`` gives v2's defaults, ``method="v1"`` the first reading's (``V1_DEFAULTS``).
    """
    out: dict[str, Any] = {}
    for block in _block_defaults(variant, normalize_task(task), method):
        out.update({k: v for k, v in block.items() if k not in out})
    return out


def resolve_hparams(variant: str, task: str, overrides: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Defaults of (variant, task) updated with ``overrides``; a key the variant does not use is an error."""
    overrides = dict(overrides or {})
    method = overrides.get("method", DEFAULT_METHOD)
    hp = default_hparams(variant, task, method if "method" in hparam_keys(variant) else DEFAULT_METHOD)
    for key, value in overrides.items():
        if key not in hp:
            valid = ", ".join(hp) or "none (this variant has no DRSF blocks)"
            raise ConfigError(f"hparam {key!r} does not apply to variant {variant!r}; valid keys: {valid}")
        hp[key] = value
    return hp


def pin_method(variant: str, overrides: Optional[Mapping[str, Any]], method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """``overrides`` with ``method`` set when ``variant`` has DRSF blocks and they name none (a new dict).

    A run pins ``DEFAULT_METHOD`` before its config is saved, so the folder rebuilds the same model after
    the kit's default changes; reading a folder saved without one pins ``LEGACY_METHOD``.
    """
    out = dict(overrides or {})
    if "method" not in out and "method" in hparam_keys(variant):
        out["method"] = method
    return out


def split_hparams(hp: Mapping[str, Any]) -> tuple[Optional[DFDRHparams], Optional[MDSFHparams]]:
    """Build the block dataclasses from a flat hparam dict (None for a block whose keys are absent)."""
    dfdr_keys = [k for k in DFDRHparams.field_names() if k in hp]
    mdsf_keys = [k for k in MDSFHparams.field_names() if k in hp]
    dfdr = DFDRHparams(**{k: hp[k] for k in dfdr_keys}) if any(k != "method" for k in dfdr_keys) else None
    mdsf = MDSFHparams(**{k: hp[k] for k in mdsf_keys}) if any(k != "method" for k in mdsf_keys) else None
    return dfdr, mdsf


def random_hparams(variant: str, task: str, seed: int, keys: Optional[list[str]] = None,
                   method: str = "v2") -> dict[str, Any]:
    """One draw from ``HPARAM_RANGES`` for the keys of ``variant`` (seeded; for sweeps).

    ``keys`` limits the draw to those keys (e.g. one block's); the others keep ``method``'s defaults
    (v2's by default: the ranges are v2's).
    """
    rng = random.Random(seed)
    hp = default_hparams(variant, task, method)
    for key in hp:
        if keys is not None and key not in keys:
            continue
        kind, *args = HPARAM_RANGES[key]
        if kind == "choice":
            hp[key] = rng.choice(args[0])
        elif kind == "uniform":
            hp[key] = rng.uniform(args[0], args[1])
        else:
            hp[key] = math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))
    return hp
