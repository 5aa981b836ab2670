"""drsf_kit: single-domain generalization with synthetic data (DRSF: DFDR + MDSF).

Sub-packages: ``data`` (datasets, the embedded mini-weather benchmark, checks), ``synth``
(pseudo-target domain generators), ``models`` (DFDR, MDSF, detectors, segmenters, VARIANTS),
``train`` (the training engine), ``evaluation`` (VOC07 / COCO detection metrics, mIoU, tables),
``analysis`` (feature gaps, t-SNE, entropy, attribution) and ``viz`` (plots and widgets).
Heavy sub-packages are imported on demand, so ``import drsf_kit`` stays fast.
"""

__version__ = "0.1.0"

from drsf_kit.data.classes import DWD_CLASSES, DWD_DOMAINS, SOURCE_DOMAIN, TARGET_DOMAINS  # noqa: E402

__all__ = ["__version__", "DWD_CLASSES", "DWD_DOMAINS", "SOURCE_DOMAIN", "TARGET_DOMAINS"]
