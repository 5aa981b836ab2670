"""The model a run config describes: shared by training (``engine``) and scoring (``evaluate``).

It lives apart from both so that imports go one way: ``builders`` <- ``evaluate`` <- ``engine``.
"""

from __future__ import annotations

import torch

from drsf_kit.config import RunConfig
from drsf_kit.errors import DataError
from drsf_kit.models import build_model
from drsf_kit.models.backbones import load_state_dict_file


def build_model_for(cfg: RunConfig, load_pretrained: bool = True) -> torch.nn.Module:
    """The model a run trains: profile, variant blocks, K+1 domains (source + ``data.synth_domains``).

    ``load_pretrained=False`` builds the same architecture without reading the backbone weights file
    (a checkpoint supplies every weight), so a run folder loads on a machine without that file.
    """
    sizes = dict(min_size=cfg.model.min_size, max_size=cfg.model.max_size) if cfg.task == "det" else {}
    pretrained = cfg.model.pretrained_backbone
    frozen = cfg.model.frozen_bn if cfg.model.frozen_bn is not None else (pretrained is not None if cfg.task == "det" else None)
    model = build_model(cfg.task, cfg.model.profile, cfg.variant, num_domains=1 + len(cfg.data.synth_domains),
                       hparams=dict(cfg.hparams) or None,
                       pretrained_backbone=find_weights(pretrained) if load_pretrained and pretrained else None,
                       dfdr_stage=cfg.model.dfdr_stage, mdsf_stage=cfg.model.mdsf_stage, frozen_bn=frozen,
                       domain_names=(cfg.data.source_domain, *cfg.data.synth_domains), **sizes)
    if cfg.model.init_weights and load_pretrained:
        init_from(model, find_weights(cfg.model.init_weights))
    return model


def init_from(model: torch.nn.Module, path: str) -> int:
    """Start ``model`` from a whole model's ``state_dict`` (``model.init_weights``, e.g. a source-only
    run's body, FPN and heads). Every tensor of the file must find a key of the same shape in the model
    (else ``DataError`` naming the first misfits: a file of another task or profile); the model's keys
    the file lacks (the variant's own DFDR/MDSF blocks) keep their initialisation. Returns the count loaded."""
    state = load_state_dict_file(path)
    own = model.state_dict()
    misfits = sorted(k for k, v in state.items() if k not in own or tuple(own[k].shape) != tuple(v.shape))
    if misfits or not state:
        raise DataError(path, f"does not fit the {type(model).__name__}: {len(misfits)} of {len(state)} tensors "
                              f"have no same-shaped place (e.g. {', '.join(misfits[:3])})")
    model.load_state_dict(state, strict=False)
    return len(state)


def find_weights(path: str) -> str:
    """A relative weights path as written in a config (``data/warm_start/...``), found from the working
    folder or, failing that, from its nearest parent that holds it: a notebook kernel starts in
    ``notebooks/`` while configs name files relative to the project. Returns ``path`` when not found
    (the loader then names it in its error)."""
    from pathlib import Path

    candidate = Path(path)
    if candidate.is_absolute() or candidate.is_file():
        return path
    for folder in Path.cwd().parents:
        if (folder / candidate).is_file():
            return str(folder / candidate)
    return path
