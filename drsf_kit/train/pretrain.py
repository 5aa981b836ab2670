"""`drsf pretrain`: a self-supervised warm start of the mini backbones, the kit's stand-in for ImageNet weights.

SimCLR (Chen et al., ICML 2020): two augmented views of each source image, a small projection MLP on the
pooled body output, and the NT-Xent loss that pulls the two views of an image together and pushes the
other images of the batch away. Only the **source training images** are read (the ids of
``<root>/<source>/VOC2007/ImageSets/Main/<split>.txt``): no target or pseudo-domain image and no label
of any kind, so a warm start cannot leak the conditions the benchmark tests.

The augmentations are SimCLR's (random resized crop, flip, colour jitter, grayscale, blur), written as a
few batched tensor operations over ``torchvision.ops.roi_align`` instead of the per-image
``torchvision.transforms.v2`` calls: on 2 CPU cores the per-image calls cost more than the network
itself (measured: 1.6 s per 32 views), and no new package is needed. The weights are the body's ``state_dict`` (``StageBody`` keys), written to
``<out>/<task>-<profile>-<key>.pt`` where ``key`` hashes every setting and the identity of the images
(data root, domain, split and its id list); the file loads through ``model.pretrained_backbone``. An
existing file with the same key is reused, so every benchmark run shares one warm start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from drsf_kit.errors import ConfigError, DataError
from drsf_kit.utils.io import atomic_write_json

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # both mini models normalise their inputs with these
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of one warm start; all of them (and the image list) go into the cache key."""

    task: str = "det"  # det | seg: which mini body is trained
    profile: str = "mini"  # only the mini bodies: the ResNet profiles load real ImageNet weights instead
    data_root: str = "data/mini-weather"  # DWD-layout root holding the source domain
    source_domain: str = "daytime_clear"  # the labelled real domain (its images only, never its labels)
    split: str = "train"  # source split read; the benchmark's validation/test images stay unseen
    steps: int = 300  # optimizer steps
    batch_size: int = 32  # images per step (2 views each)
    lr: float = 2e-3  # AdamW peak learning rate (cosine decay, 5% warm-up)
    weight_decay: float = 1e-4  # decoupled weight decay
    temperature: float = 0.2  # NT-Xent temperature
    crop_hw: tuple[int, int] = (64, 112)  # view size (keeps the 9:16 aspect of the 180x320 scenes)
    crop_scale: tuple[float, float] = (0.25, 1.0)  # random resized crop area range
    jitter: float = 0.4  # colour jitter strength (brightness/contrast/saturation; hue = jitter / 4)
    jitter_p: float = 0.8  # probability of the colour jitter
    gray_p: float = 0.2  # probability of grayscale
    blur_p: float = 0.5  # probability of a Gaussian blur
    seed: int = 0  # model init, batch order and augmentation draws
    out: str = "data/pretrain"  # cache folder


