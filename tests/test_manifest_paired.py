"""Manifests (validation, folders, duplicates, resume keys, geometry) and the paired synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_dwd import write_domain, write_image

from drsf_kit.data.manifest import (
    REQUIRED_FIELDS,
    append_manifest_row,
    completed_keys,
    map_boxes,
    map_mask,
    read_manifests,
    row_path,
    validate_row,
)
from drsf_kit.data.paired import PairedSynthetic
from drsf_kit.errors import ConfigError, DataError


def row(source_id="s1", domain="daytime_foggy", **extra) -> dict:
    base = {"source_id": source_id, "source_domain": "daytime_clear", "domain": domain,
            "path": f"{source_id}.jpg", "generator": "img2img", "prompt": "a foggy street", "seed": 0}
    return {**base, **extra}


def write_rows(path: Path, rows: list[dict], tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


# ---- validation and reading ----------------------------------------------------------------------------

def test_validate_row_names_file_and_field(tmp_path):
    where = tmp_path / "manifest.jsonl"
    assert validate_row(row(size=[64, 64], crop=[8, 0, 40, 32], index=1), where)
    assert set(REQUIRED_FIELDS) == set(row())
    bad = {k: v for k, v in row().items() if k not in ("seed", "prompt")}
    with pytest.raises(DataError, match=r"manifest\.jsonl: source_id 's1': missing required field\(s\) prompt, seed"):
        validate_row(bad, where)
    cases = [(row(seed="7"), "'seed' must be an integer"), (row(size=[64]), "'size' must be"),
             (row(crop=[10, 0, 5, 8]), "'crop' .* is empty"), (row(path="/abs/s1.jpg"), "'path' must be relative"),
             (row(index=-1), "'index' must be a non-negative"), (row(domain=""), "'domain' must be a non-empty")]
    for bad_row, message in cases:
        with pytest.raises(DataError, match=message):
            validate_row(bad_row, where)


def test_read_manifests_folder_with_shards_and_truncated_last_line(tmp_path):
    write_rows(tmp_path / "gen" / "daytime_foggy" / "manifest.jsonl", [row("s1"), row("s2")],
               tail='{"source_id": "s3", "sour')  # a write cut short by a kill
    write_rows(tmp_path / "gen" / "night_sunny" / "manifest.part-0-of-2.jsonl", [row("s1", "night_sunny")])
    write_rows(tmp_path / "gen" / "night_sunny" / "manifest.part-1-of-2.jsonl", [row("s2", "night_sunny")])
    (tmp_path / "gen" / "night_sunny" / "notes.jsonl").write_text("not a manifest\n")
    rows = read_manifests(tmp_path / "gen")
    assert [(r["domain"], r["source_id"]) for r in rows] == [
        ("daytime_foggy", "s1"), ("daytime_foggy", "s2"), ("night_sunny", "s1"), ("night_sunny", "s2")]
    assert row_path(rows[2]) == tmp_path / "gen" / "night_sunny" / "s1.jpg"
    assert len(read_manifests(tmp_path / "gen" / "daytime_foggy" / "manifest.jsonl")) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest.jsonl"):
        read_manifests(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        read_manifests(tmp_path / "nowhere")


def test_duplicates_and_bad_rows_are_refused(tmp_path):
    first = write_rows(tmp_path / "a" / "manifest.jsonl", [row("s1")])
    second = write_rows(tmp_path / "b" / "manifest.jsonl", [row("s2"), row("s1")])
    with pytest.raises(DataError) as err:
        read_manifests(tmp_path)
    assert str(second) in str(err.value) and str(first) in str(err.value)
    assert "row 2: duplicate (domain, source_id, index) = ('daytime_foggy', 's1', 0)" in str(err.value)
    write_rows(tmp_path / "b" / "manifest.jsonl", [row("s1", index=1)])  # another image of s1: fine
    assert len(read_manifests(tmp_path)) == 2
    write_rows(tmp_path / "b" / "manifest.jsonl", [row("s2"), {**row("s3"), "seed": None}, row("s4")])
    with pytest.raises(DataError, match=r"b/manifest\.jsonl: row 2: source_id 's3': field 'seed'"):
        read_manifests(tmp_path)


def test_append_and_completed_keys(tmp_path):
    manifest = tmp_path / "out" / "daytime_foggy" / "manifest.jsonl"
    assert completed_keys(manifest) == set() and completed_keys(tmp_path / "out") == set()
    with pytest.raises(DataError, match="missing required field"):
        append_manifest_row(manifest, {"source_id": "s1"})
    assert not manifest.exists()
    write_image(manifest.parent / "s1.jpg")
    append_manifest_row(manifest, {**row("s1"), "_manifest_dir": "dropped"})
    append_manifest_row(manifest, row("s2"))  # its image was never written: not complete
    assert "_manifest_dir" not in manifest.read_text()
    with open(manifest, "a") as fh:
        fh.write('{"source_id": "s9"')  # killed mid-append
    append_manifest_row(manifest, row("s1", index=1, path="s1_1.jpg"))
    write_image(manifest.parent / "s1_1.jpg")
    assert completed_keys(manifest) == {("daytime_foggy", "s1", 0), ("daytime_foggy", "s1", 1)}
    assert completed_keys(tmp_path / "out") == completed_keys(manifest)


# ---- geometry ------------------------------------------------------------------------------------------

def test_map_boxes_crop_then_resize():
    boxes = torch.tensor([[0.0, 0.0, 20.0, 16.0], [30.0, 4.0, 40.0, 30.0], [0.0, 19.0, 5.0, 30.0],
                          [8.0, 0.0, 8.4, 10.0]])
    mapped, keep = map_boxes(boxes, [8, 0, 40, 32], [64, 64])
    assert keep.tolist() == [True, True, False, False]  # outside the crop / under 1 px after mapping
    torch.testing.assert_close(mapped, torch.tensor([[0.0, 0.0, 24.0, 32.0], [44.0, 8.0, 64.0, 60.0]]))
    whole, keep = map_boxes(np.array([[10.0, 10.0, 30.0, 30.0]]), None, [96, 64], src_size=(48, 32))
    assert isinstance(whole, np.ndarray) and keep.tolist() == [True]
    np.testing.assert_allclose(whole, [[20.0, 20.0, 60.0, 60.0]])
    same, _ = map_boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), [0, 0, 10, 10], None)
    torch.testing.assert_close(same, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    empty, keep = map_boxes(torch.zeros(0, 4), [0, 0, 10, 10], [5, 5])
    assert empty.shape == (0, 4) and keep.shape == (0,)
    with pytest.raises(ValueError, match="src_size"):
        map_boxes(torch.zeros(1, 4), None, [5, 5])


def test_map_mask_crop_then_resize():
    mask = torch.arange(4 * 6, dtype=torch.int64).reshape(4, 6)
    out = map_mask(mask, [2, 1, 5, 3], [6, 4])  # 3x2 crop, doubled
    expected = torch.tensor([[8, 8, 9, 9, 10, 10], [8, 8, 9, 9, 10, 10], [14, 14, 15, 15, 16, 16],
                             [14, 14, 15, 15, 16, 16]])
    assert torch.equal(out, expected) and out.dtype == torch.int64
    half = map_mask(mask.numpy(), None, [3, 2])  # nearest samples pixel centres: (1, 3, 5) x (1, 3)
    np.testing.assert_array_equal(half, [[7, 9, 11], [19, 21, 23]])
    outside = map_mask(mask, [4, 2, 8, 4], None)  # crop reaching past the right edge: ignore there
    assert outside.tolist() == [[16, 17, 255, 255], [22, 23, 255, 255]]


# ---- paired synthetic data -------------------------------------------------------------------------------

def make_paired(tmp_path: Path):
    """Source: 48x32 images s1, s2 (train), t1 (test). Twins in two pseudo-domains with different geometry."""
    data = tmp_path / "data"
    items = {"s1": [("car", 1, 1, 20, 16), ("person", 31, 5, 40, 30), ("bike", 1, 20, 5, 30)],
             "s2": [("bus", 11, 11, 30, 30)], "t1": [("truck", 1, 1, 10, 10)]}
    write_domain(data, "daytime_clear", items, train=["s1", "s2"], test=["t1"], masks=True)
    synth = tmp_path / "synth" / "img2img"
    fog, night = synth / "daytime_foggy", synth / "night_sunny"
    write_image(fog / "s1.jpg", 64, 64)
    write_image(fog / "t1.jpg", 48, 32)
    write_rows(fog / "manifest.jsonl", [row("s1", size=[64, 64], crop=[8, 0, 40, 32]),
                                        row("t1", size=[48, 32], crop=None)])
    write_image(night / "s1.jpg", 48, 32)
    write_image(night / "s2.jpg", 96, 64)
    write_rows(night / "manifest.jsonl", [row("s1", "night_sunny", size=[48, 32]),
                                          row("s2", "night_sunny", size=[96, 64], crop=None)])
    return data, synth


def test_paired_detection_joins_and_maps_boxes(tmp_path):
    data, synth = make_paired(tmp_path)
    ds = PairedSynthetic(data, synth, progress=False)
    assert len(ds) == 3 and ds.domains == ["daytime_foggy", "night_sunny"] and ds.source_ids == ["s1", "s2"]
    assert ds.twins("s1") == {"daytime_foggy": [0], "night_sunny": [1]} and ds.twins("t1") == {}
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and target["domain"] == "daytime_foggy" and target["source_id"] == "s1"
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0.0, 24.0, 32.0], [44.0, 8.0, 64.0, 60.0]]))
    assert target["labels"].tolist() == [3, 5] and target["difficult"].tolist() == [False, False]
    _, target = ds[2]  # s2 at night, whole image doubled
    torch.testing.assert_close(target["boxes"], torch.tensor([[20.0, 20.0, 60.0, 60.0]]))
    assert target["labels"].tolist() == [1]
    src_image, src_target = ds.source[ds.source_index("s2")]
    assert src_target["image_id"] == "s2" and src_image.shape == (3, 32, 48)
    every = PairedSynthetic(data, synth, source_split="all", domains=["daytime_foggy"], progress=False)
    assert every.source_ids == ["s1", "t1"] and every.domains == ["daytime_foggy"]
    assert every[1][1]["labels"].tolist() == [7]


def test_paired_segmentation_maps_masks(tmp_path):
    data, synth = make_paired(tmp_path)
    ds = PairedSynthetic(data, synth, task="seg", progress=False)
    image, target = ds[0]
    mask = target["mask"]
    assert mask.shape == (64, 64) and mask.dtype == torch.int64
    # source: rows 0..15 sky (10), rows 16..31 road (0); the 32-row crop doubled: 32 rows of each
    assert mask[:32].eq(10).all() and mask[32:].eq(0).all() and target["source_id"] == "s1"


def test_paired_errors(tmp_path):
    data, synth = make_paired(tmp_path)
    with pytest.raises(ConfigError, match="dusk_rainy not found .* present: daytime_foggy, night_sunny"):
        PairedSynthetic(data, synth, domains=["dusk_rainy"], progress=False)
    with pytest.raises(DataError, match="no manifest rows were generated from source domain 'night_sunny'"):
        PairedSynthetic(data, synth, source_domain="night_sunny", progress=False)
    (synth / "night_sunny" / "s2.jpg").unlink()
    with pytest.raises(DataError, match=r"night_sunny/s2\.jpg: generated image listed in .*manifest\.jsonl is missing"):
        PairedSynthetic(data, synth, progress=False)
    skipped = PairedSynthetic(data, synth, on_error="skip", progress=False)
    assert len(skipped) == 2 and [p.kind for p in skipped.problems] == ["missing_image"]
    manifest = synth / "night_sunny" / "manifest.jsonl"
    write_rows(manifest, [row("s1", "night_sunny"), row("zz9", "night_sunny")])
    with pytest.raises(DataError, match=rf"{manifest}: row for zz9\.jpg names source_id 'zz9', which is not an image"):
        PairedSynthetic(data, synth, progress=False)
    write_rows(manifest, [row("s1", "night_sunny", size=[50, 32])])
    # a twin whose size is not its manifest's is refused when the set is built, not when it is drawn
    with pytest.raises(DataError, match=r"night_sunny/s1\.jpg: .*says the image is 50x32 but it is 48x32"):
        PairedSynthetic(data, synth, progress=False)
    Image.new("RGB", (4, 4)).save(synth / "daytime_foggy" / "s1.jpg")
    (synth / "daytime_foggy" / "s1.jpg").write_bytes((synth / "daytime_foggy" / "s1.jpg").read_bytes()[:40])
    with pytest.raises(DataError, match=r"daytime_foggy/s1\.jpg: image cannot be decoded"):
        PairedSynthetic(data, synth, verify_images=True, progress=False)
