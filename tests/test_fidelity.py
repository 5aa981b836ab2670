"""Generator failure modes and the appearance gap of the procedural backend: seeded, recorded in the
manifest, no effect at 0."""

from __future__ import annotations

import numpy as np
import pytest

from drsf_kit.errors import ConfigError
from drsf_kit.synth.fidelity import (GAP_KINDS, KINDS, LEVELS, appearance_gap, check_gap, parse_fidelity,
                                     parse_level, perturb_image, perturb_objects)
from drsf_kit.synth.procedural import apply_domain


def _scene():
    rng = np.random.default_rng(0)
    img = (rng.random((90, 160, 3)) * 80 + 60).astype(np.uint8)
    boxes = np.array([[10, 40, 40, 80], [60, 30, 90, 70], [110, 45, 150, 85]], np.float32)
    for x0, y0, x1, y1 in boxes.astype(int):
        img[y0:y1, x0:x1] = (230, 40, 40)  # bright objects on a dull background
    return img, boxes


@pytest.mark.parametrize("domain", ["daytime_foggy", "dusk_rainy", "night_sunny"])
def test_strength_zero_is_bitwise_the_clean_twin(domain):
    img, boxes = _scene()
    clean, info = apply_domain(img, domain, 11)
    zero, info0 = apply_domain(img, domain, 11, 0.0, boxes)
    assert np.array_equal(clean, zero) and info == info0 and "perturbations" not in info0


def test_perturbations_are_seeded_counted_and_change_the_objects():
    img, boxes = _scene()
    a, ia = apply_domain(img, "daytime_foggy", 5, 3.0, boxes)
    b, ib = apply_domain(img, "daytime_foggy", 5, 3.0, boxes)
    c, _ = apply_domain(img, "daytime_foggy", 6, 3.0, boxes)
    assert np.array_equal(a, b) and ia == ib
    assert not np.array_equal(a, c)
    counts = ia["perturbations"]
    assert set(counts) == set(KINDS)
    # at strength 3 every box fails in one of the three object ways
    assert counts["missing"] + counts["shifted"] + counts["reshaped"] == len(boxes)
    # a missing object's box no longer holds its red pixels
    f = img.astype(np.float32) / 255
    out, oc = perturb_objects(f, boxes[:1], 100.0, np.random.default_rng(3))
    kind = next(k for k in ("missing", "shifted", "reshaped") if oc[k])
    inside = out[40:80, 10:40]
    red = (inside[..., 0] > 0.8) & (inside[..., 1] < 0.3)
    assert red.mean() < 0.9, kind


def test_image_artefacts_counted_and_zero_strength_untouched():
    f = np.full((40, 60, 3), 0.5, np.float32)
    same, counts = perturb_image(f, 0.0, np.random.default_rng(0))
    assert same is f and not any(counts.values())
    out, counts = perturb_image(f, 5.0, np.random.default_rng(0))
    assert counts["smoothed"] == 1 and counts["style_drift"] == 1 and not np.allclose(out, f)


def test_manifest_rows_record_fidelity_and_counts(tiny_weather, tmp_path):
    from drsf_kit.data.manifest import read_manifests
    from drsf_kit.synth import SynthConfig
    from drsf_kit.synth.runner import run_synth

    for level in ("clean", "ldm"):
        run_synth(SynthConfig(data=str(tiny_weather), out=str(tmp_path / level), domains=("daytime_foggy",),
                              limit=4, fidelity=parse_fidelity(level), progress=False))
    clean = read_manifests(tmp_path / "clean" / "procedural")
    ldm = read_manifests(tmp_path / "ldm" / "procedural")
    assert all("perturbations" not in r and "fidelity" not in r for r in clean)
    assert all(r["fidelity"] == 1.0 and set(r["perturbations"]) == set(KINDS) for r in ldm)
    assert sum(sum(r["perturbations"].values()) for r in ldm) > 0


@pytest.mark.parametrize("domain", ["daytime_foggy", "night_sunny"])
def test_gap_zero_leaves_the_ldm_twin_bitwise_as_it_was(domain):
    img, boxes = _scene()
    ldm, info = apply_domain(img, domain, 11, 1.0, boxes)
    same, info0 = apply_domain(img, domain, 11, 1.0, boxes, 0.0)
    assert np.array_equal(ldm, same) and info == info0 and "appearance_gap" not in info0


def test_gap_is_seeded_recorded_and_pulls_a_night_twin_toward_grey_and_its_source():
    img, boxes = _scene()
    base, _ = apply_domain(img, "night_sunny", 4, 1.0, boxes)
    a, ia = apply_domain(img, "night_sunny", 4, 1.0, boxes, 0.8)
    b, ib = apply_domain(img, "night_sunny", 4, 1.0, boxes, 0.8)
    c, ic = apply_domain(img, "night_sunny", 5, 1.0, boxes, 0.8)
    assert np.array_equal(a, b) and ia == ib and ia["appearance_gap"] != ic["appearance_gap"]
    drawn = ia["appearance_gap"]
    assert drawn["gap"] == 0.8 and set(drawn) == {"gap", *GAP_KINDS}
    assert 0.8 * 0.5 <= drawn["kept_source"] <= 0.8 * 0.9 and 0.8 * 0.5 <= drawn["grey_pull"] <= 0.8 * 0.9
    # the gap draws from its own generator: the failure-mode counts are those of the twin without it
    assert ia["perturbations"] == apply_domain(img, "night_sunny", 4, 1.0, boxes)[1]["perturbations"]
    # a dark night twin comes out lighter, and closer to its daytime source
    assert a.mean() > base.mean() + 10
    assert np.abs(a.astype(float) - img).mean() < np.abs(base.astype(float) - img).mean()


