"""The notebooks' parameters: upper-case names that mean run-config keys, checked by ``config.py``.

``PARAMETER_KEYS`` maps a notebook parameter to its run-config key (``VARIANT`` is ``variant``,
``MAX_STEPS`` is ``train.max_steps`` ...); ``check_parameters`` validates each through the same code a
YAML file goes through, so a bad value gets the same message, prefixed with the parameter's name. The
few parameters that are not run-config keys (``SMOKE``, counts, domain lists) have their own checks.
"""

from __future__ import annotations

import os
from typing import Any

from drsf_kit.errors import ConfigError

# Parameters that are run-config keys: config.py checks them (and the runs use them under that key).
PARAMETER_KEYS = {
    "TASK": "task", "VARIANT": "variant", "SEED": "seed", "DEVICE": "device", "RUNS_DIR": "output_dir",
    "DATA_ROOT": "data.root", "SYNTH_ROOT": "data.synth_root", "PROTOCOL": "data.protocol",
    "MAX_STEPS": "train.max_steps", "BATCH_SOURCE": "train.batch_source", "LR": "train.lr",
    "PRETRAINED_BACKBONE": "model.pretrained_backbone", "INIT_WEIGHTS": "model.init_weights",
}
# list parameters whose every item is a run-config key's value
LIST_KEYS = {"VARIANTS": "variant", "SEEDS": "seed"}
KEEP_CONFIG = {"MAX_STEPS": 0}  # a parameter at this value keeps the config's own (nothing to check)


def _domains() -> tuple[str, ...]:
    from drsf_kit.data.classes import DWD_DOMAINS

    return DWD_DOMAINS


def _as_list(name: str, value: Any) -> list:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        value = [value]
    if not value:
        raise ConfigError(f"parameter {name}={value!r}: expected a non-empty list")
    return list(value)


def _check_key(name: str, key: str, value: Any) -> Any:
    """``value`` as config.py reads it under ``key`` (a nested mapping through ``config_from_dict``)."""
    from drsf_kit.config import config_from_dict

    tree: dict = {}
    node = tree
    *sections, last = key.split(".")
    for section in sections:
        node = node.setdefault(section, {})
    node[last] = value
    try:
        cfg = config_from_dict(tree)
    except ConfigError as exc:
        raise ConfigError(f"parameter {name}={value!r}: {exc}") from None
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"parameter {name}={value!r}: expected True or False")
    return value


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"parameter {name}={value!r}: expected an integer >= 1")
    return value


def _check_jobs(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"parameter {name}={value!r}: expected an integer >= 0 (0: one run per CPU core, one on a GPU)")
    return value


def _check_domains(name: str, value: Any) -> list[str]:
    value, valid = _as_list(name, value), _domains()
    bad = [v for v in value if v not in valid]
    if bad:
        raise ConfigError(f"parameter {name}: unknown value(s) {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
    return value


# notebook-only parameters (no run-config key): their own small checks
OWN_CHECKS = {
    "SMOKE": _check_bool, "REUSE_ANYWAY": _check_bool, "N_IMAGES": _check_count, "JOBS": _check_jobs,
    "DOMAINS": _check_domains, "SYNTH_DOMAINS": _check_domains, "EVAL_DOMAINS": _check_domains,
    "OUTPUT_DIR": lambda name, value: "" if value in (None, "") else str(_check_key(name, "output_dir", value)),
}


def check_parameters(**params: Any) -> dict[str, Any]:
    """Check every known parameter; names must be upper case.

    Run-config parameters (``PARAMETER_KEYS``, ``LIST_KEYS``) are read by ``config.py``; the
    notebook-only ones by ``OWN_CHECKS``. Returns the parameters with normalised values (a comma string
    for a list parameter becomes a list). Raises ``ConfigError`` naming the parameter and the problem.
    """
    out = {}
    for name, value in params.items():
        if name != name.upper() or not name.isidentifier():
            raise ConfigError(f"parameter {name!r}: notebook parameters are UPPER_CASE identifiers")
        if name in PARAMETER_KEYS and not (name in KEEP_CONFIG and value == KEEP_CONFIG[name]):
            checked = _check_key(name, PARAMETER_KEYS[name], value)
            out[name] = value if isinstance(value, (str, os.PathLike)) else checked
        elif name in LIST_KEYS:
            out[name] = [_check_key(name, LIST_KEYS[name], v) for v in _as_list(name, value)]
        elif name in OWN_CHECKS:
            out[name] = OWN_CHECKS[name](name, value)
        else:
            out[name] = value
    return out
