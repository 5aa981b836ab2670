"""Attribution maps (captum): where does the network look, in each domain of one scene?

``gradcam`` (LayerGradCam on a backbone stage, upsampled to the input) and ``integrated_gradients``
(summed |attribution| over colour channels) take a *forward function* ``images [N,3,H,W] -> [N]``
scores. The score wrappers below build one for a segmentation class, for a detection box (the box
best matching a reference box, or the classifier logit of a fixed RoI) or, for a bare backbone, for the
mean activation of a stage. Twins share their layout, so one region or box serves every domain of a
scene and the maps compare like for like.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from drsf_kit.analysis.features import _StopForward, default_stage, model_device, resolve_module
from drsf_kit.data.classes import CITYSCAPES_CLASSES, DWD_CLASSES
from drsf_kit.errors import ConfigError

METHODS = ("gradcam", "integrated_gradients")
_METHOD_LABELS = {"gradcam": "GradCAM", "integrated_gradients": "Integrated gradients"}


def _as_batch(image) -> torch.Tensor:
    t = torch.as_tensor(image).float()
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[:2] != (1, 3):
        raise ConfigError(f"attribution expects one [3,H,W] (or [1,3,H,W]) image tensor, got {tuple(t.shape)}")
    return t


def _model_of(model_fn) -> nn.Module | None:
    return model_fn if isinstance(model_fn, nn.Module) else getattr(model_fn, "model", None)


def _on_model_device(x: torch.Tensor, model_fn) -> torch.Tensor:
    model = _model_of(model_fn)
    return x.to(model_device(model)) if model is not None else x


@contextlib.contextmanager
def _eval_mode(model_fn):
    """Score in eval mode (batch-norm statistics fixed, detectors return detections), then restore the
    caller's mode; every score wrapper does this, so calling one directly is safe too."""
    model = _model_of(model_fn)
    was = model.training if model is not None else None
    if model is not None:
        model.eval()
    try:
        yield
    finally:
        if model is not None:
            model.train(was)


def seg_logits(output) -> torch.Tensor:
    """The logits tensor ``[N, C, H, W]`` of a segmenter's output (tensor, ``{"out": ...}`` or tuple)."""
    if isinstance(output, dict):
        output = output.get("out", next(iter(output.values())))
    if isinstance(output, (list, tuple)):
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.ndim != 4:
        raise ConfigError(f"expected segmentation logits [N, C, H, W], got {type(output).__name__}")
    return output


class SegmentationClassScore:
    """``images -> [N]``: the sum of class ``class_id``'s logits over a fixed region.

    The region is where ``reference`` is predicted as the class (computed once, so interpolated inputs
    of integrated gradients are scored on the same pixels); pass ``region`` ([H, W] bool) to reuse a
    twin's region. When the class is predicted nowhere, the whole image is used (``region_kind``).
    """

    def __init__(self, model: nn.Module, reference, class_id: int, region=None):
        self.model, self.class_id = model, int(class_id)
        if region is None:
            with torch.no_grad(), _eval_mode(model):
                logits = seg_logits(model(_on_model_device(_as_batch(reference), model)))
            if not 0 <= self.class_id < logits.shape[1]:
                raise ConfigError(f"class {class_id} out of range: the model has {logits.shape[1]} classes")
            region = logits.argmax(1)[0] == self.class_id
        self.region = torch.as_tensor(region).bool().to(model_device(model))
        self.region_kind = "predicted region"
        if not self.region.any():
            self.region, self.region_kind = torch.ones_like(self.region), "whole image (class not predicted)"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with _eval_mode(self.model):
            logits = seg_logits(self.model(images))[:, self.class_id]
        if logits.shape[-2:] != self.region.shape:
            raise ConfigError(f"region {tuple(self.region.shape)} does not match logits {tuple(logits.shape[-2:])}")
        return (logits * self.region.to(logits.dtype)).sum(dim=(1, 2))


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou

    return box_iou(a.reshape(-1, 4).float(), b.reshape(-1, 4).float())


class DetectionBoxScore:
    """``images -> [N]``: score of the detection with the highest IoU with ``box`` (and ``label``, if given).

    For torchvision-style detectors (``model(list_of_images) -> [{"boxes", "scores", "labels"}]``).
    An image where no detection overlaps the box scores 0 (kept in the graph, so gradients are zero).
    """

    def __init__(self, model: nn.Module, box, label: int | None = None):
        self.model, self.box, self.label = model, torch.as_tensor(box, dtype=torch.float32).reshape(1, 4), label

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with _eval_mode(self.model):
            outs = self.model(list(images))
        scores = []
        for img, out in zip(images, outs):
            labels = out["labels"]
            keep = torch.ones_like(labels, dtype=torch.bool) if self.label is None else labels == self.label
            zero = img.sum() * 0.0
            if not keep.any():
                scores.append(zero)
                continue
            iou = _box_iou(self.box.to(out["boxes"].device), out["boxes"][keep])[0]
            best = int(iou.argmax())
            scores.append(out["scores"][keep][best] + zero if iou[best] > 0 else zero)
        return torch.stack(scores)


