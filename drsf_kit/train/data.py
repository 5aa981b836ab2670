"""The training data of a run, built from its config: the source dataset of a domain and split, and the
``TwinTrainSet`` of source images plus their twins (``drsf_kit.data.twins``; the sampler that draws
from it is ``drsf_kit.train.samplers``)."""

from __future__ import annotations

from torch.utils.data import Dataset

from drsf_kit.data.cityscapes import CityscapesSegmentation, GTAVSegmentation, MiniWeatherSegmentation
from drsf_kit.data.dwd import DWDDetection
from drsf_kit.data.paired import PairedSynthetic
from drsf_kit.data.twins import ManifestTwins, TwinTrainSet
from drsf_kit.errors import DataError


def source_dataset(cfg, domain: str, split: str, progress: bool = False) -> Dataset:
    """The labelled dataset of ``domain``/``split`` for ``cfg.task``.

    ``data.format`` ``dwd``: every domain is a DWD-layout folder under ``data.root`` (masks for seg).
    ``gtav``: the source domain is GTAV at ``data.root``. The domain ``cityscapes`` is always read as
    Cityscapes (its ``val`` split) from ``data.target_roots["cityscapes"]``; any domain listed in
    ``data.target_roots`` is read from that folder instead of ``data.root``.
    """
    root = cfg.data.target_roots.get(domain, cfg.data.root)
    if cfg.task == "seg" and domain == "cityscapes":
        return CityscapesSegmentation(root, "val")
    if cfg.data.format == "gtav" and domain == cfg.data.source_domain:
        return GTAVSegmentation(root, None if split == "all" else split, progress=progress)

    if cfg.task == "det":
        return DWDDetection(root, domain, split, progress=progress)

    return MiniWeatherSegmentation(root, domain, split)


def build_train_set(cfg, progress: bool = False) -> TwinTrainSet:
    """The ``TwinTrainSet`` of a run: source split plus twins when the variant trains on synthetic data."""
    source = source_dataset(cfg, cfg.data.source_domain, cfg.data.source_split, progress=progress)
    if len(source) == 0:
        raise DataError(cfg.data.root, f"domain {cfg.data.source_domain!r} split {cfg.data.source_split!r} has no images")
    crops = dict(crop_min_scale=cfg.train.crop_min_scale, crop_size=cfg.train.crop_size)
    if not cfg.spec.use_synth:
        return TwinTrainSet(source, cfg.task, **crops)
    if cfg.data.format == "gtav":
        paired = ManifestTwins(source, cfg.data.synth_root, cfg.data.source_domain, cfg.data.synth_domains)
    else:
        paired = PairedSynthetic(cfg.data.root, cfg.data.synth_root, cfg.data.source_domain, cfg.data.source_split,
                                 domains=list(cfg.data.synth_domains), task=cfg.task, progress=progress)
    train_set = TwinTrainSet(source, cfg.task, paired, cfg.data.synth_domains, **crops)
    if train_set.coverage() == 0:
        raise DataError(cfg.data.synth_root, f"none of the {len(source)} source images of split "
                                             f"{cfg.data.source_split!r} has a generated twin")
    return train_set
