"""Box coding in fp32 under autocast: anchors, box decoding and regression targets.

torchvision's ``BoxCoder.decode`` casts the reference boxes to the dtype of the regression output, and
``AnchorGenerator`` builds anchors in the dtype of the feature maps. Under bf16 autocast both are bf16,
whose 8-bit mantissa spaces representable values 4-8 px apart at x = 512-2048: boxes of a 1280-px-wide
image move by several pixels. These two subclasses keep anchors, decoding and encoding in fp32; in an
fp32 run they compute exactly what torchvision computes.
"""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator


class FP32BoxCoder(BoxCoder):
    """``BoxCoder`` whose encoding and decoding run in fp32 with autocast off."""

    def decode(self, rel_codes: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Boxes ``[N, K, 4]`` in fp32 from the (possibly half-precision) regression output."""
        with torch.autocast(rel_codes.device.type, enabled=False):
            return super().decode(rel_codes.float(), [b.float() for b in boxes])

    def encode(self, reference_boxes: list[torch.Tensor], proposals: list[torch.Tensor]) -> list[torch.Tensor]:
        """Regression targets in fp32 (the losses compare them with the network's output in fp32)."""
        device = reference_boxes[0].device if reference_boxes else torch.device("cpu")
        with torch.autocast(device.type, enabled=False):
            return super().encode([b.float() for b in reference_boxes], [p.float() for p in proposals])


class FP32AnchorGenerator(AnchorGenerator):
    """``AnchorGenerator`` that returns fp32 anchors whatever the dtype of the feature maps."""

    def forward(self, image_list, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Anchors per image, fp32 (the feature maps only lend their shape and device)."""
        # zero-stride fp32 stand-ins: one element of memory each, not a copy of the feature map
        stand_ins = [torch.empty_strided(f.shape, (0,) * f.dim(), dtype=torch.float32, device=f.device)
                     if f.dtype != torch.float32 else f for f in feature_maps]
        return super().forward(image_list, stand_ins)


def fp32_box_coder(coder: BoxCoder) -> FP32BoxCoder:
    """An ``FP32BoxCoder`` with the weights and clip value of ``coder``."""
    return FP32BoxCoder(coder.weights, coder.bbox_xform_clip)
