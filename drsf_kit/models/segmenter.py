"""Semantic segmenters with the DRSF blocks inserted: the ``mini`` DeepLabV3+-like CPU profile and
torchvision's DeepLabV3 on ResNet-50/101 (19 Cityscapes classes, 255 = ignore).

Inputs are ``[N, 3, H, W]`` images in [0, 1] (the model normalises them); training returns
``loss_task`` (cross-entropy, ignore 255) plus the block losses; eval returns logits
``[N, 19, H, W]`` at input resolution.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from drsf_kit.data.classes import IGNORE_INDEX, NUM_SEG_CLASSES
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.models.backbones import StageBody, conv_bn_relu, load_backbone_weights, mini_segmentation_body, resnet_body
from drsf_kit.models.base import DRSFModel, eval_mode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SEGMENTATION_PROFILES = {"mini": None, "deeplabv3_r50": 50, "deeplabv3_r101": 101}
POOLING_GROUPS = 32  # GroupNorm groups of the ASPP image-pooling branch (8 of its 256 channels each)


class LightASPP(nn.Module):
    """Context module on the bottleneck: 1x1, two dilated 3x3 and an image-pooling branch, projected."""

    def __init__(self, cin: int, width: int = 64, out: int = 96, rates: tuple[int, int] = (2, 4)):
        super().__init__()
        self.branches = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))]
            + [conv_bn_relu(cin, width, dilation=r) for r in rates]
        )
        # No BatchNorm on the pooled branch: a 1x1 map per image makes batch statistics degenerate.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, width, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(
            nn.Conv2d(width * (len(rates) + 2), out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-rate context features at the input's resolution."""
        parts = [b(x) for b in self.branches]
        parts.append(self.pool(x).expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(parts, dim=1))


