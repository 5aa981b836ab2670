"""Notebook 08's slider and sweep fuse what MDSF training fuses, and the saved figures of notebooks 07
and 08 read on their own.

Training fuses two twins of one source image from two different pseudo-domains, never the source image
with a twin. The pair the explorer and the sweep use is checked against the generated data (the twins'
own manifest rows), with tiny untrained models: v3 (no adversary, ``domain_probs`` None) and v2.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from drsf_kit.config import config_from_dict  # noqa: E402
from drsf_kit.data.classes import SOURCE_DOMAIN  # noqa: E402
from drsf_kit.data.paired import PairedSynthetic  # noqa: E402
from drsf_kit.errors import ConfigError  # noqa: E402
from drsf_kit.models import build_model  # noqa: E402
from drsf_kit.models.hparams import DEFAULT_METHOD  # noqa: E402
from drsf_kit.viz import dashboard  # noqa: E402
from drsf_kit.viz.plots import gate_histograms  # noqa: E402
from drsf_kit.viz.widgets import mdsf_explorer, twin_explorer  # noqa: E402
from drsf_kit.workflows import notebook as nbk  # noqa: E402

RUN_DOMAINS = ["night_sunny", "daytime_foggy", "dusk_rainy"]  # a run's own order, not the default one


class Recorder:
    """A model wrapper that records the images ``predict_mixed`` receives."""

    def __init__(self, model):
        self.model = model
        self.mdsf = model.mdsf
        self.domain_names = model.domain_names
        self.pairs = []

    def predict_mixed(self, image_a, image_b, lam):
        self.pairs.append((image_a, image_b))
        return self.model.predict_mixed(image_a, image_b, lam)


def _model(task: str, method: str | None, **hp):
    kw = {"min_size": 64, "max_size": 96} if task == "det" else {}
    hparams = {**({"method": method} if method else {}), **hp} or None
    torch.manual_seed(0)
    return build_model(task, "mini", "drsf", 1 + len(RUN_DOMAINS), hparams=hparams,
                       domain_names=(SOURCE_DOMAIN, *RUN_DOMAINS), **kw).eval()


@pytest.fixture(scope="module")
def run_scenes(tiny_weather, synth_root, tmp_path_factory):
    """``(ctx, cfg, scenes)``: a notebook context on the tiny data and a run config naming its own
    pseudo-domains and synth root, and ``fusion_scenes`` of that run (segmentation)."""
    ctx = nbk.setup(DATA_ROOT=str(tiny_weather), SYNTH_ROOT=str(tmp_path_factory.mktemp("elsewhere")),
                    OUTPUT_DIR=str(tmp_path_factory.mktemp("nb08")))
    cfg = config_from_dict({"task": "seg", "variant": "drsf",
                            "data": {"synth_root": str(synth_root), "synth_domains": RUN_DOMAINS}})
    return ctx, cfg, nbk.fusion_scenes(ctx, cfg, n=2, task="seg")


def _scaled(image):
    return (image * 255).round()


def test_fusion_scenes_hold_only_the_runs_pseudo_domain_twins(run_scenes, synth_root):
    ctx, cfg, scenes = run_scenes
    assert len(scenes) == 2
    paired = PairedSynthetic(ctx.data_root, synth_root, task="seg", progress=False)
    for source_id, twins in scenes.items():
        assert SOURCE_DOMAIN not in twins  # the source image is never one of the fused pair
        assert list(twins) == [d for d in RUN_DOMAINS if d in paired.twins(source_id)]  # the run's order
        assert len(twins) >= 2
        for domain, image in twins.items():  # each image is that source's twin of that pseudo-domain
            item, target = paired[paired.twins(source_id)[domain][0]]
            assert target["source_id"] == source_id and target["domain"] == domain
            assert torch.equal(_scaled(image), _scaled(item))
    # the run's pseudo-domains restrict the scenes: a run of one pseudo-domain has no pair to fuse
    lone = config_from_dict({"task": "seg", "variant": "drsf", "data": {"synth_root": str(synth_root),
                                                                         "synth_domains": ["dusk_rainy"]}})
    with pytest.raises(ConfigError, match="two pseudo-domains"):
        nbk.fusion_scenes(ctx, lone, n=2, task="seg")


@pytest.mark.parametrize("method", ["v2", None])  # None: the default method (v3)
def test_slider_and_sweep_fuse_two_pseudo_domain_twins_of_one_source(run_scenes, synth_root, method):
    ctx, _, scenes = run_scenes
    model = Recorder(_model("seg", method))
    # the source image is passed too (as the app's scenes carry it): it must not be offered
    with_source = {sid: {SOURCE_DOMAIN: torch.zeros_like(next(iter(t.values()))), **t} for sid, t in scenes.items()}
    explorer = mdsf_explorer(model, with_source)
    scene, a, b = explorer.pair
    assert a != b and {a, b} <= set(RUN_DOMAINS)
    assert SOURCE_DOMAIN not in explorer.controls["domain_a"].options
    assert SOURCE_DOMAIN not in explorer.controls["domain_b"].options
    assert a not in explorer.controls["domain_b"].options  # B can never be A's pseudo-domain
    explorer.controls["domain_a"].value = b  # choosing B's domain for A moves B to another pseudo-domain
    scene, a, b = explorer.pair
    assert a != b and {a, b} <= set(RUN_DOMAINS)

    paired = PairedSynthetic(ctx.data_root, synth_root, task="seg", progress=False)
    twin = {d: paired[paired.twins(scene)[d][0]][0] for d in (a, b)}
    model.pairs.clear()
    explorer.controls["lam"].value = 0.25
    image_a, image_b = model.pairs[-1]
    assert torch.equal(_scaled(image_a), _scaled(twin[a])) and torch.equal(_scaled(image_b), _scaled(twin[b]))

    model.pairs.clear()
    sweep = nbk.mixing_sweep(explorer, steps=3)
    assert sweep.attrs["scene"] == scene and (sweep.attrs["domain_a"], sweep.attrs["domain_b"]) == (a, b)
    assert len(model.pairs) == 3
    for image_a, image_b in model.pairs:
        assert torch.equal(_scaled(image_a), _scaled(twin[a])) and torch.equal(_scaled(image_b), _scaled(twin[b]))
    assert sweep.attrs["fusion"].method == (method or DEFAULT_METHOD)


def test_explorer_refuses_scenes_without_two_pseudo_domain_twins():
    image = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="two different pseudo-domains"):
        mdsf_explorer(_model("seg", "v3"), {"s": {SOURCE_DOMAIN: image, "night_sunny": 0.3 * image}})


def _pair_scene(seed: int = 0, size=(64, 96)):
    base = torch.rand(3, *size, generator=torch.Generator().manual_seed(seed))
    return {"s": {SOURCE_DOMAIN: base, "daytime_foggy": 0.5 * base + 0.5, "night_sunny": 0.3 * base,
                  "dusk_rainy": base ** 2}}


@pytest.mark.parametrize("task", ["det", "seg"])
def test_no_adversary_is_said_not_plotted(task):
    """v3's default has no discriminator: domain_probs is None and the explorer and sweep say so."""
    model = _model(task, "v3")
    assert model.mdsf.discriminator is None
    explorer = mdsf_explorer(model, _pair_scene())
    assert explorer.domain_probs is None
    assert "no adversary in this model" in explorer.status.value
    assert explorer.probs_png.startswith(b"\x89PNG")
    assert "channel statistics" in explorer.formula.value and "layer1" in explorer.formula.value
    before = explorer.feature_png
    explorer.controls["lam"].value = 0.0
    assert explorer.feature_png != before  # the slider moves the restyled map
    sweep = nbk.mixing_sweep(explorer, steps=2)
    assert not [c for c in sweep.columns if c.startswith("p(")]
    fig = dashboard.lambda_sweep_figure(sweep)
    assert "no adversary in this model" in fig._suptitle.get_text()
    assert not any(ax.get_ylabel() == "probability" for ax in fig.axes)  # no flat posterior drawn
    assert "statistics" in fig.axes[0].get_xlabel()  # lambda = 0 is A's content in B's statistics