def source_image_paths(data_root: str | Path, domain: str, split: str) -> list[Path]:
    """The JPEGs of ``domain``/``split`` (the split file's ids, in order); DataError when absent."""
    voc = Path(data_root) / domain / "VOC2007"
    split_file = voc / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(split_file, f"split file not found: cannot pretrain on {domain}/{split}")
    ids = [line.strip() for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise DataError(split_file, "lists no images")
    return [voc / "JPEGImages" / f"{i}.jpg" for i in ids]


def cache_key(cfg: PretrainConfig) -> str:
    """16 hex digits of sha256 over the settings and the image identity (root, domain, split, ids)."""
    paths = source_image_paths(cfg.data_root, cfg.source_domain, cfg.split)
    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}
    settings["data_root"] = str(Path(cfg.data_root).resolve())
    settings["ids"] = [p.stem for p in paths]
    text = json.dumps(settings, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_path(cfg: PretrainConfig) -> Path:
    """Where the warm start of ``cfg`` lives (or will)."""
    return Path(cfg.out) / f"{cfg.task}-{cfg.profile}-{cache_key(cfg)}.pt"


def build_body(task: str, profile: str) -> nn.Module:
    """The randomly initialised body the detector or segmenter of ``profile`` uses."""
    from drsf_kit.models.backbones import mini_detection_body, mini_segmentation_body

    if profile != "mini":
        raise ConfigError(f"drsf pretrain trains the mini bodies only, got profile {profile!r} "
                          "(the ResNet profiles take local ImageNet weights via model.pretrained_backbone)")
    if task == "det":
        return mini_detection_body()
    if task == "seg":
        return mini_segmentation_body()
    raise ConfigError(f"task must be det or seg, got {task!r}")


def random_crops(images: torch.Tensor, cfg: PretrainConfig, gen: torch.Generator) -> torch.Tensor:
    """SimCLR's random resized crop + horizontal flip for a whole uint8 batch [N, 3, H, W] -> float [0, 1].

    Each image draws its own area fraction in ``crop_scale`` and aspect in [1.4, 2.2] (the scenes are
    16:9); ``torchvision.ops.roi_align`` resamples every crop to ``crop_hw`` in one call, which is what
    ``transforms.v2.RandomResizedCrop`` does per image, but batched.
    """
    from torchvision.ops import roi_align

    n, _, h, w = images.shape
    area = (cfg.crop_scale[0] + torch.rand(n, generator=gen) * (cfg.crop_scale[1] - cfg.crop_scale[0])) * h * w
    ratio = 1.4 + torch.rand(n, generator=gen) * 0.8
    cw = torch.sqrt(area * ratio).clamp(max=w)
    ch = (cw / ratio).clamp(max=h)
    x0 = torch.rand(n, generator=gen) * (w - cw)
    y0 = torch.rand(n, generator=gen) * (h - ch)
    boxes = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)
    out = roi_align(images.float() / 255.0, boxes, tuple(cfg.crop_hw), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = (torch.rand(n, generator=gen) < 0.5).view(n, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)


def photometric(views: torch.Tensor, cfg: PretrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The photometric part on a whole float batch [N, 3, H, W] in [0, 1], each image its own draws:
    brightness/contrast/saturation jitter (p = ``jitter_p``), grayscale (``gray_p``), a 3x3 blur
    (``blur_p``); then ImageNet normalisation. Batched tensor ops: per-image torchvision calls cost more
    than the network on 2 cores."""
    n = views.shape[0]

    def draw(p):  # [N, 1, 1, 1] bool: which images get an op
        return (torch.rand(n, generator=gen) < p).view(n, 1, 1, 1)

    def factor():
        return (1 + (torch.rand(n, generator=gen) * 2 - 1) * cfg.jitter).view(n, 1, 1, 1)

    on = draw(cfg.jitter_p)
    x = torch.where(on, views * factor(), views)  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = torch.where(on, (x - mean) * factor() + mean, x)  # contrast
    grey = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
    x = torch.where(on, (x - grey) * factor() + grey, x)  # saturation
    grey = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
    x = torch.where(draw(cfg.gray_p), grey, x)
    x = torch.where(draw(cfg.blur_p), F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), x)
    x = x.clamp(0, 1)
    mean_t = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std_t = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy over the 2B views (each view's positive is its pair)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))  # a view is not its own negative
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


class _SimCLR(nn.Module):
    def __init__(self, body: nn.Module, dim: int = 128):
        super().__init__()
        self.body = body
        last = body.stage_names()[-1]
        self.last = last
        c = body.channels[last]
        self.head = nn.Sequential(nn.Linear(c, 2 * c), nn.BatchNorm1d(2 * c), nn.ReLU(inplace=True), nn.Linear(2 * c, dim))

    def forward(self, x):
        return self.head(self.body(x)[self.last].mean(dim=(2, 3)))


def _load_images(paths: list[Path]) -> list[torch.Tensor]:
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(torch.from_numpy(__import__("numpy").asarray(im.convert("RGB")).copy()).permute(2, 0, 1))
        except OSError as exc:
            raise DataError(p, f"cannot read image ({exc})") from None
    return out


def pretrain(cfg: PretrainConfig, progress: bool = True, overwrite: bool = False) -> Path:
    """Train (or reuse) the warm start of ``cfg``; returns the weights file.

    A ``<file>.json`` next to it records the settings, the key, the loss curve and the seconds taken.
    """
    from tqdm.auto import tqdm

    from drsf_kit.utils.runtime import seed_everything

    path = weights_path(cfg)
    if path.is_file() and not overwrite:
        return path
    paths = source_image_paths(cfg.data_root, cfg.source_domain, cfg.split)
    seed_everything(cfg.seed)
    images = torch.stack(_load_images(paths))  # the source images share one size
    model = _SimCLR(build_body(cfg.task, cfg.profile))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + torch.cos(torch.tensor(torch.pi * min(1.0, s / max(1, cfg.steps)))).item()))
    gen = torch.Generator().manual_seed(cfg.seed)
    losses, t0 = [], time.perf_counter()
    model.train()
    bar = tqdm(range(cfg.steps), desc=f"pretrain {cfg.task}", disable=not progress)
    batch = min(cfg.batch_size, len(images))
    if batch < 2:
        raise DataError(paths[0].parent, "SimCLR needs at least 2 source images")
    for step in bar:
        idx = torch.randperm(len(images), generator=gen)[:batch].tolist()
        batch_images = images[torch.tensor(idx)]
        v1 = photometric(random_crops(batch_images, cfg, gen), cfg, gen)
        v2_ = photometric(random_crops(batch_images, cfg, gen), cfg, gen)
        loss = nt_xent(model(v1), model(v2_), cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(round(float(loss.detach()), 4))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.body.state_dict(), tmp)
    tmp.replace(path)
    atomic_write_json(path.with_suffix(".json"), {
        "config": asdict(cfg), "key": cache_key(cfg), "images": len(images), "seconds": round(time.perf_counter() - t0, 1),
        "threads": torch.get_num_threads(), "loss_first": losses[:10], "loss_last": losses[-10:]})
    return path


# ------------------------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    """`drsf pretrain`: train (or find) the cached warm start and print its path."""
    p = subparsers.add_parser("pretrain", help="self-supervised warm start of the mini backbone on source training images",
                              description=__doc__.splitlines()[0])
    d = PretrainConfig()
    p.add_argument("--task", default=d.task, choices=["det", "seg"])
    p.add_argument("--data", default=d.data_root, help="DWD-layout data root (default %(default)s)")
    p.add_argument("--source", default=d.source_domain)
    p.add_argument("--split", default=d.split, help="source split to read (default %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, help="cache folder (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="retrain even when the cached file exists")
    p.add_argument("--print-path", action="store_true", help="only print where the file would be")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)
    return p


def config_from_args(args) -> PretrainConfig:
    """The PretrainConfig of parsed CLI options."""
    return PretrainConfig(task=args.task, data_root=args.data, source_domain=args.source, split=args.split,
                          steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, out=args.out)


def _run(args) -> int:
    cfg = config_from_args(args)
    print(weights_path(cfg) if args.print_path else pretrain(cfg, progress=not args.no_progress, overwrite=args.overwrite))
    return 0
