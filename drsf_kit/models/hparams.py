"""DRSF hyperparameters: the one place for their defaults, next to their search ranges.

Keys are the field names of ``DFDRHparams`` and ``MDSFHparams``; a variant owns the keys of the
blocks it uses (``source_only`` and ``naive_synth`` have none). Every default marked "our reading"
in ``docs/method.md`` is set here.
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

# Search ranges: ("log_uniform", lo, hi), ("uniform", lo, hi) or ("choice", [options]).
HPARAM_RANGES: dict[str, tuple] = {
    "tau": ("log_uniform", 0.25, 4.0),
    "entropy_mode": ("choice", ["spatial", "domain_posterior"]),
    "reduction": ("choice", [8, 16]),
    "gamma_init": ("uniform", 0.05, 0.5),
    "rho": ("uniform", 0.3, 0.7),
    "reassembly": ("choice", ["residual", "swap"]),
    "w_align": ("log_uniform", 0.1, 10.0),
    "w_collapse": ("log_uniform", 0.1, 10.0),
    "w_rea": ("log_uniform", 0.01, 1.0),
    "alpha": ("log_uniform", 0.1, 2.0),
    "p_mix": ("uniform", 0.25, 0.75),
    "eta_max": ("log_uniform", 0.1, 1.0),
    "disc_hidden": ("choice", [8, 16, 32]),
    "w_adv": ("log_uniform", 0.01, 1.0),
    "disc_input_norm": ("choice", ["rms", "none"]),
}


def normalize_task(task: str) -> str:
    """``"det"``/``"detection"`` -> ``"det"``, ``"seg"``/``"segmentation"`` -> ``"seg"``; else ConfigError."""
    try:
        return TASKS[task]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {task!r}; valid tasks: det, seg") from None


def _task_defaults(task: str) -> dict[str, Any]:
    defaults = {f.name: f.default for f in fields(DFDRHparams)}
    defaults.update({f.name: f.default for f in fields(MDSFHparams)})
    if task == "seg":
        # The mini segmenter has ~1 M parameters and a 160-channel bottleneck: an 8-wide discriminator
        # keeps MDSF under 2% of the model (16 would cost ~2.7%).
        defaults["disc_hidden"] = 8
    return defaults


def hparam_keys(variant: str) -> tuple[str, ...]:
    """The hparam keys ``variant`` uses (those of its blocks)."""
    spec = get_variant(variant)
    keys: tuple[str, ...] = ()
    if spec.use_dfdr:
        keys += DFDRHparams.field_names()
    if spec.use_mdsf:
        keys += MDSFHparams.field_names()
    return keys


def default_hparams(variant: str, task: str) -> dict[str, Any]:
    """Default hyperparameters of ``variant`` for ``task`` (a new dict; empty for block-free variants)."""
    task = normalize_task(task)
    defaults = _task_defaults(task)
    return {k: defaults[k] for k in hparam_keys(variant)}


def resolve_hparams(variant: str, task: str, overrides: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Defaults of (variant, task) updated with ``overrides``; a key the variant does not use is an error."""
    hp = default_hparams(variant, task)
    for key, value in dict(overrides or {}).items():
        if key not in hp:
            valid = ", ".join(hp) or "none (this variant has no DRSF blocks)"
            raise ConfigError(f"hparam {key!r} does not apply to variant {variant!r}; valid keys: {valid}")
        hp[key] = value
    return hp


def split_hparams(hp: Mapping[str, Any]) -> tuple[Optional[DFDRHparams], Optional[MDSFHparams]]:
    """Build the block dataclasses from a flat hparam dict (None for a block whose keys are absent)."""
    dfdr_keys = [k for k in DFDRHparams.field_names() if k in hp]
    mdsf_keys = [k for k in MDSFHparams.field_names() if k in hp]
    dfdr = DFDRHparams(**{k: hp[k] for k in dfdr_keys}) if dfdr_keys else None
    mdsf = MDSFHparams(**{k: hp[k] for k in mdsf_keys}) if mdsf_keys else None
    return dfdr, mdsf


def random_hparams(variant: str, task: str, seed: int) -> dict[str, Any]:
    """One draw from ``HPARAM_RANGES`` for the keys of ``variant`` (seeded; for sweeps)."""
    rng = random.Random(seed)
    hp = default_hparams(variant, task)
    for key in hp:
        kind, *args = HPARAM_RANGES[key]
        if kind == "choice":
            hp[key] = rng.choice(args[0])
        elif kind == "uniform":
            hp[key] = rng.uniform(args[0], args[1])
        else:
            hp[key] = math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))
    return hp