def test_an_adversary_is_plotted_when_there_is_one():
    model = _model("seg", "v3", w_adv=0.1)
    assert model.mdsf.discriminator is not None
    explorer = mdsf_explorer(model, _pair_scene())
    assert explorer.domain_probs is not None and explorer.domain_probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert "no adversary" not in explorer.status.value
    sweep = nbk.mixing_sweep(explorer, steps=2)
    assert [c for c in sweep.columns if c.startswith("p(")] == [f"p({d})" for d in model.domain_names]
    fig = dashboard.lambda_sweep_figure(sweep)
    assert fig.axes[0].get_ylabel() == "probability" and fig.axes[0].get_legend() is not None


# ------------------------------------------------------------------------------- readable saved figures
def _readable(fig, grid: bool = False):
    """A title, axis labels (on x and y; a grid of pictures names its rows on y, its columns in titles)
    and a legend or a colour bar."""
    titles = [fig._suptitle.get_text() if fig._suptitle is not None else ""] + [ax.get_title() for ax in fig.axes]
    assert any(t.strip() for t in titles), "no title"
    assert grid or any(ax.get_xlabel().strip() for ax in fig.axes), "no x axis label"
    assert any(ax.get_ylabel().strip() for ax in fig.axes), "no y axis label"
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    colorbars = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]
    assert legends or colorbars, "neither a legend nor a colour bar"
    return legends, colorbars


