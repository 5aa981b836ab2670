"""The diffusion backends end to end through the CLI, with tiny random pipelines saved to tmp."""

from __future__ import annotations

import json

import diffusers  # noqa: F401  (a declared dependency: a missing one fails, never skips)
import numpy as np
import pytest
from PIL import Image
from tiny_diffusion import build_tiny_controlnet, build_tiny_gligen, build_tiny_sd, build_tiny_sdxl, make_tiny_dwd

from drsf_kit.cli import main
from drsf_kit.data.manifest import map_boxes, map_mask, read_manifests
from drsf_kit.errors import ConfigError
from drsf_kit.synth import DEFAULT_PROMPTS, SynthConfig, build_generator
from drsf_kit.synth.controlnet import canny_edges, palette_image
from drsf_kit.synth.diffusion import resolve_dtype, resolve_weights, weights_hash


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # tiny models gain nothing from threads, and spinning threads crawl when other work shares the cores
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("DRSF_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {"sd": build_tiny_sd(root / "sd"), "gligen": build_tiny_gligen(root / "gligen"),
            "controlnet": build_tiny_controlnet(root / "cn")}


@pytest.fixture(scope="module")
def dwd(tmp_path_factory):
    return make_tiny_dwd(tmp_path_factory.mktemp("dwd"), n=4, seed=2)


def _source(dwd):
    from drsf_kit.data.dwd import DWDDetection

    ds = DWDDetection(dwd, "daytime_clear", "train", with_masks=True, progress=False)
    return ds


def _synth(dwd, out, backend, model, *extra):
    args = ["synth", "--data", str(dwd), "--out", str(out), "--backend", backend, "--model", str(model),
            "--steps", "2", "--size", "64", "--no-progress", *extra]
    assert main(args) == 0
    return read_manifests(out / backend)


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_img2img_end_to_end(dwd, weights, tmp_path, capsys):
    rows = _synth(dwd, tmp_path / "a", "img2img", weights["sd"], "--domains", "daytime_foggy,night_rainy",
                  "--batch-size", "3", "--strength", "0.5")
    capsys.readouterr()
    assert len(rows) == 8
    ds = _source(dwd)
    digest = weights_hash(weights["sd"])
    for row in rows:
        assert row["prompt"] == DEFAULT_PROMPTS[row["domain"]]
        assert (row["strength"], row["steps"], row["guidance"]) == (0.5, 2, 7.5)
        assert row["model"] == str(weights["sd"]) and row["model_hash"] == digest
        # 320x180 scaled to a longer side of 64 and rounded down to multiples of 8
        assert row["size"] == [64, 32] and row["crop"] is None
        assert _pixels(tmp_path / "a" / "img2img" / row["domain"] / row["path"]).shape == (32, 64, 3)
        # the reused labels map exactly onto the twin: a plain rescale of every box
        boxes = ds.annotation(ds.index_of(row["source_id"]))["boxes"].numpy()
        mapped, keep = map_boxes(boxes, row["crop"], row["size"], ds.image_size(ds.index_of(row["source_id"])))
        assert keep.all()
        np.testing.assert_allclose(mapped, boxes * np.array([64 / 320, 32 / 180] * 2), rtol=1e-5)
    # same seed => same image, whatever the batch composition; another seed => another image
    again = _synth(dwd, tmp_path / "b", "img2img", weights["sd"], "--domains", "night_rainy",
                   "--batch-size", "1", "--strength", "0.5", "--limit", "2")
    other = _synth(dwd, tmp_path / "c", "img2img", weights["sd"], "--domains", "night_rainy",
                   "--strength", "0.5", "--limit", "1", "--seed", "9")
    first = {r["source_id"]: r for r in rows if r["domain"] == "night_rainy"}
    for row in again:
        a = _pixels(tmp_path / "a" / "img2img" / "night_rainy" / row["path"])
        b = _pixels(tmp_path / "b" / "img2img" / "night_rainy" / row["path"])
        assert row["seed"] == first[row["source_id"]]["seed"]
        assert np.abs(a - b).max() <= 1
    c = _pixels(tmp_path / "c" / "img2img" / "night_rainy" / other[0]["path"])
    assert np.abs(c - _pixels(tmp_path / "a" / "img2img" / "night_rainy" / other[0]["path"])).mean() > 2


def test_img2img_loads_sdxl_folders(dwd, tmp_path, capsys):
    model = build_tiny_sdxl(tmp_path / "sdxl")
    generator = build_generator(SynthConfig(data=str(dwd), backend="img2img", model=str(model), steps=2, size=64))
    assert type(generator.pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    rows = _synth(dwd, tmp_path / "o", "img2img", model, "--domains", "dusk_rainy", "--limit", "2")
    assert [r["size"] for r in rows] == [[64, 32], [64, 32]]
    assert rows[0]["prompt"] == DEFAULT_PROMPTS["dusk_rainy"]


def test_img2img_prompt_file(dwd, weights, tmp_path, capsys):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompts": {"snowy_night": "a snowy street at night"},
                                   "negative_prompt": "blurry"}))
    rows = _synth(dwd, tmp_path / "o", "img2img", weights["sd"], "--domains", "snowy_night",
                  "--prompts", str(prompts), "--limit", "1")
    assert [r["prompt"] for r in rows] == ["a snowy street at night"]


