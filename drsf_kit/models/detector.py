"""Faster R-CNN with FPN and the DRSF blocks inserted: the ``mini`` CPU profile and ResNet-50/101.

The model is assembled from torchvision's parts (``GeneralizedRCNNTransform``, RPN, RoI heads) and
runs them itself, so DFDR can sit between body stages and MDSF on the FPN levels. Training returns
torchvision's loss dict plus the block losses; eval returns torchvision's detections (boxes in input
image coordinates, 1-based labels).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from drsf_kit.errors import ConfigError, DataError
from drsf_kit.models.backbones import StageBody, load_backbone_weights, mini_detection_body, resnet_body
from drsf_kit.models.base import DRSFModel, eval_mode
from drsf_kit.models.box_coding import FP32AnchorGenerator, fp32_box_coder

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Per-profile detector settings. Mini: objects of ~8-120 px in 180x320 frames, 2 CPU cores.
DETECTION_PROFILES: dict[str, dict[str, Any]] = {
    "mini": dict(
        fpn_stages=["layer2", "layer3", "layer4"],
        fpn_channels=64,
        # two sizes per level so 8 px objects still get an anchor they overlap well
        anchor_sizes=((8, 16), (24, 36), (48, 72), (96, 144)),
        representation_size=256,
        min_size=180,
        max_size=320,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=128,
    ),
    # torchvision's fasterrcnn_resnet50_fpn recipe, with min/max size set explicitly.
    "frcnn_r50_fpn": dict(depth=50),
    "frcnn_r101_fpn": dict(depth=101),
}
_RESNET_FPN = dict(
    fpn_stages=["layer1", "layer2", "layer3", "layer4"],
    fpn_channels=256,
    anchor_sizes=((32,), (64,), (128,), (256,), (512,)),
    representation_size=1024,
    min_size=800,
    max_size=1333,
    rpn_pre_nms_top_n_train=2000,
    rpn_post_nms_top_n_train=2000,
    rpn_pre_nms_top_n_test=1000,
    rpn_post_nms_top_n_test=1000,
    rpn_batch_size_per_image=256,
    box_batch_size_per_image=512,
)


class DRSFDetector(DRSFModel):
    """Faster R-CNN + FPN over a ``StageBody`` with optional DFDR / MDSF."""

    task = "det"
    disc_key = ""  # set in __init__: the coarsest real FPN level

    def __init__(self, body: StageBody, settings: dict[str, Any], num_classes: int, variant: str,
                 num_domains: int, hparams=None, dfdr_stage=None, mdsf_stage=None):
        fpn_stages = settings["fpn_stages"]
        c = settings["fpn_channels"]
        levels = [str(i) for i in range(len(fpn_stages))]
        # The discriminator reads the coarsest FPN level computed from the body; "pool" is only its
        # stride-2 subsample.
        self.disc_key = levels[-1]
        head_channels = {k: c for k in levels + ["pool"]}
        super().__init__(body, head_channels, fpn_stages, variant, num_domains, hparams, dfdr_stage, mdsf_stage)
        self.fpn_stages = list(fpn_stages)
        self.fpn = FeaturePyramidNetwork([body.channels[s] for s in fpn_stages], c, extra_blocks=LastLevelMaxPool())
        self.transform = GeneralizedRCNNTransform(settings["min_size"], settings["max_size"], IMAGENET_MEAN, IMAGENET_STD)
        sizes = settings["anchor_sizes"]
        if len(sizes) != len(levels) + 1:
            raise ConfigError(f"anchor_sizes needs one tuple per FPN level ({len(levels) + 1}), got {len(sizes)}")
        anchors = FP32AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(c, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3,
            batch_size_per_image=settings["rpn_batch_size_per_image"], positive_fraction=0.5,
            pre_nms_top_n=dict(training=settings["rpn_pre_nms_top_n_train"], testing=settings["rpn_pre_nms_top_n_test"]),
            post_nms_top_n=dict(training=settings["rpn_post_nms_top_n_train"], testing=settings["rpn_post_nms_top_n_test"]),
            nms_thresh=0.7,
        )
        rep = settings["representation_size"]
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
            TwoMLPHead(c * 7 * 7, rep),
            FastRCNNPredictor(rep, num_classes),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5,
            batch_size_per_image=settings["box_batch_size_per_image"], positive_fraction=0.25,
            bbox_reg_weights=None, score_thresh=0.05, nms_thresh=0.5, detections_per_img=100,
        )
        # anchors, proposals and detections stay in fp32 under autocast (see models.box_coding)
        self.rpn.box_coder = fp32_box_coder(self.rpn.box_coder)
        self.roi_heads.box_coder = fp32_box_coder(self.roi_heads.box_coder)
        self.num_classes = num_classes

    def head_inputs(self, collected):
        """FPN levels "0".. (one per ``fpn_stages`` entry) plus "pool"."""
        return self.fpn(OrderedDict((str(i), collected[s]) for i, s in enumerate(self.fpn_stages)))

    def _as_list(self, images) -> list[torch.Tensor]:
        if torch.is_tensor(images):
            if images.dim() == 3:
                return [images]
            return list(images.unbind(0))
        images = list(images)
        for i, img in enumerate(images):
            if not torch.is_tensor(img) or img.dim() != 3 or img.shape[0] != 3:
                raise DataError(f"image {i}", f"expected a float tensor [3, H, W], got {getattr(img, 'shape', type(img))}")
        return images

    def _input_tensor(self, images) -> torch.Tensor:
        image_list, _ = self.transform(self._as_list(images))
        return image_list.tensors

    @staticmethod
    def _clean_targets(targets, n: int) -> list[dict[str, torch.Tensor]]:
        if targets is None or len(targets) != n:
            got = None if targets is None else len(targets)
            raise DataError("targets", f"training needs one target dict per image ({n}), got {got}")
        out = []
        for i, t in enumerate(targets):
            name = f"target of image {t.get('image_id', i)}" if isinstance(t, dict) else f"target {i}"
            if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
                raise DataError(name, "needs 'boxes' [N, 4] and 'labels' [N]")
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4)
            labels = torch.as_tensor(t["labels"], dtype=torch.int64)
            if labels.shape != (boxes.shape[0],):
                raise DataError(name, f"{boxes.shape[0]} boxes but labels of shape {tuple(labels.shape)}")
            bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
            if bool(bad.any()):
                raise DataError(name, f"degenerate box {boxes[bad][0].tolist()} (x1 <= x0 or y1 <= y0)")
            out.append({"boxes": boxes, "labels": labels})
        return out

    def forward(self, images, targets=None, domains=None, pairs=None, progress: float = 0.0,
                generator: Optional[torch.Generator] = None):
        """Training: dict of weighted losses (sets ``last_stats``). Eval: list of detection dicts."""
        images = self._as_list(images)
        if not self.training:
            return self._detect(images)
        targets = self._clean_targets(targets, len(images))
        device = images[0].device
        domains, pairs = self._check_batch(len(images), domains, pairs, device)
        image_list, targets = self.transform(images, targets)
        maps, aux = self._features(image_list.tensors, train=True, domains=domains, pairs=pairs,
                                   progress=progress, generator=generator)
        sizes = list(image_list.image_sizes)
        if aux.extra_src:
            # appended rows (swap samples, fused samples) train with their source's labels
            src = torch.cat(aux.extra_src).tolist()
            targets = targets + [targets[i] for i in src]
            sizes = sizes + [sizes[i] for i in src]
        batch = ImageList(image_list.tensors, sizes)
        proposals, rpn_losses = self.rpn(batch, maps, targets)
        _, det_losses = self.roi_heads(maps, proposals, batch.image_sizes, targets)
        losses = {k: v.float() for k, v in {**det_losses, **rpn_losses}.items()}
        losses.update(aux.losses)
        self.last_stats = aux.stats
        return losses

    def _run_head(self, maps, image_list: ImageList, original_sizes) -> list[dict[str, torch.Tensor]]:
        proposals, _ = self.rpn(image_list, maps)
        detections, _ = self.roi_heads(maps, proposals, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def _detect(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, _ = self.transform(images)
        maps, _ = self._features(image_list.tensors)
        return self._run_head(maps, image_list, original_sizes)

    def predict_mixed(self, image_a: torch.Tensor, image_b: torch.Tensor, lam: float, return_features: bool = True) -> dict:
        """Detections on features mixed at the MDSF stage: ``lam * f(image_a) + (1 - lam) * f(image_b)``.

        MDSF v3 (``method: v3``) fuses as it trains: image_a's map at ``fuse_stage`` takes the channel
        statistics ``lam * stats(a) + (1 - lam) * stats(b)`` (its content stays image_a's).

        Returns dict(features=[C, h, w] mixed map (if ``return_features``), domain_probs=[K+1] or None,
        prediction=detection dict in image_a's coordinates). ``lam = 1`` gives image_a's own result.
        """
        if not 0.0 <= float(lam) <= 1.0:
            raise ConfigError(f"lam must lie in [0, 1], got {lam}")
        a, b = self._as_list(image_a)[0], self._as_list(image_b)[0]
        if a.shape != b.shape:
            raise DataError("image_b", f"twins must have the same size to mix ({tuple(a.shape)} vs {tuple(b.shape)})")
        with eval_mode(self):
            image_list, _ = self.transform([a, b])
            maps, aux = self._features(image_list.tensors, mix_lam=float(lam))
            one = ImageList(image_list.tensors[:1], image_list.image_sizes[:1])
            prediction = self._run_head(maps, one, [tuple(a.shape[-2:])])[0]
            probs = self.mdsf.domain_probs(aux.mdsf_map)[0] if self.mdsf is not None and self.mdsf.discriminator is not None else None
        result = {"domain_probs": probs, "prediction": prediction}
        if return_features:
            result["features"] = aux.mdsf_map[0]
        return result


def build_detector(profile: str, variant: str, num_domains: int, hparams=None, num_classes: int = 8,
                   pretrained_backbone=None, dfdr_stage=None, mdsf_stage=None, min_size=None, max_size=None,
                   frozen_bn: Optional[bool] = None) -> DRSFDetector:
    """A detector of ``profile`` (see ``DETECTION_PROFILES``); ``num_classes`` counts the background.

    For the ResNet profiles, ``pretrained_backbone`` is a local ResNet state_dict; with it the body
    uses frozen BatchNorm and a frozen stem + layer1 (torchvision's recipe), unless ``frozen_bn`` says
    otherwise. ``min_size``/``max_size`` override the profile's resize (torchvision resizes every image).
    """
    if profile not in DETECTION_PROFILES:
        raise ConfigError(f"unknown detection profile {profile!r}; valid: {', '.join(DETECTION_PROFILES)}")
    if profile == "mini":
        settings = dict(DETECTION_PROFILES["mini"])
        body = mini_detection_body()
        if pretrained_backbone is not None:
            load_backbone_weights(body, pretrained_backbone, ignore_prefixes=())
    else:
        settings = dict(_RESNET_FPN)
        frozen = (pretrained_backbone is not None) if frozen_bn is None else bool(frozen_bn)
        body = resnet_body(DETECTION_PROFILES[profile]["depth"], pretrained_backbone, frozen_bn=frozen,
                           trainable_layers=3 if frozen else 5)
    if min_size is not None:
        settings["min_size"] = int(min_size)
    if max_size is not None:
        settings["max_size"] = int(max_size)
    return DRSFDetector(body, settings, num_classes, variant, num_domains, hparams, dfdr_stage, mdsf_stage)


__all__ = ["DRSFDetector", "DETECTION_PROFILES", "build_detector"]
