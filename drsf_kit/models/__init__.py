"""DRSF models: the DFDR and MDSF blocks, detectors and segmenters with them inserted, the variants.

``build_model`` is the one entry point the training engine, the CLI and the notebooks use::

    model = build_model("det", "mini", "drsf", num_domains=5)
    losses = model(images, targets, domains=domains, pairs=pairs, progress=0.3, generator=g)

See ``docs/method.md`` for the equations as implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from torch import nn

from drsf_kit.data.classes import NUM_DWD_CLASSES, NUM_SEG_CLASSES, SOURCE_DOMAIN, model_domain_names
from drsf_kit.errors import ConfigError
from drsf_kit.models.detector import build_detector
from drsf_kit.models.dfdr import DFDR, DFDRHparams, DFDROutput, align_loss, channel_entropy, reassembly_loss
from drsf_kit.models.hparams import HPARAM_RANGES, default_hparams, normalize_task, random_hparams
from drsf_kit.models.segmenter import build_segmenter
from drsf_kit.models.mdsf import (
    MDSF,
    DomainDiscriminator,
    GradientReversal,
    MDSFHparams,
    grl_coefficient,
    mix_features,
    sample_lambda,
    soft_domain_labels,
)
from drsf_kit.models.variants import VARIANTS, VariantSpec, get_variant

PROFILES = {
    "det": ("mini", "frcnn_r50_fpn", "frcnn_r101_fpn"),
    "seg": ("mini", "deeplabv3_r50", "deeplabv3_r101"),
}


def build_model(
    task: str,
    profile: str,
    variant: str,
    num_domains: int,
    hparams: Optional[dict[str, Any]] = None,
    num_classes: Optional[int] = None,
    pretrained_backbone: Optional[str] = None,
    dfdr_stage: Optional[str] = None,
    mdsf_stage: Optional[str] = None,
    min_size: Optional[int] = None,
    max_size: Optional[int] = None,
    frozen_bn: Optional[bool] = None,
    domain_names: Optional[Sequence[str]] = None,
) -> nn.Module:
    """Build a detector or segmenter of ``profile`` with the blocks of ``variant``.

    Args:
        task: "det" or "seg" ("detection"/"segmentation" also work).
        profile: det: mini, frcnn_r50_fpn, frcnn_r101_fpn; seg: mini, deeplabv3_r50, deeplabv3_r101.
        variant: a key of ``VARIANTS``.
        num_domains: K + 1 (source + K pseudo-domains): the domain classifiers' output size.
        hparams: overrides of ``default_hparams(variant, task)``; unknown keys raise ConfigError.
        num_classes: det: classes including background (default 8 = 7 DWD classes + background);
            seg: 19 by default.
        pretrained_backbone: local ResNet (or mini body) state_dict file; never downloaded.
        dfdr_stage: body stage DFDR follows (default "layer2").
        mdsf_stage: "head" (default: every map the head reads) or a body stage.
        min_size, max_size: detection resize (defaults: mini 180/320, ResNet profiles 800/1333).
        frozen_bn: detection ResNet profiles: frozen BatchNorm (default: True iff pretrained_backbone).
        domain_names: the name of each domain id, source first (default: ``model_domain_names()`` when
            num_domains fits it, else the source alone or ``domain 0..K``).
    Returns:
        The model; ``model.build_config`` holds the arguments that rebuild its architecture and
        ``model.domain_names`` names the domain discriminator's outputs.
    """
    task = normalize_task(task)
    if profile not in PROFILES[task]:
        raise ConfigError(f"unknown {task} profile {profile!r}; valid: {', '.join(PROFILES[task])}")
    get_variant(variant)
    if task == "det":
        num_classes = NUM_DWD_CLASSES + 1 if num_classes is None else int(num_classes)
        frozen = None if profile == "mini" else (pretrained_backbone is not None) if frozen_bn is None else bool(frozen_bn)
        model = build_detector(profile, variant, num_domains, hparams, num_classes, pretrained_backbone,
                               dfdr_stage, mdsf_stage, min_size, max_size, frozen_bn=frozen)
        resize = dict(min_size=model.transform.min_size[0], max_size=model.transform.max_size)
    else:
        if min_size is not None or max_size is not None:
            raise ConfigError("min_size/max_size apply to detection only (segmenters keep the input size)")
        num_classes = NUM_SEG_CLASSES if num_classes is None else int(num_classes)
        model = build_segmenter(profile, variant, num_domains, hparams, num_classes, pretrained_backbone,
                                dfdr_stage, mdsf_stage)
        resize, frozen = dict(min_size=None, max_size=None), None
    model.build_config = dict(
        task=task, profile=profile, variant=variant, num_domains=num_domains, hparams=dict(model.hparams),
        num_classes=num_classes, pretrained_backbone=None, dfdr_stage=model.dfdr_stage,
        mdsf_stage=model.mdsf_stage, frozen_bn=frozen, **resize,
    )
    model.domain_names = _domain_names(num_domains, domain_names)
    return model


def _domain_names(num_domains: int, names: Optional[Sequence[str]]) -> tuple[str, ...]:
    """One name per domain id; the kit's default order (data/classes.py) when none are given and it fits."""
    if names is not None:
        names = tuple(str(n) for n in names)
        if len(names) != num_domains:
            raise ConfigError(f"domain_names has {len(names)} names for num_domains={num_domains}: {', '.join(names)}")
        return names
    default = model_domain_names()
    if num_domains == len(default):
        return default
    return (SOURCE_DOMAIN,) if num_domains == 1 else tuple(f"domain {i}" for i in range(num_domains))


__all__ = [
    "DFDR", "DFDRHparams", "DFDROutput", "MDSF", "MDSFHparams", "DomainDiscriminator", "GradientReversal",
    "HPARAM_RANGES", "PROFILES", "VARIANTS", "VariantSpec", "align_loss", "build_model", "channel_entropy",
    "default_hparams", "get_variant", "grl_coefficient", "mix_features", "random_hparams", "reassembly_loss",
    "sample_lambda", "soft_domain_labels",
]
