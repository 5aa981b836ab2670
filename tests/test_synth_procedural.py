"""The procedural backend, the generator interface, prompts, the consistency score and the CLI run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from tiny_diffusion import make_tiny_dwd

from drsf_kit.data.manifest import REQUIRED_FIELDS, read_manifests
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.synth import (
    DEFAULT_PROMPTS,
    GENERATORS,
    SourceItem,
    SynthConfig,
    build_generator,
    item_seed,
    layout_consistency,
    load_prompts,
)
from drsf_kit.synth.procedural import DOMAIN_EFFECTS, apply_domain, estimate_horizon


@pytest.fixture(scope="module")
def dwd(tmp_path_factory):
    return make_tiny_dwd(tmp_path_factory.mktemp("dwd"), n=6, seed=1)


def _source_items(root, n=4):
    from drsf_kit.data.dwd import DWDDetection
    from drsf_kit.synth.runner import load_source_item

    ds = DWDDetection(root, "daytime_clear", "train", progress=False)
    return [load_source_item(ds, s, with_mask=False) for s in sorted(ds.ids)[:n]]


def _gray(img) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float64)


def test_generators_dict_and_unknown_backend():
    assert set(GENERATORS) == {"procedural", "img2img", "gligen", "controlnet"}
    with pytest.raises(ConfigError) as err:
        build_generator(SynthConfig(data="x", backend="dalle"))
    for name in GENERATORS:
        assert name in str(err.value)


def test_item_seed_depends_on_every_field_only():
    base = item_seed(0, "img0001", "daytime_foggy", 0)
    assert base == item_seed(0, "img0001", "daytime_foggy", 0)
    others = {item_seed(1, "img0001", "daytime_foggy", 0), item_seed(0, "img0002", "daytime_foggy", 0),
              item_seed(0, "img0001", "night_rainy", 0), item_seed(0, "img0001", "daytime_foggy", 1)}
    assert base not in others and len(others) == 4
    assert 0 <= base < 2**63


def test_procedural_is_deterministic_per_seed(dwd):
    gen = build_generator(SynthConfig(data=str(dwd)))
    items = _source_items(dwd, 3)
    a = gen.generate(items, "night_rainy", [5, 6, 7])
    b = gen.generate(items[1:2], "night_rainy", [6])  # another batch composition
    c = gen.generate(items, "night_rainy", [8, 6, 7])
    assert np.array_equal(np.asarray(a[1].image), np.asarray(b[0].image))
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(c[0].image))
    assert all(t.size == [320, 180] and t.crop is None and t.image.size == (320, 180) for t in a)
    assert gen.identity()["model_hash"] == build_generator(SynthConfig(data="x")).identity()["model_hash"]


def test_domain_image_statistics(dwd):
    """Fog brightens and flattens; dusk and night darken; rain darkens; night keeps light sources."""
    for item in _source_items(dwd, 4):
        src = np.asarray(item.image)
        g0 = _gray(item.image)
        out = {d: apply_domain(src, d, seed=3)[0] for d in DOMAIN_EFFECTS}
        gray = {d: np.asarray(Image.fromarray(o).convert("L"), dtype=np.float64) for d, o in out.items()}
        assert gray["daytime_foggy"].mean() > g0.mean() + 10
        assert gray["daytime_foggy"].std() < 0.85 * g0.std()
        assert gray["dusk_rainy"].mean() < 0.75 * g0.mean()
        assert gray["night_sunny"].mean() < 0.4 * g0.mean()
        assert gray["night_rainy"].mean() < 0.4 * g0.mean()
        # dusk is warm: red over blue, unlike the bluish night
        dusk, night = out["dusk_rainy"].astype(float), out["night_sunny"].astype(float)
        assert dusk[..., 0].mean() > dusk[..., 2].mean()
        assert night[..., 2].mean() > night[..., 0].mean()
        # the red tail lights stay bright at night while the scene around them darkens
        red = (src[..., 0] > 200) & (src[..., 1] < 80) & (src[..., 2] < 80)
        if red.sum() >= 4:
            assert out["night_sunny"][red][:, 0].mean() > 150
        # fog is stronger far away (toward the horizon) than near the camera (bottom rows)
        h = src.shape[0]
        horizon = estimate_horizon(src.astype(np.float32) / 255)
        diff = np.abs(gray["daytime_foggy"] - g0)
        assert diff[max(0, horizon - 5):horizon + 5].mean() > diff[h - 10:].mean()


def test_unknown_procedural_domain_lists_valid():
    with pytest.raises(ConfigError) as err:
        apply_domain(np.zeros((16, 16, 3), np.uint8), "snowy", 0)
    assert "daytime_foggy" in str(err.value) and "snowy" in str(err.value)


def test_layout_consistency_scores(dwd):
    scores = {"same": [], "fog": [], "night": [], "moved": [], "noise": []}
    items = _source_items(dwd, 4)
    for item in items:
        src = np.asarray(item.image)
        noise = np.random.default_rng(0).integers(0, 255, src.shape, dtype=np.uint8)
        twins = {"same": src, "fog": apply_domain(src, "daytime_foggy", 0)[0],
                 "night": apply_domain(src, "night_sunny", 0)[0], "moved": np.roll(src, 60, axis=1),
                 "noise": noise}
        for name, arr in twins.items():
            scores[name].append(layout_consistency(item.image, Image.fromarray(arr), item.boxes))
    assert all(0.0 <= v <= 1.0 for vals in scores.values() for v in vals)
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["same"] > 0.99
    # weather keeps the layout; moving the objects or replacing the image does not
    assert mean["fog"] > 0.5 and mean["night"] > 0.5
    assert mean["moved"] < 0.25 and mean["noise"] < 0.15
    # a crop-and-resize twin is compared in its own geometry
    item, crop = items[0], [70, 0, 250, 180]
    twin = item.image.crop(crop).resize((64, 64), Image.BICUBIC)
    assert layout_consistency(item.image, twin, item.boxes, crop) > 0.9
    assert layout_consistency(item.image, twin, item.boxes, [0, 0, 180, 180]) < 0.5


def test_prompt_file_overrides(tmp_path):
    p = tmp_path / "prompts.yaml"
    p.write_text("prompts:\n  daytime_foggy: misty avenue\n  snowy: a snowy street\nscene: road\n")
    prompts = load_prompts(p)
    assert prompts.prompt("daytime_foggy") == "misty avenue"
    assert prompts.prompt("night_rainy") == DEFAULT_PROMPTS["night_rainy"]
    assert prompts.prompt("snowy") == "a snowy street"
    assert prompts.phrase("bike", "dusk_rainy") == "A bicycle is moving in a rainy road during dusk."
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"night_sunny": "dark road"}))
    assert load_prompts(flat).prompt("night_sunny") == "dark road"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"prompts": {}, "colour": "red"}))
    with pytest.raises(DataError, match="colour"):
        load_prompts(bad)
    with pytest.raises(ConfigError, match="snowy"):
        load_prompts(None).prompt("snowy")


def test_cli_procedural_run_manifest_and_filter(dwd, tmp_path, capsys):
    from drsf_kit.cli import main

    out = tmp_path / "synth"
    code = main(["synth", "--data", str(dwd), "--out", str(out), "--domains", "daytime_foggy,night_sunny",
                 "--per-image", "2", "--seed", "3", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["generated"] == 6 * 2 * 2
    rows = read_manifests(out / "procedural")
    assert len(rows) == 24
    for row in rows:
        assert all(f in row for f in REQUIRED_FIELDS)
        for f in ("strength", "steps", "guidance", "model", "model_hash", "seconds", "consistency", "index",
                  "size", "crop"):
            assert f in row
        assert row["path"] == f"{row['source_id']}_{row['index']}.jpg"
        assert row["seed"] == item_seed(3, row["source_id"], row["domain"], row["index"])
        assert 0.0 <= row["consistency"] <= 1.0 and row["size"] == [320, 180] and row["crop"] is None
        with Image.open(out / "procedural" / row["domain"] / row["path"]) as im:
            assert im.size == (320, 180)
    # a strict consistency threshold drops twins: they are neither written nor listed, only counted
    strict = sorted(r["consistency"] for r in rows if r["domain"] == "night_sunny")[6]
    out2 = tmp_path / "strict"
    assert main(["synth", "--data", str(dwd), "--out", str(out2), "--domains", "night_sunny", "--per-image", "2",
                 "--seed", "3", "--min-consistency", str(strict), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    kept = read_manifests(out2 / "procedural")
    assert summary["domains"]["night_sunny"]["filtered"] == 12 - len(kept) > 0
    assert all(r["consistency"] >= strict for r in kept)
    assert len(list((out2 / "procedural" / "night_sunny").glob("*.jpg"))) == len(kept)


def test_cli_reports_bad_input(dwd, tmp_path, capsys):
    from drsf_kit.cli import main

    assert main(["synth", "--data", str(dwd), "--out", str(tmp_path), "--shard", "3/3"]) == 1
    assert "--shard" in capsys.readouterr().err
    assert main(["synth", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert main(["synth", "--data", str(dwd), "--out", str(tmp_path), "--domains", "snowy", "--limit", "1",
                 "--no-progress"]) == 1
    assert "snowy" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path)]) == 1
    assert "--data" in capsys.readouterr().err


def test_source_item_fields(dwd):
    item = _source_items(dwd, 1)[0]
    assert isinstance(item, SourceItem) and item.boxes.shape[1] == 4 and item.labels.min() >= 1
    assert (item.boxes[:, 2] > item.boxes[:, 0]).all()
