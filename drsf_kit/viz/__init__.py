"""Plots (functions returning a matplotlib Figure) and widgets (functions returning ipywidgets objects).

Import what you need from the sub-modules (``drsf_kit.viz.widgets``, ``drsf_kit.viz.dashboard``,
``drsf_kit.viz.plots``); the names below load them on first use so ``import drsf_kit.viz`` stays light.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ablation_dashboard": "drsf_kit.viz.widgets",
    "mdsf_explorer": "drsf_kit.viz.widgets",
    "twin_explorer": "drsf_kit.viz.widgets",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    """Load ``ablation_dashboard``, ``mdsf_explorer`` and ``twin_explorer`` on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'drsf_kit.viz' has no attribute {name!r}")