def test_gligen_crop_boxes_and_skips(dwd, weights, tmp_path, capsys):
    ds = _source(dwd)
    rows = _synth(dwd, tmp_path / "g", "gligen", weights["gligen"], "--domains", "dusk_rainy")
    capsys.readouterr()
    assert len(rows) == 4
    for row in rows:
        i = ds.index_of(row["source_id"])
        assert row["crop"] == [70, 0, 250, 180] and row["size"] == [64, 64]
        assert _pixels(tmp_path / "g" / "gligen" / "dusk_rainy" / row["path"]).shape == (64, 64, 3)
        target = ds.annotation(i)
        mapped, keep = map_boxes(target["boxes"].numpy(), row["crop"], row["size"], ds.image_size(i))
        # one grounding phrase per box that survives the crop, in the template's words
        assert row["n_boxes"] == len(row["phrases"]) == int(keep.sum())
        names = [("car" if int(k) == 3 else "person") for k in target["labels"].numpy()[keep]]
        for phrase, name in zip(row["phrases"], names):
            assert phrase == f"A {name} is {'driving' if name == 'car' else 'walking'} in a rainy street during dusk."
        assert ((mapped >= 0) & (mapped <= 64)).all()
        assert row["strength"] is None and row["steps"] == 2
    # images with more boxes than --max-boxes are skipped and counted
    counts = [r["n_boxes"] for r in rows]
    assert main(["synth", "--data", str(dwd), "--out", str(tmp_path / "s"), "--backend", "gligen", "--model",
                 str(weights["gligen"]), "--steps", "2", "--size", "64", "--no-progress", "--domains",
                 "dusk_rainy", "--max-boxes", str(min(counts))]) == 0
    summary = json.loads(capsys.readouterr().out)
    skipped = sum(c > min(counts) for c in counts)
    assert summary["domains"]["dusk_rainy"]["skipped"] == ({"too_many_boxes": skipped} if skipped else {})
    assert summary["domains"]["dusk_rainy"]["generated"] == 4 - skipped


def test_controlnet_seg_and_edges(dwd, weights, tmp_path, capsys):
    ds = _source(dwd)
    for condition in ("seg", "edges"):
        rows = _synth(dwd, tmp_path / condition, "controlnet", weights["sd"], "--controlnet",
                      str(weights["controlnet"]), "--condition", condition, "--domains", "night_sunny",
                      "--limit", "2", "--batch-size", "2")
        capsys.readouterr()
        assert len(rows) == 2
        for row in rows:
            assert row["condition"] == condition and row["size"] == [64, 32] and row["crop"] is None
            assert row["model"] == f"{weights['sd']}+{weights['controlnet']}"
            # the source mask maps onto the twin with valid ids only
            mask = np.asarray(Image.open(ds.mask_path(ds.index_of(row["source_id"]))))
            twin_mask = map_mask(mask, row["crop"], row["size"])
            assert twin_mask.shape == (32, 64) and set(np.unique(twin_mask)) <= set(range(19)) | {255}


def test_condition_images():
    mask = np.full((8, 8), 255, np.uint8)
    mask[:4] = 10  # sky
    mask[4:, :4] = 13  # car
    mask[4:, 4:6] = 0  # road
    rgb = palette_image(mask)
    # ADE20K colours (the seg ControlNet's training palette), not Cityscapes' (70,130,180) / (0,0,142) / (128,64,128)
    assert tuple(rgb[0, 0]) == (6, 230, 230) and tuple(rgb[7, 0]) == (0, 102, 200)
    assert tuple(rgb[7, 4]) == (140, 140, 140) and tuple(rgb[7, 7]) == (0, 0, 0)
    img = np.zeros((40, 40, 3), np.uint8)
    img[10:30, 10:30] = 255
    edges = canny_edges(img)
    assert edges.dtype == np.uint8 and set(np.unique(edges)) <= {0, 255}
    on = np.argwhere(edges > 0)
    # thin edges along the square's border, nothing in its flat inside or far outside
    assert len(on) > 40 and edges[15:25, 15:25].max() == 0 and edges[:5, :5].max() == 0
    assert canny_edges(np.zeros((8, 8, 3), np.uint8)).max() == 0
    # a step too faint for the thresholds 100/200 gives no edge; OpenCV's default L1 gradient of a
    # 3x3 Sobel sees a 40-level step as 160, between the thresholds, and no strong edge to hang on
    faint = np.zeros((20, 20, 3), np.uint8)
    faint[:, 10:] = 40
    assert canny_edges(faint).max() == 0 and canny_edges(faint * 3).max() == 255


