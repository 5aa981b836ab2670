"""Gap metrics with known answers, the gap table, and `drsf gap` end to end on a tiny DWD layout."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from drsf_kit.analysis.gap import (
    closest_pseudo_domains,
    compare_gap_tables,
    domain_classifier_accuracy,
    frechet_distance,
    gap_matrix,
    gap_table,
    mmd,
)
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.evaluation.tables import frame_to_markdown

# ---------------------------------------------------------------------------------------------- metrics


def test_mmd_near_zero_for_one_distribution_and_grows_with_shift():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    same = mmd(x, y)
    assert abs(same) < 0.01
    shifted = [mmd(x, rng.normal(size=(200, 8)) + s) for s in (0.25, 0.5, 1.0, 2.0)]
    assert all(b > a for a, b in zip(shifted, shifted[1:])), shifted
    assert shifted[0] > same


def test_mmd_is_unbiased_around_zero():
    # The U-statistic of two samples of one distribution averages to ~0 and is sometimes negative.
    rng = np.random.default_rng(1)
    values = [mmd(rng.normal(size=(30, 4)), rng.normal(size=(30, 4)), bandwidth=2.0) for _ in range(40)]
    assert abs(np.mean(values)) < 0.01
    assert min(values) < 0


def test_mmd_fixed_bandwidth_matches_direct_formula():
    x = np.array([[0.0], [1.0], [3.0]])
    y = np.array([[0.5], [2.0]])
    k = lambda a, b: np.exp(-((a - b) ** 2) / 2.0)  # noqa: E731  sigma = 1
    kxx = sum(k(x[i, 0], x[j, 0]) for i in range(3) for j in range(3) if i != j) / 6
    kyy = 2 * k(0.5, 2.0) / 2
    kxy = sum(k(a, b) for a in x[:, 0] for b in y[:, 0]) / 6
    assert mmd(x, y, bandwidth=1.0) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12)


def test_frechet_identical_zero_and_shift_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = rng.normal(size=6)
    # Equal covariances: the distance is ||mu1 - mu2||^2.
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_frechet_scaled_gaussian_closed_form():
    # y = a x + b has covariance a^2 C, so tr(C + a^2 C - 2 a C) = (1 - a)^2 tr(C).
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 5)) * np.arange(1, 6)
    y = 0.5 * x + 1.0
    c = np.cov(x, rowvar=False)
    expected = np.sum((x.mean(0) - y.mean(0)) ** 2) + 0.25 * np.trace(c)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)


def test_frechet_fewer_samples_than_dimensions():
    # Singular covariances: the distance must still equal the closed form for a pure shift.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 64)) * 1e-3
    shift = rng.normal(size=64) * 1e-3
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-4)


def test_domain_classifier_chance_and_separable():
    rng = np.random.default_rng(0)
    same = domain_classifier_accuracy(rng.normal(size=(120, 10)), rng.normal(size=(120, 10)))
    assert 0.35 < same["accuracy"] < 0.65
    far = domain_classifier_accuracy(rng.normal(size=(60, 10)), rng.normal(size=(60, 10)) + 4.0)
    assert far["accuracy"] > 0.97
    assert far["proxy_a_distance"] == pytest.approx(2 * (1 - 2 * (1 - far["accuracy"])))
    assert far["folds"] == 5


@pytest.mark.parametrize("fn", [mmd, frechet_distance, domain_classifier_accuracy])
def test_bad_inputs_give_clear_errors(fn):
    ok = np.zeros((5, 3)) + np.arange(3)
    with pytest.raises(ConfigError, match="dimensions differ"):
        fn(ok, np.ones((5, 4)))
    with pytest.raises(DataError, match="at least 2 samples"):
        fn(ok, np.ones((1, 3)))
    bad = np.ones((5, 3))
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        fn(ok, bad)
    with pytest.raises(DataError, match="2-D"):
        fn(ok, np.ones(5))


# ---------------------------------------------------------------------------------------------- tables


def _toy_features(seed: int = 0, offset: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = {"daytime_clear": 0.0, "night_sunny": 3.0, "synth:night_sunny": 2.6 + offset, "synth:daytime_foggy": -2.0}
    return {k: rng.normal(size=(40, 6)) + v for k, v in base.items()}


def test_gap_table_rows_and_closest_pseudo_domain():
    feats = _toy_features()
    table = gap_table(feats, ["synth:night_sunny", "synth:daytime_foggy"], ["night_sunny"], "daytime_clear",
                      progress=False)
    assert len(table) == 3
    assert set(table["kind"]) == {"pseudo", "source"}
    assert {"mmd", "frechet", "domain_acc", "proxy_a_distance"} <= set(table.columns)
    assert closest_pseudo_domains(table) == {"night_sunny": "synth:night_sunny"}
    flags = dict(zip(table["domain"], table["closer_than_source"]))
    assert flags["synth:night_sunny"] is True or flags["synth:night_sunny"] == True  # noqa: E712
    assert not flags["synth:daytime_foggy"]
    matrix = gap_matrix(table, "mmd")
    assert list(matrix.columns) == ["synth:night_sunny", "synth:daytime_foggy", "daytime_clear"]
    md = frame_to_markdown(table, caption="Caption names the metric", index=False)
    assert md.startswith("Caption names the metric") and "| target | domain |" in md


def test_gap_table_errors():
    feats = _toy_features()
    with pytest.raises(ConfigError, match="no features for"):
        gap_table(feats, ["synth:rain"], ["night_sunny"], progress=False)
    with pytest.raises(ConfigError, match="unknown gap metrics"):
        gap_table(feats, [], ["night_sunny"], "daytime_clear", metrics=("kl",), progress=False)
    feats["synth:daytime_foggy"] = feats["synth:daytime_foggy"][:, :4]
    with pytest.raises(ConfigError, match="dimensions differ"):
        gap_table(feats, ["synth:daytime_foggy"], ["night_sunny"], progress=False)


def test_compare_gap_tables_deltas():
    kw = dict(pseudo_domains=["synth:night_sunny"], real_targets=["night_sunny"], source="daytime_clear",
              metrics=("mmd", "frechet"), progress=False)
    before = gap_table(_toy_features(), **kw)
    after = gap_table(_toy_features(offset=0.4), **kw)  # the pseudo-domain moved closer to the target
    cmp = compare_gap_tables(before, after)
    row = cmp[cmp["domain"] == "synth:night_sunny"].iloc[0]
    assert row["mmd_delta"] == pytest.approx(row["mmd_after"] - row["mmd_before"])
    assert row["frechet_delta"] < 0
    src = cmp[cmp["domain"] == "daytime_clear"].iloc[0]
    assert src["mmd_delta"] == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="no \\(target, domain\\) pair"):
        compare_gap_tables(before, after.assign(target="other"))


# ---------------------------------------------------------------------------------------------- CLI

_STYLE = {"daytime_clear": (1.0, None), "daytime_foggy": (0.4, 190.0), "night_sunny": (0.25, None)}


def _styled(img: np.ndarray, domain: str, rng) -> Image.Image:
    keep, fog = _STYLE[domain]
    out = img * keep + (fog * (1 - keep) if fog is not None else 0.0) + rng.normal(0, 3, img.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def make_layout(root, n: int = 6, seed: int = 0):
    """A DWD-layout root (3 domains, n scenes each) plus synthetic twins of the source in 2 pseudo-domains."""
    rng = np.random.default_rng(seed)
    data, synth = root / "dwd", root / "synth" / "procedural"

    def scene():
        img = np.zeros((60, 100, 3), np.float32)
        img[:30], img[30:] = rng.uniform(120, 230, 3), rng.uniform(40, 110, 3)
        for _ in range(3):
            x, y = rng.integers(0, 75), rng.integers(20, 45)
            img[y:y + 12, x:x + 20] = rng.uniform(0, 255, 3)
        return img

    sources = {}
    for d in _STYLE:
        voc = data / d / "VOC2007"
        (voc / "JPEGImages").mkdir(parents=True)
        (voc / "ImageSets" / "Main").mkdir(parents=True)
        ids = [f"{d[:3]}{i:03d}" for i in range(n)]
        for i in ids:
            img = scene()
            sources[i] = img
            _styled(img, d, rng).save(voc / "JPEGImages" / f"{i}.jpg")
        (voc / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids) + "\n")
    for d in ("daytime_foggy", "night_sunny"):
        (synth / d).mkdir(parents=True)
        rows = []
        for i in [k for k in sources if k.startswith("day")][:n]:
            _styled(sources[i], d, rng).save(synth / d / f"{i}.jpg")
            rows.append(dict(source_id=i, source_domain="daytime_clear", domain=d, path=f"{i}.jpg",
                             generator="procedural", prompt=None, seed=0))
        (synth / d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, root / "synth"


def test_drsf_gap_cli_tables_and_closest(tmp_path, capsys):
    from drsf_kit.cli import main

    data, synth = make_layout(tmp_path)
    out = tmp_path / "out"
    argv = ["gap", "--data", str(data), "--synth", str(synth), "--out", str(out), "--cache", str(tmp_path / "cache"),
            "--no-figures"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # Fog twins are closest to real fog, night twins to real night: the styles dominate the features.
    assert "daytime_foggy: closest pseudo-domain synth:daytime_foggy" in printed
    assert "night_sunny: closest pseudo-domain synth:night_sunny" in printed
    table = pd.read_csv(out / "gap_table.csv")
    assert len(table) == 2 * 3 and set(table["target"]) == {"daytime_foggy", "night_sunny"}
    payload = json.loads((out / "gap_table.json").read_text())
    assert payload["meta"]["stage"] == "layer4" and payload["meta"]["n_per_group"]["synth:night_sunny"] == 6
    assert "MMD" in (out / "gap_table.md").read_text().splitlines()[0]
    assert list((tmp_path / "cache").glob("feat_layer4_*.npz"))


def test_drsf_gap_cli_bad_stage_message(tmp_path, capsys):
    from drsf_kit.cli import main

    data, synth = make_layout(tmp_path, n=3)
    rc = main(["gap", "--data", str(data), "--synth", str(synth), "--stage", "layer9", "--out", str(tmp_path / "o"),
               "--cache", "none", "--no-figures"])
    err = capsys.readouterr().err
    assert rc == 1 and "no stage 'layer9'" in err and "layer2" in err


def test_run_gap_writes_every_figure_and_comparison(tmp_path):
    from drsf_kit.workflows.gap import run_gap

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, 2, 1),
                                torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, 2, 1))
    data, synth = make_layout(tmp_path, n=5)
    kw = dict(model=model, stage="2", out_dir=tmp_path / "a", cache_dir=None, progress=False, size=(60, 100),
              ig_steps=4)
    first = run_gap(data, synth, figures=False, **kw)
    kw["out_dir"] = tmp_path / "b"
    second = run_gap(data, synth, compare=first["out_dir"] / "gap_table.json", **kw)
    names = {p.name for p in second["figures"]}
    assert names == {"tsne.png", "pca.png", "gap_heatmap.png", "entropy.png", "attribution.png", "gap_change.png"}
    for p in second["figures"]:
        assert p.stat().st_size > 5000 and p.parent == tmp_path / "b" / "figures"
    cmp = pd.read_csv(tmp_path / "b" / "gap_compare.csv")
    # The same model on the same images: nothing moved.
    assert np.allclose(cmp["mmd_delta"], 0.0) and np.allclose(cmp["frechet_delta"], 0.0)


def test_gap_table_is_scale_free_and_has_a_source_yardstick():
    """Scaling every feature by 1e-6 (or 1e3) leaves the Frechet column unchanged: it is on standardised
    features; ``frechet_vs_source`` is 1 for the source row and below 1 for a pseudo-domain nearer the target."""
    feats = _toy_features()
    kw = dict(pseudo_domains=["synth:night_sunny", "synth:daytime_foggy"], real_targets=["night_sunny"],
              source="daytime_clear", metrics=("frechet",), closest_by="frechet", progress=False)
    table = gap_table(feats, **kw)
    for factor in (1e-6, 1e3):
        scaled = gap_table({k: v * factor for k, v in feats.items()}, **kw)
        assert np.allclose(scaled["frechet"], table["frechet"], rtol=1e-6)
    by = table.set_index("domain")
    assert by.loc["daytime_clear", "frechet_vs_source"] == pytest.approx(1.0)
    assert by.loc["synth:night_sunny", "frechet_vs_source"] < 1.0 < by.loc["synth:daytime_foggy", "frechet_vs_source"]
    # per dimension on target-standardised features: a unit shift of every dimension adds about 1
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 4))
    z = gap_table({"t": x, "p": rng.normal(size=(400, 4)) + 1.0, "s": rng.normal(size=(400, 4))},
                  ["p"], ["t"], "s", metrics=("frechet",), closest_by="frechet",
                  progress=False).set_index("domain")
    assert z.loc["p", "frechet"] == pytest.approx(1.0, abs=0.15)


def test_domain_probe_keeps_ranking_after_accuracy_saturates():
    """Two separable pairs both reach accuracy 1; the log-loss and margin still say which is further."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 10))
    near = domain_classifier_accuracy(a, rng.normal(size=(60, 10)) + 2.0)
    far = domain_classifier_accuracy(a, rng.normal(size=(60, 10)) + 6.0)
    assert near["accuracy"] == far["accuracy"] == 1.0
    assert far["log_loss"] < near["log_loss"] < 0.1 and far["margin"] > near["margin"] > 0
    same = domain_classifier_accuracy(a, rng.normal(size=(60, 10)))
    assert same["log_loss"] > 0.5 and abs(same["margin"]) < 1.0
    table = gap_table({"t": a, "p": rng.normal(size=(60, 10)) + 2.0}, ["p"], ["t"], metrics=("domain_acc",),
                      closest_by="domain_acc", progress=False)
    assert {"domain_logloss", "domain_margin"} <= set(table.columns)
