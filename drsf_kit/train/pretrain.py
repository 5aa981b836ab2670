"""A warm start (``drsf pretrain``) of the mini backbones trained on source images only, the kit's stand-in for ImageNet weights.

Two objectives (``objective``), both reading only the **source training split**:

- ``supervised`` (the default): a ``source_only`` detector or segmenter trained on the source training
  images and *their* labels through the kit's own training loop (``drsf_kit.train.engine.fit``), scored
  on the source test split only. The file is the **whole model's** ``state_dict`` and loads through
  ``model.init_weights`` (same-name, same-shape keys; DFDR and MDSF modules start fresh). ImageNet weights
  are supervised weights too; this is the same idea with the one labelled domain the benchmark allows,
  and the whole model because on these small data the fresh detection heads, not the body, are what a
  short schedule cannot train: measured for the demo, 200 fine-tuning steps from a source-only body
  gave 25-28 VOC07 mAP50 against 65 from the whole source-only model, and 300 steps from the SimCLR
  body 31.4, against 70.8 from scratch in 600 (docs/protocol.md, section 3).
- ``simclr``: self-supervised, no label at all; the file is the body's ``state_dict`` and loads through
  ``model.pretrained_backbone``.

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

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from drsf_kit.config import config_from_dict
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.models.backbones import mini_detection_body, mini_segmentation_body
from drsf_kit.train.checkpoint import load_checkpoint
from drsf_kit.train.engine import fit
from drsf_kit.train.rundir import RunDir
from drsf_kit.utils.io import atomic_write_json
from drsf_kit.utils.runtime import seed_everything

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
    objective: str = "supervised"  # supervised (source_only run on the split, body kept) | simclr (no labels)
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
    """16 hex digits of sha256 over the settings and the image identity (root as written, domain, split,
    ids): the same project in another folder or clone finds the same file."""
    paths = source_image_paths(cfg.data_root, cfg.source_domain, cfg.split)
    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}
    settings["data_root"] = Path(cfg.data_root).as_posix()
    settings["ids"] = [p.stem for p in paths]
    text = json.dumps(settings, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_path(cfg: PretrainConfig) -> Path:
    """Where the warm start of ``cfg`` lives (or will)."""
    return Path(cfg.out) / f"{cfg.task}-{cfg.profile}-{cache_key(cfg)}.pt"


def build_body(task: str, profile: str) -> nn.Module:
    """The randomly initialised body the detector or segmenter of ``profile`` uses."""

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


    path = weights_path(cfg)
    if path.is_file() and not overwrite:
        return path
    if cfg.objective == "supervised":
        return _pretrain_supervised(cfg, path, progress)
    if cfg.objective != "simclr":
        raise ConfigError(f"pretrain objective must be supervised or simclr, got {cfg.objective!r}")
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


def load_key(cfg: PretrainConfig) -> str:
    """The model config field a warm start of ``cfg`` loads through: ``init_weights`` (whole model,
    supervised) or ``pretrained_backbone`` (body, simclr)."""
    return "init_weights" if cfg.objective == "supervised" else "pretrained_backbone"


def supervised_run_config(cfg: PretrainConfig, run_dir: Path):
    """The ``source_only`` RunConfig of a supervised warm start: source ``split`` only, scored on the
    source test split only (no target domain is named, so none is read), AdamW with a cosine schedule."""

    return config_from_dict({
        "task": cfg.task, "variant": "source_only", "seed": cfg.seed, "device": "cpu",
        "output_dir": str(run_dir.parent), "run_name": run_dir.name,
        "data": {"root": cfg.data_root, "source_domain": cfg.source_domain, "source_split": cfg.split,
                 "synth_domains": [], "eval_domains": [], "num_workers": 0},
        "model": {"profile": cfg.profile},
        "train": {"max_steps": cfg.steps, "batch_source": cfg.batch_size, "lr": cfg.lr, "optimizer": "adamw",
                  "weight_decay": cfg.weight_decay, "warmup_steps": max(1, cfg.steps // 20), "schedule": "cosine",
                  "grad_clip": 10.0, "hflip": 0.5, "checkpoint_every": max(50, cfg.steps // 10),
                  "log_every": 50, "tensorboard": False},
        "eval": {"domains": [cfg.source_domain], "batch_size": 16},
    })


def export_weights(run_dir: str | Path, out: str | Path, body_only: bool = False,
                   half: bool = True) -> Path:
    """Write a finished run's model weights as a warm-start file.

    The whole model's ``state_dict`` (for ``model.init_weights``), or with ``body_only`` the body's
    (``body.*``, for ``model.pretrained_backbone``), from ``checkpoints/last.pt``; floating tensors in
    fp16 with ``half`` (a few MB; the model loads them into its fp32 weights).
    """

    run = RunDir(run_dir)
    if not run.is_finished():
        raise DataError(run.path, "is not a finished run: nothing to export")
    state = load_checkpoint(run.last_checkpoint)["model"]
    if body_only:
        state = {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}
    if not state:
        raise DataError(run.last_checkpoint, "holds no weights to export")
    state = {k: v.half() if half and v.is_floating_point() else v for k, v in state.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(out)
    return out


def _pretrain_supervised(cfg: PretrainConfig, path: Path, progress: bool) -> Path:
    """Train (or resume) the source_only run of ``cfg`` under ``<out>/runs/`` and keep its weights."""

    source_image_paths(cfg.data_root, cfg.source_domain, cfg.split)  # a clear error before any training
    run_dir = Path(cfg.out) / "runs" / path.stem
    t0 = time.perf_counter()
    fit(supervised_run_config(cfg, run_dir), resume=True, start_over=True, progress=progress)
    export_weights(run_dir, path, half=False)  # full precision: every protocol run starts from these bytes
    scores = {f"{row['domain']}/{row['metric']}": round(float(row["value"]), 4)
              for row in RunDir(run_dir).result_rows()
              if row.get("class") is None and row.get("value") is not None}
    atomic_write_json(path.with_suffix(".json"), {
        "config": asdict(cfg), "key": cache_key(cfg), "load_as": f"model.{load_key(cfg)}", "run": str(run_dir),
        "seconds_this_call": round(time.perf_counter() - t0, 1),
        "threads": torch.get_num_threads(), "source_test_scores": scores})
    return path
