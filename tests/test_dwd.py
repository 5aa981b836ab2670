"""DWDDetection on tiny VOC folders written by the tests: layout, boxes, splits, protocols, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drsf_kit.data.dwd import PROTOCOLS, DWDDetection, split_for
from drsf_kit.errors import ConfigError, DataError

W, H = 48, 32


# ---- fixture writers (also imported by the other data test modules) ---------------------------------

def write_image(path: Path, width: int = W, height: int = H, seed: int = 0) -> Path:
    """A small noisy RGB image; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def voc_xml(filename: str, objects, width: int | None = W, height: int | None = H) -> str:
    """VOC XML text; ``objects`` are ``(name, xmin, ymin, xmax, ymax[, difficult])`` in VOC 1-based pixels."""
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>" if width else ""
    parts = []
    for obj in objects:
        name, x0, y0, x1, y1 = obj[:5]
        difficult = obj[5] if len(obj) > 5 else 0
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                     f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    return f"<annotation><folder>VOC2007</folder><filename>{filename}</filename>{size}{''.join(parts)}</annotation>"


def write_domain(root: Path, domain: str, items: dict, train=None, test=None, nesting: str = "flat",
                 masks: bool = False, width: int = W, height: int = H) -> Path:
    """Write one DWD domain: ``items`` maps image id -> list of VOC objects. Returns the VOC2007 folder.

    ``train``/``test`` are the id lists (default: every id in train, no test file); ``nesting`` is
    ``flat`` (ROOT/d/VOC2007), ``double`` (ROOT/d/d/VOC2007) or ``inner`` (ROOT/d/VOC2007/VOC2007).
    """
    voc = {"flat": root / domain / "VOC2007", "double": root / domain / domain / "VOC2007",
           "inner": root / domain / "VOC2007" / "VOC2007"}[nesting]
    (voc / "Annotations").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for k, (image_id, objects) in enumerate(items.items()):
        write_image(voc / "JPEGImages" / f"{image_id}.jpg", width, height, seed=k)
        (voc / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", objects, width, height))
        if masks:
            mask = np.full((height, width), 0, np.uint8)
            mask[: height // 2] = 10  # sky on top, road below: two train ids
            (voc / "SegmentationClass").mkdir(exist_ok=True)
            Image.fromarray(mask).save(voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{i}\n" for i in (train or list(items))))
    if test is not None:
        (voc / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in test))
    return voc


def truncate(path: Path) -> None:
    """Cut a file to half its length (a download or copy that stopped early)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CAR = ("car", 1, 1, 10, 20)


# ---- loading -----------------------------------------------------------------------------------------

def test_boxes_are_zero_based_labels_one_based(tmp_path):
    write_domain(tmp_path, "daytime_clear", {"a": [("car", 1, 1, 10, 20), ("person", 5.5, 3, 48, 32, 1)]})
    ds = DWDDetection(tmp_path, "daytime_clear", progress=False)
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.std()) > 0.1
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0.0, 10.0, 20.0], [4.5, 2.0, 48.0, 32.0]]))
    assert target["labels"].tolist() == [3, 5] and target["labels"].dtype == torch.int64
    assert target["difficult"].tolist() == [False, True]
    assert target["image_id"] == "a" and "mask" not in target
    assert ds.problems == []
    ann = ds.annotation(0)
    assert torch.equal(ann["boxes"], target["boxes"]) and torch.equal(ann["labels"], target["labels"])
    assert ds.image_path(0).name == "a.jpg" and ds.image_size(0) == (W, H)
    assert ds.ids == ["a"] and ds.domain == "daytime_clear" and ds.root == tmp_path and len(ds) == 1


@pytest.mark.parametrize("nesting", ["flat", "double", "inner"])
def test_finds_every_nesting_variant(tmp_path, nesting):
    voc = write_domain(tmp_path, "night_sunny", {"x": [CAR]}, nesting=nesting)
    ds = DWDDetection(tmp_path, "night_sunny", progress=False)
    assert ds.voc_root == voc and ds.image_path(0) == voc / "JPEGImages" / "x.jpg"


def test_missing_domain_names_expected_folders(tmp_path):
    write_domain(tmp_path, "daytime_clear", {"x": [CAR]})
    with pytest.raises(DataError) as err:
        DWDDetection(tmp_path, "dusk_rainy", progress=False)
    msg = str(err.value)
    for expected in (tmp_path / "dusk_rainy" / "VOC2007", tmp_path / "dusk_rainy" / "dusk_rainy" / "VOC2007",
                     tmp_path / "dusk_rainy" / "VOC2007" / "VOC2007"):
        assert str(expected) in msg


def test_split_all_is_ordered_union_and_test_split_may_be_absent(tmp_path):
    items = {i: [CAR] for i in "abcd"}
    write_domain(tmp_path, "daytime_clear", items, train=["a", "b", "b"], test=["b", "c"])
    assert DWDDetection(tmp_path, "daytime_clear", "train", progress=False).ids == ["a", "b"]
    assert DWDDetection(tmp_path, "daytime_clear", "test", progress=False).ids == ["b", "c"]
    assert DWDDetection(tmp_path, "daytime_clear", "all", progress=False).ids == ["a", "b", "c"]
    write_domain(tmp_path, "dusk_rainy", {"r1": [CAR], "r2": [CAR]})  # rainy domains ship no test.txt
    assert DWDDetection(tmp_path, "dusk_rainy", "all", progress=False).ids == ["r1", "r2"]
    with pytest.raises(DataError, match=r"test\.txt.*split file is missing"):
        DWDDetection(tmp_path, "dusk_rainy", "test", progress=False)
    with pytest.raises(ConfigError, match="valid splits"):
        DWDDetection(tmp_path, "dusk_rainy", "validation", progress=False)
    # fit/val are named splits now (a held-out part of train); absent files are a DataError, as for test
    with pytest.raises(DataError, match=r"val\.txt"):
        DWDDetection(tmp_path, "dusk_rainy", "val", progress=False)


def test_protocols():
    assert split_for("daytime_foggy") == "all" and split_for("night_rainy", "all_images") == "all"
    assert split_for("daytime_foggy", "drsf_code") == "test" and split_for("night_sunny", "drsf_code") == "test"
    assert split_for("dusk_rainy", "drsf_code") == "all"
    assert all(table["daytime_clear"] == "test" for table in PROTOCOLS.values())
    with pytest.raises(ConfigError, match="all_images, drsf_code"):
        split_for("night_sunny", "coco")
    with pytest.raises(ConfigError, match="mars"):
        split_for("mars")


def test_masks_and_transforms(tmp_path):
    voc = write_domain(tmp_path, "daytime_clear", {"a": [CAR], "b": [CAR]}, masks=True)
    flip = lambda img, tgt: (img.flip(-1), {**tgt, "flipped": True})  # noqa: E731
    ds = DWDDetection(tmp_path, "daytime_clear", with_masks=True, transforms=flip, progress=False)
    image, target = ds[1]
    assert target["flipped"] and target["mask"].dtype == torch.int64 and target["mask"].shape == (H, W)
    assert set(target["mask"].unique().tolist()) == {0, 10}
    assert ds.mask_path(1) == voc / "SegmentationClass" / "b.png"
    Image.fromarray(np.zeros((H + 2, W), np.uint8)).save(voc / "SegmentationClass" / "b.png")
    with pytest.raises(DataError, match=r"b\.png: mask is 48x34 but image b\.jpg is 48x32"):
        ds[1]
    (voc / "SegmentationClass" / "a.png").unlink()
    with pytest.raises(DataError, match=r"a\.png: mask file is missing"):
        DWDDetection(tmp_path, "daytime_clear", with_masks=True, progress=False)


# ---- bad input: raise mode names the file and the problem ---------------------------------------------

def _domain(tmp_path, **items):
    return write_domain(tmp_path, "daytime_clear", {"good": [CAR], **items})


def test_annotation_without_image(tmp_path):
    voc = _domain(tmp_path, lost=[CAR])
    (voc / "JPEGImages" / "lost.jpg").unlink()
    with pytest.raises(DataError, match=r"JPEGImages/lost\.jpg: image file is missing \(annotation lost\.xml"):
        DWDDetection(tmp_path, "daytime_clear", progress=False)


def test_broken_xml(tmp_path):
    voc = _domain(tmp_path, broken=[CAR])
    (voc / "Annotations" / "broken.xml").write_text("<annotation><object><name>car</name>")
    with pytest.raises(DataError, match=r"broken\.xml: annotation is not valid XML"):
        DWDDetection(tmp_path, "daytime_clear", progress=False)
    (voc / "Annotations" / "broken.xml").write_text(voc_xml("broken.jpg", [("car", 1, "x", 5, 5)]))
    with pytest.raises(DataError, match=r"broken\.xml: object 1 \(car\) has a missing or non-numeric <ymin>"):
        DWDDetection(tmp_path, "daytime_clear", progress=False)
    (voc / "Annotations" / "broken.xml").write_text(voc_xml("broken.jpg", [("car", 1, 1, "nan", 5)]))
    with pytest.raises(DataError, match=r"broken\.xml: object 1 \(car\) has a missing or non-numeric <xmax>: 'nan'"):
        DWDDetection(tmp_path, "daytime_clear", progress=False)


def test_listed_id_without_annotation(tmp_path):
    voc = _domain(tmp_path)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("good\nghost\n")
    with pytest.raises(DataError, match=r"Annotations/ghost\.xml: image id 'ghost' is listed in train\.txt"):
        DWDDetection(tmp_path, "daytime_clear", progress=False)


def test_truncated_image(tmp_path):
    voc = _domain(tmp_path, cut=[CAR])
    truncate(voc / "JPEGImages" / "cut.jpg")
    ds = DWDDetection(tmp_path, "daytime_clear", progress=False)  # XML only: nothing decoded yet
    with pytest.raises(DataError, match=r"cut\.jpg: image cannot be decoded, the file is truncated"):
        ds[ds.index_of("cut")]
    with pytest.raises(DataError, match=r"cut\.jpg: image cannot be decoded"):
        DWDDetection(tmp_path, "daytime_clear", verify_images=True, progress=False)


def test_unknown_class_warns_or_fails_when_strict(tmp_path):
    _domain(tmp_path, odd=[("tram", 1, 1, 9, 9), CAR])
    ds = DWDDetection(tmp_path, "daytime_clear", progress=False)
    odd = ds.annotation(ds.index_of("odd"))
    assert odd["labels"].tolist() == [3]
    (problem,) = ds.problems
    assert problem.kind == "unknown_class" and problem.severity == "warning" and "'tram'" in problem.message
    with pytest.raises(DataError, match=r"odd\.xml: object 1 has unknown class 'tram'"):
        DWDDetection(tmp_path, "daytime_clear", strict=True, progress=False)


# ---- bad input: skip mode drops bad items and records every problem -------------------------------------

def test_skip_mode_records_every_problem(tmp_path):
    voc = _domain(tmp_path, lost=[CAR], broken=[CAR], cut=[CAR], empty=[], odd=[("tram", 1, 1, 9, 9)],
                  wide=[("bus", -3, 2, 60, 20)], flat=[("car", 5, 5, 4, 9), ("bike", 2, 2, 6, 6)])
    (voc / "JPEGImages" / "lost.jpg").unlink()
    (voc / "Annotations" / "broken.xml").write_text("not xml")
    truncate(voc / "JPEGImages" / "cut.jpg")
    listed = (voc / "ImageSets" / "Main" / "train.txt").read_text()
    (voc / "ImageSets" / "Main" / "train.txt").write_text(listed + "ghost\n")
    ds = DWDDetection(tmp_path, "daytime_clear", on_error="skip", strict=True, progress=False)
    assert ds.ids == ["good", "empty", "wide", "flat"]
    kinds = {(Path(p.path).name, p.kind, p.severity) for p in ds.problems}
    assert kinds == {
        ("lost.jpg", "missing_image", "error"), ("broken.xml", "bad_xml", "error"),
        ("cut.jpg", "unreadable_image", "error"), ("empty.xml", "empty_annotation", "info"),
        ("odd.xml", "unknown_class", "error"), ("wide.xml", "box_clipped", "warning"),
        ("flat.xml", "zero_area_box", "warning"), ("ghost.xml", "missing_annotation", "error"),
    }
    assert ds.annotation(ds.index_of("empty"))["boxes"].shape == (0, 4)
    torch.testing.assert_close(ds.annotation(ds.index_of("wide"))["boxes"], torch.tensor([[0.0, 1.0, 48.0, 20.0]]))
    assert ds.annotation(ds.index_of("flat"))["labels"].tolist() == [2]
    for i in range(len(ds)):  # every kept item decodes
        assert ds[i][0].shape == (3, H, W)


def test_bad_on_error_value(tmp_path):
    _domain(tmp_path)
    with pytest.raises(ConfigError, match="raise, skip"):
        DWDDetection(tmp_path, "daytime_clear", on_error="ignore", progress=False)