def test_appearance_gap_arithmetic_on_a_flat_image():
    twin = np.full((4, 6, 3), 0.1, np.float32)
    source = np.full((4, 6, 3), 0.7, np.float32)
    rng = np.random.default_rng(0)
    out, drawn = appearance_gap(twin, source, 1.0, rng)
    keep, pull = drawn["kept_source"], drawn["grey_pull"]
    mixed = 0.1 * (1 - keep) + 0.7 * keep
    assert np.allclose(out, mixed + pull * (0.5 - mixed), atol=1e-4)
    same, nothing = appearance_gap(twin, source, 0.0, rng)
    assert same is twin and nothing == {}


def test_gap_only_twin_has_no_failure_modes(tiny_weather, tmp_path):
    from drsf_kit.data.manifest import read_manifests
    from drsf_kit.synth import SynthConfig
    from drsf_kit.synth.runner import run_synth

    run_synth(SynthConfig(data=str(tiny_weather), out=str(tmp_path / "g"), domains=("night_sunny",),
                          limit=3, appearance_gap=0.5, progress=False))
    rows = read_manifests(tmp_path / "g" / "procedural")
    assert len(rows) == 3
    assert all("perturbations" not in r and r["appearance_gap"]["gap"] == 0.5 for r in rows)


def test_gap_outside_the_procedural_backend_or_range_is_refused(tiny_weather, tmp_path):
    from drsf_kit.synth import SynthConfig
    from drsf_kit.synth.runner import run_synth

    with pytest.raises(ConfigError, match="appearance-gap must be in"):
        run_synth(SynthConfig(data=str(tiny_weather), out=str(tmp_path), appearance_gap=1.5, progress=False))
    with pytest.raises(ConfigError, match="backend 'img2img'"):
        run_synth(SynthConfig(data=str(tiny_weather), out=str(tmp_path), backend="img2img", fidelity=1.0,
                              progress=False))
    assert not any(tmp_path.iterdir())


def test_levels_and_gap_parsing():
    assert parse_level("clean") == (0.0, 0.0) and parse_level("ldm") == (1.0, 0.0)
    assert parse_level("ldm_gap") == LEVELS["ldm_gap"] and LEVELS["ldm_gap"][1] > 0
    assert parse_level("0.5") == (0.5, 0.0)
    assert check_gap("0.25") == 0.25
    for bad in ("x", -0.1, 1.01):
        with pytest.raises(ConfigError):
            check_gap(bad)


def test_parse_fidelity():
    assert parse_fidelity("clean") == 0.0 and parse_fidelity("ldm") == 1.0 and parse_fidelity("0.5") == 0.5
    for bad in ("dreamy", "-1", "nan"):
        with pytest.raises(ConfigError):
            parse_fidelity(bad)


def test_box_recall_counts_boxes_a_detector_finds():
    import torch

    from drsf_kit.synth.consistency import box_recall

    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]])
    items = [(torch.zeros(3, 8, 8), {"boxes": gt, "labels": torch.tensor([1, 2])}) for _ in range(2)]

    class Fake:  # finds box 0 exactly, box 1 with the wrong class, plus one low-confidence hit
        def eval(self):
            return self

        def __call__(self, images):
            out = {"boxes": torch.tensor([[0.0, 0, 10, 11], [20, 20, 40, 40], [20, 20, 40, 40]]),
                   "labels": torch.tensor([1, 3, 2]), "scores": torch.tensor([0.9, 0.9, 0.2])}
            return [out for _ in images]

    r = box_recall(Fake(), items)
    assert r == {"boxes": 4, "found": 2, "recall": 0.5}
    assert box_recall(Fake(), items, score=0.1)["found"] == 4


def test_gap_falls_back_to_the_generated_scene_so_a_missing_object_stays_missing():
    img, boxes = _scene()
    for seed in range(50):  # the first seed whose single box comes back missing (at strength 2 every box fails)
        plain, info = apply_domain(img, "daytime_clear", seed, 2.0, boxes[:1])
        if info["perturbations"]["missing"] == 1:
            break
    else:
        pytest.fail("no seed drew a missing object")
    out, _ = apply_domain(img, "daytime_clear", seed, 2.0, boxes[:1], 1.0)
    x0, y0, x1, y1 = boxes[0].astype(int)

    def redness(a):
        region = a[y0:y1, x0:x1].astype(float) / 255
        return (region[..., 0] - region[..., 1]).mean()

    # the red object (R - G = 0.75) would show through if the gap blended the real source back in
    assert redness(out) < redness(plain) + 0.1


def test_synth_options_give_the_level_and_let_the_gap_be_overridden():
    import argparse

    from drsf_kit.cli.synth import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--data", "d", "--fidelity", "ldm_gap"]))
    assert (cfg.fidelity, cfg.appearance_gap) == LEVELS["ldm_gap"]
    cfg = config_from_args(p.parse_args(["--data", "d", "--fidelity", "ldm", "--appearance-gap", "0.3"]))
    assert (cfg.fidelity, cfg.appearance_gap) == (1.0, 0.3)
    assert config_from_args(p.parse_args(["--data", "d"])).appearance_gap == 0.0
    with pytest.raises(ConfigError, match="appearance gap"):
        config_from_args(p.parse_args(["--data", "d", "--appearance-gap", "3"]))
