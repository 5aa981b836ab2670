"""Training-domain validation (DomainBed's model selection): choices read source and pseudo-domain images only.

The held-out source images (``data.source_domain``, split ``val``) and the twins of those same images in
every pseudo-domain (from the run's ``data.synth_root``, labels reused from the source) form the
validation set. No target image and no target label is opened here, so a model or hyperparameter picked
by ``select`` cannot have seen the conditions it is scored on (Gulrajani & Lopez-Paz, ICLR 2021).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch.utils.data import Dataset

from drsf_kit.data.paired import PairedSynthetic
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.train.data import source_dataset
from drsf_kit.train.evaluate import score_detection, score_segmentation

VAL_SPLIT = "val"
# The score a choice maximises, per task.
PRIMARY_METRIC = {"det": "map50_voc07", "seg": "miou"}


class _Twins(Dataset):
    """PairedSynthetic items with ``ids``, as the scorers read them: ``(image, target)`` for det,
    ``(image, mask)`` for seg."""

    def __init__(self, paired, task: str):
        self.paired, self.task = paired, task
        self.ids = [Path(r["path"]).stem for r in paired.rows]

    def __len__(self) -> int:
        return len(self.paired)

    def __getitem__(self, i: int):
        image, target = self.paired[i]
        return (image, target) if self.task == "det" else (image, target["mask"])


def validation_sets(cfg, synth_root: str | Path | None = None) -> dict[str, Dataset]:
    """``{"<source>": source val images, "<pseudo-domain>": its twins of those images, ...}``.

    ``synth_root`` defaults to ``cfg.data.synth_root``; a pseudo-domain without val twins is an error.
    """
    source = cfg.data.source_domain
    sets: dict[str, Dataset] = {source: source_dataset(cfg, source, VAL_SPLIT)}
    if len(sets[source]) == 0:
        raise DataError(cfg.data.root, f"{source} has no {VAL_SPLIT} images (mini_weather.holdout_split writes them)")
    root = synth_root or cfg.data.synth_root
    for domain in cfg.data.synth_domains:
        paired = PairedSynthetic(cfg.data.root, root, source, VAL_SPLIT, domains=[domain], task=cfg.task, progress=False)
        if len(paired) == 0:
            raise DataError(root, f"no {domain} twins of the {source} {VAL_SPLIT} images")
        sets[domain] = _Twins(paired, cfg.task)
    return sets


@torch.no_grad()
def validate_model(model, cfg, synth_root: str | Path | None = None, device=None, progress: bool = False,
                   max_images: int = 0) -> list[dict]:
    """Score ``model`` on the training-domain validation sets; one row per (domain, metric), ``split="val"``.

    ``max_images`` > 0 scores only the first N images of each set (the same N for every run).
    """
    from torch.utils.data import DataLoader, Subset

    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    rows = []
    try:
        for domain, dataset in validation_sets(cfg, synth_root).items():
            if max_images and len(dataset) > max_images:
                dataset = Subset(dataset, range(max_images))
            loader = DataLoader(dataset, batch_size=max(1, cfg.eval.batch_size), shuffle=False,
                                collate_fn=lambda items: items)
            if cfg.task == "det":
                result = score_detection(model, loader, device, f"val {domain}", progress)
                metrics = {m: result.get(m) for m in ("map50_voc07", "ap50_coco")}
            else:
                result = score_segmentation(model, loader, device, f"val {domain}", progress)
                metrics = {"miou": result.get("miou")}
            role = "source" if domain == cfg.data.source_domain else "pseudo"
            rows += [{"domain": domain, "split": VAL_SPLIT, "metric": m, "value": v, "role": role}
                     for m, v in metrics.items()]
    finally:
        model.train(was)
    return rows


def validation_score(rows: Iterable[dict], task: str) -> float:
    """Mean of the primary metric over the validation domains (source and each pseudo-domain equally)."""
    metric = PRIMARY_METRIC[task]
    values = [r["value"] for r in rows if r.get("split") == VAL_SPLIT and r.get("metric") == metric
              and r.get("class") is None and r.get("value") is not None]
    if not values:
        raise ConfigError(f"no {VAL_SPLIT} rows with metric {metric!r}: selection needs training-domain validation")
    return sum(values) / len(values)


def select(candidates: dict[str, Sequence[dict]], task: str) -> str:
    """The candidate (name -> its result rows) with the best training-domain validation score.

    Rows of any other split (target or source test) are ignored, whatever their values.
    """
    if not candidates:
        raise ConfigError("select: no candidates")
    return max(candidates, key=lambda name: validation_score(candidates[name], task))
