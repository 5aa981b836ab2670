"""Tests of the embedded mini-weather benchmark renderer (layout, determinism, labels, weather)."""

from __future__ import annotations

import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drsf_kit.data.classes import (
    DOMAIN_SHORT,
    DWD_CLASSES,
    DWD_DOMAINS,
    DWD_TO_CITYSCAPES_TRAIN_ID,
    SOURCE_DOMAIN,
)
from drsf_kit.data.mini_weather import (
    image_id,
    image_rngs,
    make_mini_weather,
    render_domain,
    render_scene,
)
from drsf_kit.data.mini_weather.scene import SKY_DEPTH_M
from drsf_kit.errors import ConfigError, DataError

SCENE_TRAIN_IDS = {0, 1, 2, 5, 7, 8, 10, 11, 12, 13, 14, 15, 17, 18}


def _voc(root: Path, domain: str) -> Path:
    return root / domain / "VOC2007"


def _ids(root: Path, domain: str, split: str) -> list[str]:
    return (_voc(root, domain) / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def _read_xml(path: Path) -> dict:
    """A minimal VOC reader: boxes become 0-based pixel-edge xyxy via (xmin - 1, ymin - 1, xmax, ymax)."""
    root = ET.parse(path).getroot()
    size = root.find("size")
    objects = []
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (int(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        objects.append({"name": obj.find("name").text, "difficult": obj.find("difficult").text == "1",
                        "box": (xmin - 1, ymin - 1, xmax, ymax)})
    return {"filename": root.find("filename").text, "width": int(size.find("width").text),
            "height": int(size.find("height").text), "depth": int(size.find("depth").text), "objects": objects}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_of_all_five_domains(tiny_weather):
    meta = json.loads((tiny_weather / "mini_weather.json").read_text())
    assert meta["complete"] and meta["params"]["seed"] == 0
    for domain in DWD_DOMAINS:
        voc = _voc(tiny_weather, domain)
        train, test = _ids(tiny_weather, domain, "train"), _ids(tiny_weather, domain, "test")
        if domain == SOURCE_DOMAIN:
            assert len(train) == 16 and len(test) == 8 and not set(train) & set(test)
        else:  # targets: every image in train.txt, test.txt lists the same ids
            assert len(train) == 8 and train == test
        ids = sorted(set(train) | set(test))
        assert len(ids) == len(train) + (len(test) if domain == SOURCE_DOMAIN else 0)
        assert all(i.startswith(DOMAIN_SHORT[domain].lower() + "_") for i in ids)
        assert sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg")) == ids
        assert sorted(p.stem for p in (voc / "Annotations").glob("*.xml")) == ids
        assert sorted(p.stem for p in (voc / "SegmentationClass").glob("*.png")) == ids
        with Image.open(voc / "JPEGImages" / f"{ids[0]}.jpg") as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (320, 180)
        mask = np.asarray(Image.open(voc / "SegmentationClass" / f"{ids[0]}.png"))
        assert mask.dtype == np.uint8 and mask.shape == (180, 320)
        assert set(np.unique(mask)) <= SCENE_TRAIN_IDS
        assert meta["domains"][domain]["images"] == len(ids)


def test_targets_are_other_scenes_than_the_source(tiny_weather):
    source = np.asarray(Image.open(_voc(tiny_weather, SOURCE_DOMAIN) / "SegmentationClass" / "dc_000001.png"))
    for domain in DWD_DOMAINS[1:]:
        stem = image_id(domain, 0)
        target = np.asarray(Image.open(_voc(tiny_weather, domain) / "SegmentationClass" / f"{stem}.png"))
        assert (source != target).mean() > 0.05


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    sizes = {"n_train": 3, "n_test": 1, "n_target": 1, "progress": False}
    a = make_mini_weather(tmp_path / "a", seed=5, workers=1, **sizes)
    b = make_mini_weather(tmp_path / "b", seed=5, workers=2, **sizes)  # worker count must not matter
    c = make_mini_weather(tmp_path / "c", seed=6, workers=1, **sizes)
    files_a, files_b, files_c = _tree_bytes(a), _tree_bytes(b), _tree_bytes(c)
    assert len(files_a) == 3 * 8 + 2 * 5 + 1  # jpg + png + xml per image, two split files per domain, json
    assert files_a == files_b
    jpgs = [k for k in files_a if k.endswith(".jpg")]
    assert sorted(jpgs) == sorted(k for k in files_c if k.endswith(".jpg"))
    assert all(files_a[k] != files_c[k] for k in jpgs)


def test_every_class_in_the_source_train_split(tiny_weather):
    counts = dict.fromkeys(DWD_CLASSES, 0)
    for stem in _ids(tiny_weather, SOURCE_DOMAIN, "train"):
        for obj in _read_xml(_voc(tiny_weather, SOURCE_DOMAIN) / "Annotations" / f"{stem}.xml")["objects"]:
            counts[obj["name"]] += not obj["difficult"]
    assert all(n >= 2 for n in counts.values()), counts


def test_class_quota_in_a_modest_build_without_files():
    # The same per-image streams as a 40-image train split; the quota forces class i mod 7 into image i.
    counts = dict.fromkeys(DWD_CLASSES, 0)
    for i in range(40):
        scene = render_scene(image_rngs(0, SOURCE_DOMAIN, i)[0], force_class=DWD_CLASSES[i % 7])
        assert DWD_CLASSES[i % 7] in {o.name for o in scene.objects if not o.difficult}
        for obj in scene.objects:
            counts[obj.name] += 1
    assert min(counts.values()) >= 6
    assert max(counts, key=counts.get) == "car"  # a realistic long tail: cars lead


def test_boxes_inside_the_image_and_tight_on_the_mask(tiny_weather):
    checked = 0
    for domain in DWD_DOMAINS:
        voc = _voc(tiny_weather, domain)
        for xml_path in sorted((voc / "Annotations").glob("*.xml")):
            ann = _read_xml(xml_path)
            assert (ann["width"], ann["height"], ann["depth"]) == (320, 180, 3)
            assert ann["filename"] == xml_path.stem + ".jpg"
            mask = np.asarray(Image.open(voc / "SegmentationClass" / f"{xml_path.stem}.png"))
            for obj in ann["objects"]:
                x0, y0, x1, y1 = obj["box"]
                assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 180, (xml_path, obj)
                region = mask[y0:y1, x0:x1] == DWD_TO_CITYSCAPES_TRAIN_ID[obj["name"]]
                # the visible extent of the object: its class touches every side of the box
                assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
                checked += 1
    assert checked > 100


def test_xml_round_trip_matches_the_rendered_scene(tiny_weather):
    for domain, index in ((SOURCE_DOMAIN, 0), (SOURCE_DOMAIN, 20), ("night_rainy", 3)):
        stem = image_id(domain, index)
        scene_rng, weather_rng = image_rngs(0, domain, index)
        scene = render_scene(scene_rng, force_class=DWD_CLASSES[index % 7])
        ann = _read_xml(_voc(tiny_weather, domain) / "Annotations" / f"{stem}.xml")
        assert [(o["name"], o["box"], o["difficult"]) for o in ann["objects"]] == \
            [(o.name, tuple(int(v) for v in o.box), o.difficult) for o in scene.objects]
        mask = np.asarray(Image.open(_voc(tiny_weather, domain) / "SegmentationClass" / f"{stem}.png"))
        assert np.array_equal(mask, scene.mask)
        jpg = np.asarray(Image.open(_voc(tiny_weather, domain) / "JPEGImages" / f"{stem}.jpg"), np.float32)
        assert np.abs(jpg - render_domain(scene, domain, weather_rng)).mean() < 4.0  # JPEG at quality 92


def test_scene_depth_and_instances_agree_with_the_labels():
    scene = render_scene(11)
    H = scene.mask.shape[0]
    assert np.all(scene.depth[scene.mask == 10] == SKY_DEPTH_M)
    road = scene.mask == 0
    rows = [r for r in range(H - 40, H) if road[r].any()]
    per_row = [scene.depth[r][road[r]].mean() for r in rows]
    assert all(a > b for a, b in itertools.pairwise(per_row))  # the ground comes nearer toward the bottom
    for k, obj in enumerate(scene.objects, start=1):
        pix = scene.instances == k
        ys, xs = np.nonzero(pix)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(int(v) for v in obj.box)
        assert np.allclose(scene.depth[pix], obj.depth)
        assert np.all(scene.mask[pix] == DWD_TO_CITYSCAPES_TRAIN_ID[obj.name])


def test_fog_brightens_and_flattens_night_darkens():
    for seed in (1, 2, 3):
        scene = render_scene(seed)
        clear = render_domain(scene, "daytime_clear", seed).astype(np.float32)
        foggy = render_domain(scene, "daytime_foggy", seed).astype(np.float32)
        night = render_domain(scene, "night_sunny", seed).astype(np.float32)
        dusk = render_domain(scene, "dusk_rainy", seed).astype(np.float32)
        assert foggy.mean() > clear.mean() and foggy.std() < clear.std()
        assert foggy.std() / foggy.mean() < 0.75 * clear.std() / clear.mean()  # RMS contrast
        assert night.mean() < 0.5 * clear.mean()
        assert dusk.mean() < clear.mean()
        assert dusk[..., 0].mean() > dusk[..., 2].mean()  # a warm, orange cast


def test_fog_is_denser_far_away():
    scene = render_scene(4)
    clear = render_domain(scene, "daytime_clear", 0).astype(np.float32)
    foggy = render_domain(scene, "daytime_foggy", 0).astype(np.float32)
    change = np.abs(foggy - clear).mean(-1)
    near = (scene.depth < 12) & (scene.mask != 10)
    far = (scene.depth > 60) & (scene.depth < SKY_DEPTH_M)
    assert change[far].mean() > change[near].mean() + 10


def test_existing_build_is_reused_and_guarded(tmp_path):
    out = make_mini_weather(tmp_path / "mw", seed=0, n_train=2, n_test=1, n_target=1, progress=False)
    jpg = _voc(out, SOURCE_DOMAIN) / "JPEGImages" / "dc_000001.jpg"
    stamp = jpg.stat().st_mtime_ns
    assert make_mini_weather(out, seed=0, n_train=2, n_test=1, n_target=1, progress=False) == out
    assert jpg.stat().st_mtime_ns == stamp  # complete and matching: returned early
    with pytest.raises(DataError, match="overwrite"):
        make_mini_weather(out, seed=1, n_train=2, n_test=1, n_target=1, progress=False)
    make_mini_weather(out, seed=1, n_train=1, n_test=1, n_target=1, progress=False, overwrite=True)
    assert _ids(out, SOURCE_DOMAIN, "train") == ["dc_000001"]
    assert not (_voc(out, SOURCE_DOMAIN) / "JPEGImages" / "dc_000003.jpg").exists()  # stale files cleared
    foreign = tmp_path / "real-dwd"
    (foreign / "daytime_clear" / "VOC2007").mkdir(parents=True)
    with pytest.raises(DataError, match="not a mini-weather build"):
        make_mini_weather(foreign, n_train=1, n_test=0, n_target=0, progress=False, overwrite=True)


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"n_train": 1.5}, {"height": 10}, {"n_train": 0, "n_test": 0}])
def test_bad_arguments_raise_config_error(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        make_mini_weather(tmp_path / "x", progress=False, **kwargs)


def test_unknown_names_are_rejected():
    with pytest.raises(KeyError, match="valid domains"):
        render_domain(render_scene(0), "sunset", 0)
    with pytest.raises(KeyError, match="valid classes"):
        render_scene(0, force_class="tram")
