"""Datasets, the embedded mini-weather benchmark, and data checks."""

from drsf_kit.data.classes import (  # noqa: F401
    CITYSCAPES_CLASSES,
    DWD_CLASSES,
    DWD_DOMAINS,
    IGNORE_INDEX,
    SOURCE_DOMAIN,
    TARGET_DOMAINS,
)
