"""Widgets driven headless: set a control's value, check the state the widget exposes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from drsf_kit.analysis.explore import lambda_sweep
from drsf_kit.data.classes import DWD_DOMAINS, SOURCE_DOMAIN, model_domain_names
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.utils.io import append_jsonl
from drsf_kit.viz import dashboard
from drsf_kit.viz.widgets import ablation_dashboard, mdsf_explorer, twin_explorer

VARIANTS = ("source_only", "naive_synth", "dfdr", "mdsf", "drsf")


def _value(variant: str, seed: int, domain: str, metric: str) -> float:
    # distinct, known values: variant index sets the level, seeds spread it by +-0.01
    base = 0.2 + 0.1 * VARIANTS.index(variant) + 0.02 * DWD_DOMAINS.index(domain)
    return base + (0.5 if metric == "ap50_coco" else 0.0) * 0.1 + 0.01 * (seed - 1)


def _rows(task="det", metrics=("map50_voc07", "ap50_coco"), seeds=(0, 1, 2), variants=VARIANTS):
    rows = []
    for variant in variants:
        for seed in seeds:
            run = f"{task}-{variant}-{seed}"
            for domain in DWD_DOMAINS:
                for metric in metrics:
                    common = dict(task=task, variant=variant, seed=seed, domain=domain, split="test",
                                  protocol="all_images", run=run)
                    # an earlier evaluation of the same run: the dashboard must use the latest step
                    rows.append({**common, "metric": metric, "value": 0.0, "step": 10, "class": None})
                    rows.append({**common, "metric": metric, "value": _value(variant, seed, domain, metric),
                                 "step": 100, "class": None})
                rows.append({**common, "metric": "ap50_voc07", "value": 0.9, "step": 100, "class": "car"})
    return rows


@pytest.fixture()
def results_df():
    return pd.DataFrame(_rows() + _rows("seg", metrics=("miou",), seeds=(0, 1), variants=("source_only", "drsf")))


def test_ablation_table_uses_latest_step_and_seed_spread(results_df):
    table = dashboard.ablation_table(results_df, "det", "map50_voc07")
    summary = dashboard.long_summary(table)
    assert len(summary) == len(VARIANTS) * len(DWD_DOMAINS)
    row = summary[(summary.variant == "dfdr") & (summary.domain == "dusk_rainy")].iloc[0]
    assert row["mean"] == pytest.approx(_value("dfdr", 1, "dusk_rainy", "map50_voc07"))
    assert row["std"] == pytest.approx(0.01)  # sample std of -0.01, 0, +0.01
    assert row["n_seeds"] == 3
    assert list(summary["variant"].unique()) == list(VARIANTS)  # ablation order, not alphabetical
    assert list(summary["domain"].unique()) == list(DWD_DOMAINS)  # source first
    assert "all_images" in table.attrs["caption"]
    assert dashboard.ablation_table(results_df, "det", "map50_voc07", variants=()) is None


def test_seed_spread_figure_says_how_many_seeds(results_df):
    summary = dashboard.long_summary(dashboard.ablation_table(results_df, "det", "map50_voc07"))
    fig = dashboard.seed_spread_figure(summary, "map50_voc07", title="det")
    assert fig.axes[0].get_title() == "det: mean ± std over 3 seeds"
    one = dashboard.long_summary(dashboard.ablation_table(results_df[results_df.seed == 0], "det", "map50_voc07"))
    assert one["std"].isna().all()
    fig_one = dashboard.seed_spread_figure(one, "map50_voc07")
    assert fig_one.axes[0].get_title() == "map50_voc07: one seed (no error bars)"
    heights = [bar.get_height() for bar in fig_one.axes[0].patches]
    assert len(heights) == len(one) and max(heights) > 0


def test_variants_for_blocks():
    assert dashboard.variants_for_blocks(True, True) == ["drsf"]
    assert dashboard.variants_for_blocks(True, False) == ["dfdr"]
    assert dashboard.variants_for_blocks(False, True) == ["mdsf"]
    assert sorted(dashboard.variants_for_blocks(False, False)) == ["naive_consistency", "naive_synth", "source_only"]
    assert dashboard.variants_for_blocks(False, False, available=["source_only", "drsf"]) == ["source_only"]


def test_dashboard_controls_change_table_and_chart(results_df):
    dash = ablation_dashboard(results_df)
    c = dash.controls
    assert c["task"].value == "det" and c["metric"].value == "map50_voc07" and c["protocol"].value == "all_images"
    assert list(dash.table_df.index) == list(VARIANTS)
    assert "target_mean" in dash.shown_df.columns and list(dash.shown_df["seeds"]) == [3] * 5
    cell = dash.shown_df.loc["drsf", "daytime_clear (DC)"]
    assert cell == f"{100 * _value('drsf', 1, SOURCE_DOMAIN, 'map50_voc07'):.1f} ± 1.0"
    assert "mAP@0.5" in dash.table_html.value and "all_images" in dash.table_html.value
    assert dash.table_markdown.startswith("Table: ")
    png_all = dash.figure_png
    assert png_all.startswith(b"\x89PNG") and dash.chart.value == png_all

    c["variants"].value = ("source_only", "drsf")
    assert list(dash.table_df.index) == ["source_only", "drsf"]
    assert dash.figure_png != png_all

    png_two = dash.figure_png
    c["domains"].value = (SOURCE_DOMAIN, "night_sunny")
    assert [col.split(" ")[0] for col in dash.shown_df.columns] == [SOURCE_DOMAIN, "night_sunny", "target_mean", "seeds"]
    assert dash.figure_png != png_two

    c["metric"].value = "ap50_coco"
    assert c["variants"].value == ("source_only", "drsf")  # the selection survives a metric change
    assert dash.summary_df["mean"].iloc[0] == pytest.approx(_value("source_only", 1, SOURCE_DOMAIN, "ap50_coco"))

    c["task"].value = "seg"
    assert c["metric"].value == "miou"
    assert list(c["variants"].options) == ["source_only", "drsf"]
    assert list(dash.table_df.index) == ["source_only", "drsf"]
    assert "± " in dash.shown_df.iloc[0, 0]  # two seeds: a spread is shown


def test_dashboard_protocols_are_never_mixed(results_df):
    other = results_df[results_df.task == "det"].assign(protocol="drsf_code", run=lambda d: d.run + "-code")
    other = other.assign(value=other.value + 0.05)
    dash = ablation_dashboard(pd.concat([results_df, other], ignore_index=True))
    c = dash.controls
    assert list(c["protocol"].options) == ["all_images", "drsf_code"]
    first = dash.summary_df["mean"].to_numpy()
    c["protocol"].value = "drsf_code"
    assert dash.summary_df["mean"].to_numpy() == pytest.approx(first + 0.05)
    assert "drsf_code" in dash.table_html.value


def test_dashboard_block_toggles_select_variants(results_df):
    dash = ablation_dashboard(results_df)
    c = dash.controls
    c["dfdr"].value = True
    assert c["variants"].value == ("dfdr",) and list(dash.table_df.index) == ["dfdr"]
    c["mdsf"].value = True
    assert c["variants"].value == ("drsf",) and list(dash.table_df.index) == ["drsf"]
    c["dfdr"].value = False
    assert c["variants"].value == ("mdsf",)
    c["mdsf"].value = False
    assert set(c["variants"].value) == {"naive_synth", "source_only"}
    assert list(dash.table_df.index) == ["source_only", "naive_synth"]
    c["dfdr"].value = True
    c["variants"].value = ("dfdr", "drsf")  # a hand-picked set: the block boxes no longer describe it
    assert c["dfdr"].value is False and c["mdsf"].value is False
    assert list(dash.table_df.index) == ["dfdr", "drsf"]


def test_dashboard_empty_selection_says_so(results_df):
    dash = ablation_dashboard(results_df)
    dash.controls["variants"].value = ()
    assert dash.table_df is None and len(dash.summary_df) == 0
    assert "No result rows" in dash.table_html.value
    assert dash.figure_png.startswith(b"\x89PNG")


def test_dashboard_reads_run_folders(tmp_path):
    rows = _rows(seeds=(0, 1), variants=("naive_synth", "drsf"))
    for row in rows:
        append_jsonl(tmp_path / row["run"] / "results.jsonl", row)
    dash = ablation_dashboard(sorted(tmp_path.iterdir()))
    assert list(dash.table_df.index) == ["naive_synth", "drsf"]
    assert dash.summary_df["n_seeds"].eq(2).all()
    assert ablation_dashboard(tmp_path).shown_df.equals(dash.shown_df)  # a folder of runs works too


def test_dashboard_bad_input(tmp_path):
    with pytest.raises(DataError, match="value"):
        ablation_dashboard(pd.DataFrame([{"task": "det", "variant": "drsf", "seed": 0, "domain": "x", "metric": "m"}]))
    with pytest.raises(DataError, match="does not exist"):
        ablation_dashboard(tmp_path / "no-such-run")
    with pytest.raises(ConfigError, match="task 'seg'"):
        ablation_dashboard(pd.DataFrame(_rows(seeds=(0,))), task="seg")


class FakeMixModel:
    """Features, probabilities and prediction all depend on lambda in a known way.

    Its interface is the real one: ``build_model`` names the discriminator's outputs ``model.domain_names``
    (source, then the pseudo-domains in run order), and ``predict_mixed`` returns the same three keys.
    """

    domain_names = model_domain_names()

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.proj = torch.randn(8, 3, generator=gen)
        self.calls = []

    def encode(self, image):
        small = torch.nn.functional.avg_pool2d(image[None], 4)[0]  # [3, h, w]
        return torch.einsum("ck,khw->chw", self.proj, small)

    def predict_mixed(self, image_a, image_b, lam):
        self.calls.append(lam)
        z = lam * self.encode(image_a) + (1 - lam) * self.encode(image_b)
        probs = torch.zeros(len(self.domain_names))
        probs[0], probs[1] = lam, 1 - lam
        x0 = 4 + 20 * lam
        prediction = {"boxes": torch.tensor([[x0, 4.0, x0 + 10, 14.0]]), "labels": torch.tensor([3]),
                      "scores": torch.tensor([0.9])}
        return {"features": z[None], "domain_probs": probs, "prediction": prediction}


def _twins(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(3, 32, 48, generator=gen)
    return {SOURCE_DOMAIN: base, "daytime_foggy": 0.5 * base + 0.5, "night_sunny": 0.3 * base}


def test_mdsf_explorer_lambda_changes_everything():
    model = FakeMixModel()
    explorer = mdsf_explorer(model, {"s0": _twins(0), "s1": _twins(1)})
    c = explorer.controls
    assert c["lam"].continuous_update is True
    # the pair MDSF fuses: two pseudo-domain twins of one source image, never the source image itself
    assert c["domain_a"].value == "daytime_foggy" and c["domain_b"].value == "night_sunny"
    assert SOURCE_DOMAIN not in c["domain_a"].options and SOURCE_DOMAIN not in c["domain_b"].options
    before = (explorer.feature_png, explorer.probs_png, explorer.prediction_png, explorer.domain_probs.copy())
    c["lam"].value = 0.9
    assert model.calls[-1] == pytest.approx(0.9)
    assert explorer.feature_png != before[0]
    assert explorer.probs_png != before[1]
    assert explorer.prediction_png != before[2]
    assert explorer.domain_probs[0] == pytest.approx(0.9) and explorer.domain_probs[1] == pytest.approx(0.1)
    assert "daytime_foggy" in explorer.status.value and "night_sunny" in explorer.status.value
    # the fixed PCA basis: lambda = 1 shows twin A's features exactly as the basis saw them
    c["lam"].value = 1.0
    expected = explorer.basis.rgb(model.encode(_twins(0)["daytime_foggy"]).numpy())
    assert np.array_equal(explorer.basis.rgb(explorer.features), expected)
    feature_s0 = explorer.feature_png
    c["scene"].value = "s1"
    assert explorer.feature_png != feature_s0
    c["domain_a"].value = "night_sunny"
    assert explorer.pair == ("s1", "night_sunny", "daytime_foggy")  # B moves off A's pseudo-domain
    assert model.calls[-3:] == [1.0, 0.0, 1.0]  # basis refit on both twins, then the slider's lambda


def test_mdsf_explorer_segmentation_and_errors():
    class SegModel(FakeMixModel):
        def predict_mixed(self, image_a, image_b, lam):
            out = super().predict_mixed(image_a, image_b, lam)
            mask = torch.full((32, 48), 255)
            mask[:, : int(48 * lam)] = 13
            out["prediction"] = mask
            return out

    explorer = mdsf_explorer(SegModel(), [_twins(0)])
    png = explorer.prediction_png
    explorer.controls["lam"].value = 0.1
    assert explorer.prediction_png != png
    with pytest.raises(ConfigError, match="predict_mixed"):
        mdsf_explorer(object(), [_twins(0)])


def test_lambda_sweep_rows_and_figure():
    """One row per lambda, probabilities follow the model, the figure names both domains."""
    class ScoredModel(FakeMixModel):
        def predict_mixed(self, image_a, image_b, lam):
            out = super().predict_mixed(image_a, image_b, lam)
            out["prediction"]["scores"] = torch.tensor([lam, 0.5 * lam])
            out["prediction"]["boxes"] = out["prediction"]["boxes"].repeat(2, 1)
            return out

    twins = _twins(0)
    sweep = lambda_sweep(ScoredModel(), twins[SOURCE_DOMAIN], twins["daytime_foggy"], steps=5,
                                   domain_names=FakeMixModel.domain_names, score_threshold=0.3,
                                   names=(SOURCE_DOMAIN, "daytime_foggy"))
    assert list(sweep["lam"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert np.allclose(sweep[f"p({SOURCE_DOMAIN})"], sweep["lam"])
    assert np.allclose(sweep["p(daytime_foggy)"], 1 - sweep["lam"])
    assert list(sweep["boxes"]) == [0, 0, 1, 2, 2]  # scores lam and lam / 2 against 0.3
    assert np.allclose(sweep["top_score"], sweep["lam"])
    fig = dashboard.lambda_sweep_figure(sweep)
    assert f"z({SOURCE_DOMAIN})" in fig._suptitle.get_text() and "z(daytime_foggy)" in fig._suptitle.get_text()
    assert "daytime_foggy alone" in fig.axes[0].get_xlabel()
    assert fig.axes[2].get_ylabel() == "boxes with score >= 0.3"  # the count has its own axis

    class SegModel(FakeMixModel):
        def predict_mixed(self, image_a, image_b, lam):
            out = super().predict_mixed(image_a, image_b, lam)
            mask = torch.zeros((4, 10), dtype=torch.long)
            mask[:, : int(10 * lam)] = 1
            out["prediction"] = mask
            return out

    seg = lambda_sweep(SegModel(), twins[SOURCE_DOMAIN], twins["night_sunny"], steps=3)
    assert list(seg["agreement_with_a"]) == pytest.approx([0.0, 0.5, 1.0])
    assert "A alone" in dashboard.lambda_sweep_figure(seg).axes[1].get_ylabel()
    with pytest.raises(ConfigError, match="at least 2 steps"):
        lambda_sweep(SegModel(), twins[SOURCE_DOMAIN], twins["night_sunny"], steps=1)


def test_twin_explorer_with_callables():
    calls = []

    def entropy_fn(image):
        calls.append("entropy")
        return image.mean(0)  # a 2-D map that differs per twin

    def attribution_fn(image, method, reference):
        calls.append(method)
        assert torch.equal(reference, scenes[explorer_scene()][SOURCE_DOMAIN])
        return image[0] if method == "saliency" else image[2] ** 2

    scenes = {"s0": _twins(0), "s1": _twins(1)}
    current = ["s0"]  # the scene shown: its source image must arrive as the reference

    def explorer_scene():
        return current[0]

    explorer = twin_explorer(scenes, entropy_fn, attribution_fn, methods=("saliency", "gradcam"))
    assert list(explorer.stats_df.index) == [SOURCE_DOMAIN, "daytime_foggy", "night_sunny"]
    assert explorer.stats_df.loc["daytime_foggy", "mean entropy"] > explorer.stats_df.loc["night_sunny", "mean entropy"]
    agreement = explorer.stats_df.filter(like="agreement").iloc[:, 0]
    assert agreement.loc[SOURCE_DOMAIN] == pytest.approx(1.0)
    grid = explorer.grid_png
    n_calls = len(calls)
    explorer.controls["alpha"].value = 0.2
    assert explorer.grid_png != grid and len(calls) == n_calls  # overlay only: nothing recomputed
    explorer.controls["method"].value = "gradcam"
    assert calls[-1] == "gradcam"
    current[0] = "s1"
    explorer.controls["scene"].value = "s1"
    assert explorer.entropy[SOURCE_DOMAIN].shape == (32, 48)
    channels = twin_explorer([_twins(0)], lambda image: image.mean(dim=(1, 2)))  # 1-D: histogram row
    assert channels.grid_png.startswith(b"\x89PNG") and "agreement" not in " ".join(channels.stats_df.columns)


def test_mdsf_explorer_with_a_kit_model():
    """The explorer drives a real (untrained, tiny) DRSF segmenter through predict_mixed."""
    from drsf_kit.models import build_model

    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(1))
    scenes = {"s": {SOURCE_DOMAIN: image, "daytime_foggy": 0.5 * image + 0.5, "night_sunny": 0.3 * image}}
    torch.manual_seed(0)
    model = build_model("seg", "mini", "drsf", num_domains=5, hparams={"w_adv": 0.1})  # v3 with its adversary
    explorer = mdsf_explorer(model, scenes)
    assert explorer.features.ndim == 3 and explorer.domain_probs.sum() == pytest.approx(1.0, abs=1e-4)
    features, probs = explorer.features.copy(), explorer.domain_probs.copy()
    explorer.controls["lam"].value = 0.0
    assert not np.allclose(explorer.features, features) and not np.allclose(explorer.domain_probs, probs)
    plain = mdsf_explorer(build_model("seg", "mini", "drsf", num_domains=5), scenes)  # the default: no adversary
    features = plain.features.copy()
    plain.controls["lam"].value = 0.0
    assert not np.allclose(plain.features, features) and plain.domain_probs is None and "no adversary" in plain.status.value


def test_discriminator_outputs_are_labelled_with_the_runs_own_domain_order():
    """The explorer names the discriminator's top output after the run's pseudo-domain order.

    A run built from a config lists its pseudo-domains (ids 1..K); a model built for it carries those names,
    and the explorer must read them from the model, not from a constant that lists the domains differently.
    """
    from drsf_kit.config import RunConfig, config_from_dict
    from drsf_kit.train.engine import build_model_for

    def status_top(order):
        cfg = config_from_dict({"task": "seg", "variant": "drsf", "data": {"synth_domains": list(order)},
                                "model": {"hparams": {"w_adv": 0.1}}})  # v3 with its adversary
        torch.manual_seed(0)
        model = build_model_for(cfg, load_pretrained=False).eval()
        assert model.domain_names == (SOURCE_DOMAIN, *order)
        with torch.no_grad():  # the discriminator now always answers id 1 + order.index("night_sunny")
            clf = [m for m in model.mdsf.discriminator.modules() if isinstance(m, torch.nn.Linear)][-1]  # output layer
            clf.weight.zero_()
            clf.bias.zero_()
            clf.bias[1 + list(order).index("night_sunny")] = 50.0
        image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(1))
        explorer = mdsf_explorer(model, {"s": {SOURCE_DOMAIN: image, "daytime_foggy": 0.5 * image + 0.5,
                                               "night_sunny": 0.3 * image}})
        return explorer.status.value.split("top domain: ")[1]

    default = RunConfig().data.synth_domains
    assert default == model_domain_names()[1:]  # one order: config and data/classes agree
    assert status_top(default).startswith("night_sunny")
    swapped = tuple(reversed(default))
    assert status_top(swapped).startswith("night_sunny")


def test_pseudo_domain_order_has_one_source():
    """config.py, synth/ and the model builder read the one order in data/classes.py."""
    from drsf_kit.config import DataConfig
    from drsf_kit.data.classes import PSEUDO_DOMAINS
    from drsf_kit.models import build_model
    from drsf_kit.synth.base import DEFAULT_SYNTH_DOMAINS, SynthConfig

    assert DataConfig().synth_domains == DEFAULT_SYNTH_DOMAINS == SynthConfig(data="x").domains == PSEUDO_DOMAINS
    model = build_model("seg", "mini", "drsf", num_domains=1 + len(PSEUDO_DOMAINS))
    assert model.domain_names == (SOURCE_DOMAIN, *PSEUDO_DOMAINS)
    assert build_model("seg", "mini", "drsf", num_domains=3).domain_names == ("domain 0", "domain 1", "domain 2")
    with pytest.raises(ConfigError, match="2 names for num_domains=5"):
        build_model("seg", "mini", "drsf", num_domains=5, domain_names=("a", "b"))


def test_twin_explorer_with_a_kit_model():
    """With a model, entropy and attributions come from drsf_kit.analysis, one target for all twins."""
    from drsf_kit.models import build_model

    torch.manual_seed(0)
    model = build_model("seg", "mini", "source_only", num_domains=1)
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(2))
    explorer = twin_explorer({"s": {SOURCE_DOMAIN: image, "night_sunny": 0.3 * image}}, model=model)
    assert list(explorer.controls["method"].options) == ["gradcam", "integrated_gradients"]
    assert explorer.entropy["night_sunny"].shape == (64, 96)
    assert ((explorer.entropy[SOURCE_DOMAIN] >= 0) & (explorer.entropy[SOURCE_DOMAIN] <= 1)).all()
    explorer.controls["method"].value = "integrated_gradients"
    maps = explorer.attribution
    assert maps[SOURCE_DOMAIN].shape == (64, 96) and not np.allclose(maps[SOURCE_DOMAIN], maps["night_sunny"])
    with pytest.raises(ConfigError, match="entropy_fn or a model"):
        twin_explorer({"s": {SOURCE_DOMAIN: image}})


def test_render_prediction_and_class_legend_read_the_same_outputs():
    from drsf_kit.data.classes import CITYSCAPES_CLASSES
    from drsf_kit.viz import images

    image = np.zeros((4, 10, 3), np.uint8)
    logits = torch.zeros(1, 19, 4, 10)
    logits[0, 0, :, :7] = 1.0  # road on 70% of the pixels
    logits[0, 10, :, 7:] = 1.0  # sky on 30%
    for wrapped in (logits, [logits], {"out": logits}, logits[0], logits[0].argmax(0)):
        assert images.render_prediction(image, wrapped).shape == (4, 10, 3)
        legend = images.class_legend_html(wrapped)
        road, sky = CITYSCAPES_CLASSES[0], CITYSCAPES_CLASSES[10]
        assert f"{road} 70%" in legend and f"{sky} 30%" in legend and legend.index(road) < legend.index(sky)
    boxes = {"boxes": torch.tensor([[1.0, 1.0, 5.0, 3.0]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
    assert not np.array_equal(images.render_prediction(image, [boxes]), image)
    assert images.class_legend_html(boxes) == "" and images.class_legend_html({"other": 1}) == ""
    with pytest.raises(ConfigError, match=r"keys \['other'\]"):
        images.render_prediction(image, {"other": 1})
    with pytest.raises(ConfigError, match="shape"):
        images.render_prediction(image, torch.zeros(5))
