"""Entropy maps and DFDR channel statistics with known values; attribution maps on tiny models."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from drsf_kit.analysis.attribution import (
    DetectionBoxScore,
    DetectionRoIScore,
    SegmentationClassScore,
    StageActivationScore,
    attribution_maps,
    auto_target,
    gradcam,
    integrated_gradients,
    roi_class_probs,
)
from drsf_kit.analysis.entropy import (
    channel_stats_by_domain,
    detection_entropy_map,
    prediction_entropy_map,
    suppressed_channels,
)
from drsf_kit.errors import ConfigError
from drsf_kit.viz.images import heatmap_overlay
from drsf_kit.viz.plots import attribution_grid, gate_histograms, plot_overlay

# ---------------------------------------------------------------------------------------------- entropy


def test_prediction_entropy_known_values():
    uniform = torch.zeros(2, 5, 3, 4)
    np.testing.assert_allclose(prediction_entropy_map(uniform).numpy(), 1.0, atol=1e-6)
    confident = torch.zeros(1, 5, 3, 4)
    confident[:, 2] = 50.0
    assert prediction_entropy_map(confident).max() < 1e-6
    # Two classes with p = (0.75, 0.25): H = -(0.75 ln 0.75 + 0.25 ln 0.25) / ln 2.
    two = np.zeros((1, 2, 1, 1), np.float32)
    two[0, 0] = math.log(3.0)
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    out = prediction_entropy_map(two)
    assert isinstance(out, np.ndarray) and out.shape == (1, 1, 1)
    assert out[0, 0, 0] == pytest.approx(expected, rel=1e-5)
    rand = prediction_entropy_map(torch.randn(3, 19, 8, 8) * 4)
    assert rand.shape == (3, 8, 8) and float(rand.min()) >= 0 and float(rand.max()) <= 1
    assert prediction_entropy_map(torch.zeros(4, 2, 2)).shape == (1, 2, 2)  # [C, H, W] -> [1, H, W]
    with pytest.raises(ConfigError, match="C>=2"):
        prediction_entropy_map(torch.zeros(1, 1, 2, 2))


def test_detection_entropy_map_paints_boxes():
    boxes = np.array([[2, 1, 6, 4], [4, 2, 9, 6]], float)
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [0.97, 0.01, 0.01, 0.01]])
    m = detection_entropy_map(boxes, probs, (8, 10))
    assert m.shape == (8, 10) and m.dtype == np.float32
    assert m[0].max() == 0 and m[7].max() == 0  # outside every box
    assert m[1, 2] == pytest.approx(1.0)  # the uniform box
    confident = -(0.97 * math.log(0.97) + 3 * 0.01 * math.log(0.01)) / math.log(4)
    assert m[5, 8] == pytest.approx(confident, rel=1e-5)
    assert m[3, 5] == pytest.approx(1.0)  # overlap keeps the most uncertain box
    mean = detection_entropy_map(boxes, probs, (8, 10), reduce="mean")
    assert mean[3, 5] == pytest.approx((1.0 + confident) / 2, rel=1e-5)
    # Logits (negative entries) are turned into probabilities first.
    logits = np.log(probs)
    np.testing.assert_allclose(detection_entropy_map(boxes, logits, (8, 10)), m, atol=1e-5)
    assert detection_entropy_map(np.zeros((0, 4)), np.zeros((0, 4)), (3, 3)).sum() == 0
    with pytest.raises(ConfigError, match="2 boxes but 1 rows"):
        detection_entropy_map(boxes, probs[:1], (8, 10))
    with pytest.raises(ConfigError, match="per-class scores"):
        detection_entropy_map(boxes, np.array([0.9, 0.8]), (8, 10))


class Identity(nn.Module):
    def __init__(self):
        super().__init__()
        self.stage = nn.Identity()

    def forward(self, x):
        return self.stage(x)


def test_channel_entropy_by_domain_known_values():
    flat = torch.full((2, 3, 8, 8), 0.5)
    spike = torch.zeros(2, 3, 8, 8)
    spike[:, :, 4, 4] = 1.0
    stats = channel_stats_by_domain(Identity(), {"daytime_clear": flat, "synth:night_sunny": spike}, stage="stage",
                                    tau=0.01, size=None, progress=False)
    np.testing.assert_allclose(stats["daytime_clear"]["entropy"], 1.0, atol=1e-6)
    assert stats["synth:night_sunny"]["entropy"].max() < 1e-3
    assert stats["daytime_clear"]["gate"] is None
    with pytest.raises(ConfigError, match="no images"):
        channel_stats_by_domain(Identity(), {"x": []}, stage="stage", progress=False)


def test_dfdr_gates_per_domain_and_histogram():
    from drsf_kit.models import build_model

    torch.manual_seed(0)
    model = build_model("det", "mini", "dfdr", num_domains=3)
    images = torch.rand(2, 3, 90, 160)
    stats = channel_stats_by_domain(model, {"daytime_clear": images, "synth:daytime_foggy": images * 0.5},
                                    size=None, progress=False)
    gate = stats["daytime_clear"]["gate"]
    channels = model.body.channels[model.dfdr_stage]
    assert gate.shape == (2, channels) and ((gate > 0) & (gate < 1)).all()
    ent = stats["synth:daytime_foggy"]["entropy"]
    assert ent.shape == (2, channels) and ent.min() >= 0 and ent.max() <= 1
    fig = gate_histograms({k: v["gate"] for k, v in stats.items()})
    ax = fig.axes[0]
    assert "gate" in ax.get_xlabel() and ax.get_ylabel() == "density"
    assert [t.get_text().split(" (mean")[0] for t in ax.get_legend().get_texts()] == [
        "daytime clear (real)", "daytime foggy (synthetic)"]
    plt.close(fig)


def test_suppressed_channels_and_overlay():
    gates = np.array([[0.9, 0.1, 0.5, 0.05], [0.7, 0.3, 0.5, 0.15]])
    assert suppressed_channels(gates, 2).tolist() == [3, 1]
    with pytest.raises(ConfigError, match="k must be"):
        suppressed_channels(gates, 9)
    image = torch.rand(3, 6, 8)
    heat = np.zeros((3, 4), np.float32)
    heat[1, 2] = 1.0
    arr = heatmap_overlay(image, heat)
    assert arr.shape == (6, 8, 3) and arr.dtype == np.uint8
    # Where the map is at its minimum the image shows through unchanged.
    expected = (image.permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(arr[0, 0].astype(float) - expected[0, 0]).max() <= 1
    fig = plot_overlay(image, heat, title="entropy")
    assert fig.axes[0].get_title() == "entropy"
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- attribution


class TinySeg(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.cls = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        return {"out": nn.functional.interpolate(self.cls(self.enc(x)), size=x.shape[-2:], mode="bilinear")}


def test_segmentation_attribution_maps_have_input_shape():
    model = TinySeg()
    image = torch.rand(3, 20, 28)
    with torch.no_grad():
        pred = model(image[None])["out"].argmax(1)[0]
    cls = int(pred.flatten().mode().values)
    fn = SegmentationClassScore(model, image, cls)
    assert fn.region_kind == "predicted region" and torch.equal(fn.region, pred == cls)
    cam = gradcam(fn, image, "enc")
    ig = integrated_gradients(fn, image, steps=4)
    assert cam.shape == (20, 28) and ig.shape == (20, 28)
    assert cam.min() >= 0 and ig.min() >= 0 and ig.max() > 0
    with pytest.raises(ConfigError, match="no stage 'layer7'.*enc"):
        gradcam(fn, image, "layer7")
    nowhere = SegmentationClassScore(model, image, cls, region=torch.zeros(20, 28, dtype=torch.bool))
    assert nowhere.region_kind.startswith("whole image")
    with pytest.raises(ConfigError, match="out of range"):
        SegmentationClassScore(model, image, 9)


def test_integrated_gradients_exact_for_a_linear_model():
    w = torch.rand(3, 5, 6)

    def fn(x):
        return (x * w).sum(dim=(1, 2, 3))

    image = torch.rand(3, 5, 6)
    np.testing.assert_allclose(integrated_gradients(fn, image, steps=4), (image * w).sum(0).numpy(), rtol=1e-4)


def test_detection_attribution_on_the_mini_detector():
    from drsf_kit.models import build_model

    torch.manual_seed(0)
    model = build_model("det", "mini", "source_only", num_domains=1)
    image = torch.rand(3, 90, 160)
    fn, what = auto_target(model, image)
    assert isinstance(fn, DetectionRoIScore) and "RoI logit" in what
    cam = gradcam(fn, image, "layer3")
    assert cam.shape == (90, 160) and cam.min() >= 0
    box = fn.box[0]
    probs = roi_class_probs(model, image, box[None])
    assert probs.shape == (1, model.num_classes) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    scores = DetectionBoxScore(model, box, label=fn.label)(image[None].requires_grad_())
    assert scores.shape == (1,) and scores.requires_grad
    model.eval()
    with torch.no_grad():
        top_score = float(model([image])[0]["scores"].max())
    model.train()
    # The reference box is the top detection: the wrapper finds it again (IoU 1) and returns its score.
    assert float(scores[0].detach()) == pytest.approx(top_score, rel=1e-4)
    assert model.training  # attribution restores the caller's mode


def test_attribution_grid_and_argument_errors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1))
    fn, what = auto_target(model, torch.rand(3, 16, 24), stage="2")
    assert isinstance(fn, StageActivationScore) and "stage 2" in what
    scene = {"daytime_clear": torch.rand(3, 16, 24), "synth:night_sunny": torch.rand(3, 16, 24) * 0.2}
    maps = attribution_maps(scene, model_fn=fn, layer="2", steps=4, progress=False)
    assert set(maps) == {"GradCAM", "Integrated gradients"}
    assert all(m.shape == (16, 24) for row in maps.values() for m in row.values())
    fig = attribution_grid(scene, maps)
    titles = [ax.get_title() for ax in fig.axes[:2]]
    assert titles == ["daytime clear (real)", "night sunny (synthetic)"]
    plt.close(fig)
    one = attribution_maps(scene, make_model_fn=lambda d, img: fn, layer="2", methods=("gradcam",), progress=False)
    plt.close(attribution_grid(scene, one))
    with pytest.raises(ConfigError, match="exactly one"):
        attribution_maps(scene, model_fn=fn, make_model_fn=lambda d, i: fn, layer="2")
    with pytest.raises(ConfigError, match="needs a layer"):
        attribution_maps(scene, model_fn=fn)
    with pytest.raises(ConfigError, match="unknown attribution methods"):
        attribution_maps(scene, model_fn=fn, methods=("saliency",))


def test_standardized_channel_entropy_ignores_the_scale():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, 8, 8, generator=g)
    kw = dict(stage="stage", size=None, progress=False)
    tiny = channel_stats_by_domain(Identity(), {"d": maps * 1e-4}, **kw)["d"]["entropy"]
    assert tiny.min() > 0.9999  # unstandardised: tiny activations all look flat
    a = channel_stats_by_domain(Identity(), {"d": maps * 1e-4}, standardize=True, **kw)["d"]["entropy"]
    b = channel_stats_by_domain(Identity(), {"d": maps * 10.0}, standardize=True, **kw)["d"]["entropy"]
    np.testing.assert_allclose(a, b, rtol=1e-4)
    assert a.max() < 0.99
