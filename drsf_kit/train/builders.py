"""The model a run config describes: shared by training (``engine``) and scoring (``evaluate``).

It lives apart from both so that imports go one way: ``builders`` <- ``evaluate`` <- ``engine``.
"""

from __future__ import annotations

import torch

from drsf_kit.config import RunConfig


def build_model_for(cfg: RunConfig, load_pretrained: bool = True) -> torch.nn.Module:
    """The model a run trains: profile, variant blocks, K+1 domains (source + ``data.synth_domains``).

    ``load_pretrained=False`` builds the same architecture without reading the backbone weights file
    (a checkpoint supplies every weight), so a run folder loads on a machine without that file.
    """
    from drsf_kit.models import build_model

    sizes = dict(min_size=cfg.model.min_size, max_size=cfg.model.max_size) if cfg.task == "det" else {}
    pretrained = cfg.model.pretrained_backbone
    frozen = cfg.model.frozen_bn if cfg.model.frozen_bn is not None else (pretrained is not None if cfg.task == "det" else None)
    return build_model(cfg.task, cfg.model.profile, cfg.variant, num_domains=1 + len(cfg.data.synth_domains),
                       hparams=dict(cfg.model.hparams) or None, pretrained_backbone=pretrained if load_pretrained else None,
                       dfdr_stage=cfg.model.dfdr_stage, mdsf_stage=cfg.model.mdsf_stage, frozen_bn=frozen,
                       domain_names=(cfg.data.source_domain, *cfg.data.synth_domains), **sizes)