def _saved_size(fig, tmp_path, name):
    path = nbk.save_figure(fig, name, out_dir=tmp_path)
    with Image.open(path) as image:
        return image.size


@pytest.mark.parametrize("task,method", [("det", "v3"), ("seg", None)])
def test_notebook_08_figures_read_on_their_own(task, method, tmp_path):
    explorer = mdsf_explorer(_model(task, method), _pair_scene(), lam=0.3)
    fig = explorer.features_figure()
    legends, _ = _readable(fig)
    text = fig._suptitle.get_text()
    assert "daytime_foggy" in text and "night_sunny" in text and "scene s" in text
    assert SOURCE_DOMAIN not in text
    panels = [ax.get_title() for ax in fig.axes]
    assert panels[:2] == ["twin A: daytime_foggy", "twin B: night_sunny"]
    assert [t for t in panels if t.startswith("mixed")] == [f"mixed features, lambda = {v}" for v in ("1.00", "0.30", "0.00")]
    assert "principal component 1" in legends[0].get_texts()[0].get_text()
    width, height = _saved_size(fig, tmp_path, "mixed")
    assert width > 600 and height > 200  # more than the bare map (320x180 before)
    plt.close(fig)
    sweep_fig = dashboard.lambda_sweep_figure(nbk.mixing_sweep(explorer, steps=2))
    _readable(sweep_fig)
    assert "daytime_foggy" in sweep_fig._suptitle.get_text()


def test_notebook_07_figures_read_on_their_own(tmp_path):
    model = _model("seg", None)
    scene = _pair_scene(size=(48, 64))
    explorer = twin_explorer(scene, model=model, methods=("gradcam",))
    fig = explorer.figure(model_label="seg drsf, seed 0")
    _, colorbars = _readable(fig, grid=True)
    assert len(colorbars) == 2  # entropy and attribution, each on its own scale
    assert {cb._colorbar.ax.get_ylabel() for cb in colorbars} == {"prediction entropy", "gradcam attribution"}
    assert [ax.get_title() for ax in fig.axes[:4]] == ["daytime clear (real)", "daytime foggy (synthetic)",
                                                       "night sunny (synthetic)", "dusk rainy (synthetic)"]
    assert [ax.get_ylabel() for ax in fig.axes[:12:4]] == ["image", "entropy", "gradcam"]
    assert fig._suptitle.get_text().startswith("seg drsf, seed 0: scene s:")
    width, height = _saved_size(fig, tmp_path, "twins")
    assert width > 600 and height > 300
    plt.close(fig)
    values = {d: np.random.default_rng(i).random(16) for i, d in enumerate(scene["s"])}
    hist = gate_histograms(values, what="gate", title="seg drsf (seed 0): gate per domain")
    _readable(hist)
    plt.close(hist)