class MiniDeepLabHead(nn.Module):
    """DeepLabV3+-style head: LightASPP on the bottleneck, upsampled and fused with one low-level skip."""

    def __init__(self, high_channels: int, low_channels: int, num_classes: int):
        super().__init__()
        self.aspp = LightASPP(high_channels)
        self.low = nn.Sequential(nn.Conv2d(low_channels, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(conv_bn_relu(96 + 24, 64), conv_bn_relu(64, 64))
        self.classifier = nn.Conv2d(64, num_classes, 1)

    def forward(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits at the skip's resolution (stride 4)."""
        low = self.low(maps["low"])
        high = F.interpolate(self.aspp(maps["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([high, low], dim=1)))


class TorchvisionDeepLabHead(nn.Module):
    """torchvision's DeepLabV3 head (ASPP rates 12/24/36) on the ``out`` map.

    The image-pooling branch normalises with GroupNorm instead of torchvision's BatchNorm: after global
    pooling each image gives one value per channel, so BatchNorm has nothing to average over at one
    image per process (it raises "Expected more than 1 value per channel") and little at two.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import ASPPPooling, DeepLabHead

        self.head = DeepLabHead(in_channels, num_classes)
        pooling = self.head[0].convs[-1]
        assert isinstance(pooling, ASPPPooling) and isinstance(pooling[2], nn.BatchNorm2d), "torchvision ASPP changed"
        pooling[2] = nn.GroupNorm(POOLING_GROUPS, pooling[2].num_features)

    def forward(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits at the bottleneck's resolution."""
        return self.head(maps["out"])


class DRSFSegmenter(DRSFModel):
    """Encoder (``StageBody``) + segmentation head with optional DFDR / MDSF."""

    task = "seg"
    disc_key = "out"

    def __init__(self, body: StageBody, head: nn.Module, head_sources: dict[str, str], variant: str,
                 num_domains: int, hparams=None, dfdr_stage=None, mdsf_stage=None, num_classes: int = NUM_SEG_CLASSES):
        head_channels = {k: body.channels[s] for k, s in head_sources.items()}
        super().__init__(body, head_channels, sorted(set(head_sources.values())), variant, num_domains, hparams,
                         dfdr_stage, mdsf_stage)
        self.head_sources = dict(head_sources)  # head map name -> body stage ("out": bottleneck, "low": skip)
        self.head = head
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def head_inputs(self, collected):
        """The maps the head reads: ``out`` (the bottleneck / ASPP input) and, for mini, ``low``."""
        return OrderedDict((k, collected[s]) for k, s in self.head_sources.items())

    def _input_tensor(self, images) -> torch.Tensor:
        if not torch.is_tensor(images) or images.dim() not in (3, 4) or images.shape[-3] != 3:
            raise DataError("images", f"expected a float tensor [N, 3, H, W], got {getattr(images, 'shape', type(images))}")
        if images.dim() == 3:
            images = images.unsqueeze(0)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def _logits(self, maps, size) -> torch.Tensor:
        return F.interpolate(self.head(maps), size=size, mode="bilinear", align_corners=False)

    def forward(self, images, targets=None, domains=None, pairs=None, progress: float = 0.0,
                generator: Optional[torch.Generator] = None):
        """Training: dict of weighted losses (sets ``last_stats``). Eval: logits ``[N, 19, H, W]``."""
        x = self._input_tensor(images)
        size = x.shape[-2:]
        if not self.training:
            maps, _ = self._features(x)
            return self._logits(maps, size)
        n = x.shape[0]
        if targets is None or not torch.is_tensor(targets) or targets.shape != (n, *size):
            got = getattr(targets, "shape", targets)
            raise DataError("targets", f"training needs masks [N, H, W] = {[n, *size]}, got {got}")
        domains, pairs = self._check_batch(n, domains, pairs, x.device)
        maps, aux = self._features(x, train=True, domains=domains, pairs=pairs, progress=progress, generator=generator)
        targets = targets.long()
        if aux.extra_src:
            # appended rows (swap samples, fused samples) train with their source's masks
            targets = torch.cat([targets, targets[torch.cat(aux.extra_src)]], dim=0)
        logits = self._logits(maps, size)
        losses = {"loss_task": F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)}
        losses.update(aux.losses)
        self.last_stats = aux.stats
        return losses

    def predict_mixed(self, image_a: torch.Tensor, image_b: torch.Tensor, lam: float, return_features: bool = True) -> dict:
        """Logits on features mixed at the MDSF stage: ``lam * f(image_a) + (1 - lam) * f(image_b)``.

        MDSF v3 (``method: v3``) fuses as it trains: image_a's map at ``fuse_stage`` takes the channel
        statistics ``lam * stats(a) + (1 - lam) * stats(b)`` (its content stays image_a's).

        Returns dict(features=[C, h, w] mixed map (if ``return_features``), domain_probs=[K+1] or None,
        prediction=logits [19, H, W]). ``lam = 1`` gives image_a's own logits.
        """
        if not 0.0 <= float(lam) <= 1.0:
            raise ConfigError(f"lam must lie in [0, 1], got {lam}")
        a = self._input_tensor(image_a)
        b = self._input_tensor(image_b)
        if a.shape != b.shape:
            raise DataError("image_b", f"twins must have the same size to mix ({tuple(a.shape)} vs {tuple(b.shape)})")
        with eval_mode(self):
            maps, aux = self._features(torch.cat([a[:1], b[:1]]), mix_lam=float(lam))
            logits = self._logits(maps, a.shape[-2:])[0]
            probs = self.mdsf.domain_probs(aux.mdsf_map)[0] if self.mdsf is not None and self.mdsf.discriminator is not None else None
        result = {"domain_probs": probs, "prediction": logits}
        if return_features:
            result["features"] = aux.mdsf_map[0]
        return result


def build_segmenter(profile: str, variant: str, num_domains: int, hparams=None, num_classes: int = NUM_SEG_CLASSES,
                    pretrained_backbone=None, dfdr_stage=None, mdsf_stage=None) -> DRSFSegmenter:
    """A segmenter of ``profile`` (see ``SEGMENTATION_PROFILES``).

    ``pretrained_backbone`` is a local state_dict: a ResNet one for the DeepLabV3 profiles (loaded into
    the dilated ResNet, BatchNorm kept trainable as in torchvision's DeepLabV3), a mini-encoder one for
    ``mini``.
    """
    if profile not in SEGMENTATION_PROFILES:
        raise ConfigError(f"unknown segmentation profile {profile!r}; valid: {', '.join(SEGMENTATION_PROFILES)}")
    if profile == "mini":
        body = mini_segmentation_body()
        if pretrained_backbone is not None:
            load_backbone_weights(body, pretrained_backbone, ignore_prefixes=())
        head = MiniDeepLabHead(body.channels["layer3"], body.channels["layer1"], num_classes)
        sources = {"out": "layer3", "low": "layer1"}
    else:
        body = resnet_body(SEGMENTATION_PROFILES[profile], pretrained_backbone, frozen_bn=False, dilated=True)
        head = TorchvisionDeepLabHead(body.channels["layer4"], num_classes)
        sources = {"out": "layer4"}
    return DRSFSegmenter(body, head, sources, variant, num_domains, hparams, dfdr_stage, mdsf_stage, num_classes)
