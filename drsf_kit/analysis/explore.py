"""What a model does on the twins of a scene: the computations behind the explorers.

``lambda_sweep`` runs MDSF's ``predict_mixed`` along lambda and returns a frame; ``kit_twin_functions``
builds the entropy and attribution functions of the twin explorer from a kit model; ``unwrap_prediction``
and ``label_map`` read a model's outputs. ``drsf_kit.viz`` draws the results; nothing here draws.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from drsf_kit.analysis import attribution as attr, entropy as ent
from drsf_kit.analysis.features import default_stage
from drsf_kit.errors import ConfigError


def as_numpy(value) -> np.ndarray:
    """A tensor (any device) or array-like as a NumPy array."""
    return value.detach().float().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def unwrap_prediction(prediction):
    """What a prediction holds: the box mapping of a detection, or the segmentation array.

    Unwraps a one-element list and a ``mask`` / ``out`` / ``logits`` mapping; a mapping with none of
    those keys (nor ``boxes``) is a ConfigError.
    """
    if isinstance(prediction, (list, tuple)) and len(prediction) == 1:
        prediction = prediction[0]
    if isinstance(prediction, Mapping):
        if "boxes" in prediction:
            return prediction
        key = next((k for k in ("mask", "out", "logits") if k in prediction), None)
        if key is None:
            raise ConfigError(f"cannot draw a prediction with keys {sorted(prediction)}")
        return prediction[key]
    return prediction


def label_map(segmentation) -> np.ndarray:
    """Class ids from ``[H,W]`` labels, ``[C,H,W]`` or ``[1,C,H,W]`` logits (argmax over classes)."""
    arr = as_numpy(segmentation)
    arr = arr[0] if arr.ndim == 4 else arr
    return arr.argmax(axis=0) if arr.ndim == 3 else arr


def kit_twin_functions(model, steps: int = 8, layer: str | None = None):
    """``(entropy_fn, attribution_fn, methods)`` for ``twin_explorer`` from a kit detector or segmenter.

    Entropy: the per-pixel class entropy of a segmenter, or each detected box's class entropy painted
    into its box for a detector (``analysis.entropy``). Attribution (``analysis.attribution``): GradCAM
    at ``layer`` (default: the model's default stage) or integrated gradients with ``steps`` steps, of
    one target chosen on the reference (source) image by ``auto_target`` and reused for every twin.
    The model is put in eval mode.
    """
    import torch

    model.eval()
    detector = attr.is_rcnn(model)
    layer = layer or default_stage(model)
    targets: dict[int, tuple] = {}

    def entropy_fn(image):
        """Per-pixel entropy map ``[H, W]`` in [0, 1] of the model's prediction on ``image``."""
        with torch.no_grad():
            if not detector:
                return ent.prediction_entropy_map(attr.seg_logits(model(image[None])))[0]
            boxes = model([image])[0]["boxes"]
            size = tuple(image.shape[-2:])
            if len(boxes) == 0:
                return np.zeros(size, np.float32)
            return ent.detection_entropy_map(boxes, attr.roi_class_probs(model, image, boxes), size)

    def attribution_fn(image, method, reference):
        """``method``'s ``[H, W]`` map on ``image`` for the target fixed on ``reference``."""
        # one target per reference image, kept with the image so its id cannot be reused
        entry = targets.get(id(reference))
        if entry is None or entry[0] is not reference:
            entry = targets[id(reference)] = (reference, attr.auto_target(model, reference)[0])
        score = entry[1]
        if method == "gradcam":
            return attr.gradcam(score, image, layer)
        if method == "integrated_gradients":
            return attr.integrated_gradients(score, image, steps=steps)
        raise ConfigError(f"unknown attribution method {method!r}; valid: {', '.join(attr.METHODS)}")

    return entropy_fn, attribution_fn, tuple(attr.METHODS)


def lambda_sweep(model, image_a, image_b, steps: int = 11, domain_names=None, score_threshold: float = 0.3,
                 names: tuple[str, str] = ("A", "B")):
    """``predict_mixed`` at ``steps`` evenly spaced lambdas from 0 to 1: one row per lambda.

    Columns: ``lam``; ``p(<domain>)`` per discriminator output (none for a variant without MDSF), named by
    ``domain_names`` or else the model's own ``domain_names`` (``domain i`` when neither fits);
    for detections ``boxes`` (scoring >= ``score_threshold``) and ``top_score``; for segmentation
    ``agreement_with_a``, the fraction of pixels predicted as at ``lam = 1`` (image A alone).
    ``names`` (the domains of A and B) and the threshold are kept in the frame's ``attrs`` for the figure.
    """
    import pandas as pd
    import torch

    if steps < 2:
        raise ConfigError(f"lambda_sweep needs at least 2 steps, got {steps}")
    domain_names = domain_names if domain_names is not None else getattr(model, "domain_names", None)
    rows, reference = [], None
    for lam in np.linspace(1.0, 0.0, int(steps)):  # lam = 1 first: it is the reference prediction
        with torch.no_grad():
            out = model.predict_mixed(image_a, image_b, float(lam))
        row = {"lam": round(float(lam), 6)}
        if out.get("domain_probs") is not None:
            probs = as_numpy(out["domain_probs"]).reshape(-1)
            prob_names = list(domain_names) if domain_names is not None and len(domain_names) == len(probs) else \
                [f"domain {i}" for i in range(len(probs))]
            row.update({f"p({n})": float(p) for n, p in zip(prob_names, probs)})
        pred = unwrap_prediction(out["prediction"])  # what the explorer draws: boxes or a label map
        if isinstance(pred, dict) and "boxes" in pred:
            scores = as_numpy(pred.get("scores", np.zeros(0))).reshape(-1)
            row["boxes"] = int((scores >= score_threshold).sum())
            row["top_score"] = float(scores.max()) if scores.size else 0.0
        else:
            labels = label_map(pred)
            reference = labels if reference is None else reference
            row["agreement_with_a"] = float((labels == reference).mean())
        rows.append(row)
    sweep = pd.DataFrame(rows).sort_values("lam").reset_index(drop=True)
    sweep.attrs.update(domain_a=str(names[0]), domain_b=str(names[1]), score_threshold=float(score_threshold))
    return sweep