def test_cityscapes_to_ade20k_map():
    from drsf_kit.data.classes import CITYSCAPES_CLASSES
    from drsf_kit.synth.ade20k import ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_TO_ADE20K, ade20k_lut

    assert len(ADE20K_CLASSES) == len(ADE20K_PALETTE) == 150
    assert set(CITYSCAPES_TO_ADE20K) == set(CITYSCAPES_CLASSES)
    lut = ade20k_lut()
    expected = {"road": (140, 140, 140), "sidewalk": (235, 255, 7), "building": (180, 120, 120),
                "vegetation": (4, 200, 3), "sky": (6, 230, 230), "person": (150, 5, 61), "rider": (150, 5, 61),
                "car": (0, 102, 200), "terrain": (4, 250, 7), "traffic light": (41, 0, 255)}
    for name, colour in expected.items():
        assert tuple(lut[CITYSCAPES_CLASSES.index(name)]) == colour, name
    # distinct Cityscapes classes stay distinct, except the two ADE20K has no class for
    colours = {tuple(lut[i]) for i in range(len(CITYSCAPES_CLASSES))}
    assert len(colours) == len(CITYSCAPES_CLASSES) - 2
    assert tuple(lut[255]) == (0, 0, 0)


def test_controlnet_backend_conditions_on_ade20k_masks_and_opencv_canny(dwd, weights):
    import cv2

    from drsf_kit.synth.ade20k import ade20k_image
    from drsf_kit.synth.runner import load_source_item

    ds = _source(dwd)
    item = load_source_item(ds, ds.ids[0], with_mask=True)
    for condition in ("seg", "edges"):
        gen = build_generator(SynthConfig(data=str(dwd), backend="controlnet", model=str(weights["sd"]),
                                          controlnet=str(weights["controlnet"]), condition=condition, steps=1,
                                          size=64))
        got = np.asarray(gen.condition_image(item, (64, 32)))
        if condition == "seg":
            want = ade20k_image(map_mask(item.mask, None, [64, 32]))
        else:
            rgb = np.asarray(item.image.convert("RGB").resize((64, 32), Image.BICUBIC))
            want = np.repeat(cv2.Canny(rgb, 100, 200)[:, :, None], 3, axis=2)
        assert got.shape == (32, 64, 3) and np.array_equal(got, want), condition
        gen.close()


def test_weight_fingerprint_reads_no_weight_bytes(tmp_path, monkeypatch):
    import os

    folder = tmp_path / "m"
    (folder / "unet").mkdir(parents=True)
    weight = folder / "unet" / "model.safetensors"
    weight.write_bytes(b"a" * 64)
    (folder / "model_index.json").write_text("{}")
    first = weights_hash(folder)
    stat = weight.stat()
    weight.write_bytes(b"b" * 64)  # same size, same mtime: the fingerprint cannot tell (it never reads it)
    os.utime(weight, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights_hash(folder) == first
    os.utime(weight, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new download has a new mtime
    assert weights_hash(folder) != first
    (folder / "model_index.json").write_text('{"a": 1}')  # configs are read (they are small)
    changed = weights_hash(folder)
    # a Hugging Face cache snapshot links to blobs named by their content hash: that hash is used
    blob = tmp_path / "blobs" / ("0" * 64)
    blob.parent.mkdir()
    blob.write_bytes(b"c")
    weight.unlink()
    weight.symlink_to(blob)
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    assert weights_hash(folder) != changed
    assert not any(p.endswith((".safetensors", "0" * 64)) for p in opened)


def test_missing_weights_messages(dwd, weights, tmp_path, capsys):
    with pytest.raises(ConfigError, match="model_index.json") as err:
        resolve_weights(str(tmp_path / "nowhere"), "stable-diffusion-v1-5/stable-diffusion-v1-5", "pipeline")
    assert "nowhere" in str(err.value) and "unet/" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no model_index.json"):
        resolve_weights(str(tmp_path / "empty"), "x/y", "pipeline")
    with pytest.raises(ConfigError, match="local Hugging Face cache"):
        resolve_weights("nobody/no-such-model", "x/y", "pipeline")
    # the same message reaches the command line as one line, without a traceback
    assert main(["synth", "--data", str(dwd), "--out", str(tmp_path / "o"), "--backend", "img2img",
                 "--model", str(tmp_path / "nowhere"), "--limit", "1", "--no-progress"]) == 1
    err_text = capsys.readouterr().err
    assert err_text.startswith("error:") and "model_index.json" in err_text and "Traceback" not in err_text
    # a plain Stable Diffusion folder is not a box-grounded model
    with pytest.raises(ConfigError, match="not a GLIGEN model"):
        build_generator(SynthConfig(data=str(dwd), backend="gligen", model=str(weights["sd"])))
    with pytest.raises(ConfigError, match="config.json"):
        build_generator(SynthConfig(data=str(dwd), backend="controlnet", model=str(weights["sd"]),
                                    controlnet=str(tmp_path / "empty")))


def test_device_and_dtype():
    import torch

    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(ConfigError, match="fp16"):
        resolve_dtype("fp16", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            build_generator(SynthConfig(data="x", backend="img2img", device="cuda"))