def is_rcnn(model) -> bool:
    """Whether ``model`` is a Faster R-CNN-style detector (torchvision ``GeneralizedRCNN`` or a kit detector)."""
    heads = callable(getattr(model, "stage_names", None)) and any(s.startswith("head.") for s in model.stage_names())
    return hasattr(model, "transform") and hasattr(model, "roi_heads") and (hasattr(model, "backbone") or heads)


def roi_class_logits(model: nn.Module, images: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Box-classifier logits ``[sum of boxes, K]`` of a torchvision ``GeneralizedRCNN`` for given boxes.

    ``boxes[i]`` is ``[B_i, 4]`` xyxy in the pixels of ``images[i]``; they are scaled to the detector's
    internal resize, pooled, and passed through its box head and predictor (no NMS, fully differentiable).
    """
    if not is_rcnn(model):
        raise ConfigError(f"{type(model).__name__} is not a Faster R-CNN-style detector (transform, roi_heads and "
                          "a backbone or head.* stages): use DetectionBoxScore instead")
    height, width = images.shape[-2:]
    batch, _ = model.transform(list(images))
    if hasattr(model, "backbone"):
        feats = model.backbone(batch.tensors)
    else:  # kit detectors: the FPN maps are their "head.<level>" stages
        heads = [s for s in model.stage_names() if s.startswith("head.")]
        feats = OrderedDict((s[len("head."):], v) for s, v in model.extract_features(images, heads).items())
    if isinstance(feats, torch.Tensor):
        feats = OrderedDict([("0", feats)])
    scaled = []
    for b, (h, w) in zip(boxes, batch.image_sizes):
        factor = torch.tensor([w / width, h / height, w / width, h / height], dtype=torch.float32)
        scaled.append((torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4).cpu() * factor).to(images.device))
    rh = model.roi_heads
    pooled = rh.box_roi_pool(feats, scaled, batch.image_sizes)
    logits, _ = rh.box_predictor(rh.box_head(pooled))
    return logits


def roi_class_probs(model: nn.Module, image, boxes) -> np.ndarray:
    """Softmax class probabilities ``[B, K]`` (background first) of fixed boxes on one image: the input of
    ``entropy.detection_entropy_map`` for torchvision detectors."""
    with torch.no_grad(), _eval_mode(model):
        logits = roi_class_logits(model, _on_model_device(_as_batch(image), model), [torch.as_tensor(boxes).cpu()])
    return torch.softmax(logits, dim=1).cpu().numpy()


class DetectionRoIScore:
    """``images -> [N]``: classifier logit of class ``label`` for a fixed RoI ``box`` (input pixels)."""

    def __init__(self, model: nn.Module, box, label: int):
        self.model, self.box, self.label = model, torch.as_tensor(box, dtype=torch.float32).reshape(1, 4), int(label)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with _eval_mode(self.model):
            return roi_class_logits(self.model, images, [self.box.cpu()] * len(images))[:, self.label]


class StageActivationScore:
    """``images -> [N]``: mean activation of a stage; the attribution target for a bare backbone."""

    def __init__(self, model: nn.Module, stage: str):
        self.model, self.stage, self.module = model, stage, resolve_module(model, stage)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        captured = []

        def hook(_m, _i, out):
            captured.append(out if isinstance(out, torch.Tensor) else next(iter(out.values())))
            raise _StopForward

        handle = self.module.register_forward_hook(hook)
        try:
            with _eval_mode(self.model):
                self.model(images)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0].flatten(1).mean(1)


def gradcam(model_fn: Callable, image, layer: nn.Module | str, target: int | None = None) -> np.ndarray:
    """GradCAM map ``[H, W]`` (>= 0) of ``model_fn``'s score on ``image`` at ``layer``, upsampled to the input.

    Args:
        model_fn: ``images -> [N]`` scores (or ``[N, K]`` with ``target``); a score wrapper or a model.
        image: ``[3, H, W]`` tensor in [0, 1].
        layer: the module, or its name in the wrapper's ``.model`` (ConfigError lists the stages).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    x = _on_model_device(_as_batch(image), model_fn)
    if isinstance(layer, str):
        model = _model_of(model_fn)
        if model is None:
            raise ConfigError("gradcam: pass the layer as a module, or a model_fn with a .model to look it up")
        layer = resolve_module(model, layer)
    with _eval_mode(model_fn):
        attr = LayerGradCam(model_fn, layer).attribute(x, target=target, relu_attributions=True)
    up = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return up[0].sum(0).detach().clamp_min(0).cpu().numpy()


def integrated_gradients(model_fn: Callable, image, target: int | None = None, steps: int = 16,
                         baseline=None) -> np.ndarray:
    """Integrated-gradients map ``[H, W]``: |attribution| summed over colour channels (baseline: black)."""
    from captum.attr import IntegratedGradients

    x = _on_model_device(_as_batch(image), model_fn)
    base = torch.zeros_like(x) if baseline is None else _as_batch(baseline).to(x.device)
    with _eval_mode(model_fn):
        attr = IntegratedGradients(model_fn).attribute(x, baselines=base, target=target, n_steps=int(steps),
                                                       internal_batch_size=int(steps))
    return attr[0].detach().abs().sum(0).cpu().numpy()


def attribution_maps(images_by_domain: Mapping[str, object], model_fn: Callable | None = None,
                     make_model_fn: Callable[[str, object], Callable] | None = None, layer=None,
                     methods: Sequence[str] = METHODS, steps: int = 16, target: int | None = None,
                     progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """``{method label: {domain: [H, W] map}}`` for one image per domain.

    Args:
        model_fn: one forward function for every image; or
        make_model_fn: ``(domain, image) -> forward function`` (e.g. a per-image segmentation region).
        layer: GradCAM layer (module or name); required when ``gradcam`` is among ``methods``.
    """
    from tqdm.auto import tqdm

    if (model_fn is None) == (make_model_fn is None):
        raise ConfigError("attribution_maps: give exactly one of model_fn and make_model_fn")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown attribution methods {unknown}; valid: {', '.join(METHODS)}")
    if "gradcam" in methods and layer is None:
        raise ConfigError("attribution_maps: GradCAM needs a layer (a stage name or module)")
    out: dict[str, dict[str, np.ndarray]] = {_METHOD_LABELS[m]: {} for m in methods}
    for domain, image in tqdm(list(images_by_domain.items()), desc="attribution", disable=not progress, leave=False):
        fn = model_fn if model_fn is not None else make_model_fn(domain, image)
        for m in methods:
            if m == "gradcam":
                out[_METHOD_LABELS[m]][domain] = gradcam(fn, image, layer, target)
            else:
                out[_METHOD_LABELS[m]][domain] = integrated_gradients(fn, image, target, steps)
    return out


def auto_target(model: nn.Module, image, stage: str | None = None) -> tuple[Callable, str]:
    """Pick an attribution score for ``model`` on ``image``: ``(forward function, description)``.

    A torchvision-style detector: the RoI logit of its top detection; a segmenter: the predicted
    region of its most frequent object class (or most frequent class); anything else: the mean
    activation of ``stage``.
    """
    x = _on_model_device(_as_batch(image), model)
    if is_rcnn(model):
        with torch.no_grad(), _eval_mode(model):
            det = model(list(x))[0]
        if len(det["boxes"]):
            top = int(det["scores"].argmax())
            label = int(det["labels"][top])
            name = DWD_CLASSES[label - 1] if getattr(model, "num_classes", None) == len(DWD_CLASSES) + 1 \
                else f"label {label}"
            return DetectionRoIScore(model, det["boxes"][top], label), f"RoI logit of the top box ({name})"
    else:
        with torch.no_grad(), _eval_mode(model):
            try:
                out = model(x)
            except _StopForward:  # pragma: no cover - a leftover hook from an interrupted run
                out = None
        try:
            logits = seg_logits(out)
        except ConfigError:
            logits = None
        if logits is not None and logits.shape[1] > 1 and logits.shape[-2:] == x.shape[-2:]:
            pred = logits.argmax(1)[0]
            counts = torch.bincount(pred.flatten(), minlength=logits.shape[1])
            things = counts.clone()
            things[:min(11, len(things))] = 0  # train ids >= 11 are objects (person, car, ...)
            cls = int(things.argmax()) if things.sum() > 0 else int(counts.argmax())
            name = CITYSCAPES_CLASSES[cls] if logits.shape[1] == len(CITYSCAPES_CLASSES) else str(cls)
            return SegmentationClassScore(model, x[0], cls), f"logits of class '{name}' over its predicted region"
    st = stage or default_stage(model)
    return StageActivationScore(model, st), f"mean activation of stage {st}"
