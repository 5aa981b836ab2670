"""Datasets, the embedded mini-weather benchmark, and data checks.

The dataset classes import torch, so they are loaded on first use (``from drsf_kit.data import
DWDDetection`` works as usual) and ``import drsf_kit`` stays fast.
"""

from __future__ import annotations

import importlib

from drsf_kit.data.classes import (  # noqa: F401
    CITYSCAPES_CLASSES,
    DWD_CLASSES,
    DWD_DOMAINS,
    IGNORE_INDEX,
    SOURCE_DOMAIN,
    TARGET_DOMAINS,
)

# public name -> module that defines it
_LAZY = {
    "DWDDetection": "drsf_kit.data.dwd",
    "PROTOCOLS": "drsf_kit.data.dwd",
    "DEFAULT_PROTOCOL": "drsf_kit.data.dwd",
    "split_for": "drsf_kit.data.dwd",
    "MiniWeatherSegmentation": "drsf_kit.data.cityscapes",
    "CityscapesSegmentation": "drsf_kit.data.cityscapes",
    "GTAVSegmentation": "drsf_kit.data.cityscapes",
    "PairedSynthetic": "drsf_kit.data.paired",
    "REQUIRED_FIELDS": "drsf_kit.data.manifest",
    "validate_row": "drsf_kit.data.manifest",
    "read_manifests": "drsf_kit.data.manifest",
    "append_manifest_row": "drsf_kit.data.manifest",
    "completed_keys": "drsf_kit.data.manifest",
    "map_boxes": "drsf_kit.data.manifest",
    "map_mask": "drsf_kit.data.manifest",
    "row_path": "drsf_kit.data.manifest",
    "Problem": "drsf_kit.data.voc",
    "parse_voc_xml": "drsf_kit.data.voc",
    "CheckReport": "drsf_kit.data.check",
    "check_dataset": "drsf_kit.data.check",
    "format_report": "drsf_kit.data.check",
    "make_mini_weather": "drsf_kit.data.mini_weather",
}

__all__ = ["CITYSCAPES_CLASSES", "DWD_CLASSES", "DWD_DOMAINS", "IGNORE_INDEX", "SOURCE_DOMAIN",
           "TARGET_DOMAINS", "DATASETS", *_LAZY]


def _datasets() -> dict:
    # the dataset classes import torch: loaded here, on first use, so that `import drsf_kit` stays fast
    from drsf_kit.data.cityscapes import CityscapesSegmentation, GTAVSegmentation, MiniWeatherSegmentation
    from drsf_kit.data.dwd import DWDDetection
    from drsf_kit.data.paired import PairedSynthetic

    return {
        "dwd": DWDDetection,
        "mini_weather_seg": MiniWeatherSegmentation,
        "cityscapes": CityscapesSegmentation,
        "gtav": GTAVSegmentation,
        "paired_synthetic": PairedSynthetic,
    }


def __getattr__(name: str):
    # PEP 562: resolve the heavy names on first access and cache them in the module.
    if name == "DATASETS":
        value = _datasets()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'drsf_kit.data' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
