"""Mini-weather, Cityscapes and GTAV segmentation datasets on tiny folders written by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_dwd import CAR, truncate, write_domain, write_image

from drsf_kit.data.cityscapes import CityscapesSegmentation, GTAVSegmentation, MiniWeatherSegmentation
from drsf_kit.errors import ConfigError, DataError

W, H = 40, 24


def label_ids(width: int = W, height: int = H) -> np.ndarray:
    """Cityscapes label ids: road (7) bottom half, car (26) in a block, sky (23) top row, an unlabeled (0) pixel."""
    ids = np.full((height, width), 23, np.uint8)
    ids[height // 2:] = 7
    ids[height // 2: height // 2 + 4, 5:15] = 26
    ids[0, 0] = 0
    return ids


def expected_train_ids(width: int = W, height: int = H) -> np.ndarray:
    ids = np.full((height, width), 10, np.int64)
    ids[height // 2:] = 0
    ids[height // 2: height // 2 + 4, 5:15] = 13
    ids[0, 0] = 255
    return ids


def save_png(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_cityscapes(root: Path, split: str = "val", cities=("aachen", "bonn"), per_city: int = 2) -> list[str]:
    names = []
    for city in cities:
        for k in range(per_city):
            name = f"{city}_{k:06d}_000019"
            write_image(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", W, H, seed=k)
            save_png(label_ids(), root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")
            names.append(name)
    return names


def write_gtav(root: Path, n: int = 3) -> None:
    for k in range(n):
        write_image(root / "images" / f"{k + 1:05d}.png", W, H, seed=k)
        save_png(label_ids(), root / "labels" / f"{k + 1:05d}.png")


# ---- mini-weather ------------------------------------------------------------------------------------

def test_mini_weather_segmentation(tmp_path):
    write_domain(tmp_path, "daytime_foggy", {"a": [CAR], "b": [CAR], "c": [CAR]}, train=["a", "b"], test=["c"],
                 masks=True)
    ds = MiniWeatherSegmentation(tmp_path, "daytime_foggy", "train")
    assert len(ds) == 2 and ds.ids == ["a", "b"]
    image, mask = ds[0]
    assert image.shape == (3, 32, 48) and image.dtype == torch.float32
    assert mask.dtype == torch.int64 and mask.shape == (32, 48)
    assert mask[:16].eq(10).all() and mask[16:].eq(0).all()  # train ids are used as stored
    assert MiniWeatherSegmentation(tmp_path, "daytime_foggy", "all").ids == ["a", "b", "c"]


def test_mini_weather_segmentation_errors(tmp_path):
    voc = write_domain(tmp_path, "night_sunny", {"a": [CAR], "b": [CAR]}, masks=True)
    save_png(np.zeros((10, 10), np.uint8), voc / "SegmentationClass" / "b.png")
    ds = MiniWeatherSegmentation(tmp_path, "night_sunny")
    with pytest.raises(DataError, match=r"SegmentationClass/b\.png: label is 10x10 but image b\.jpg is 48x32"):
        ds[1]
    (voc / "SegmentationClass" / "a.png").unlink()
    with pytest.raises(DataError, match=r"SegmentationClass/a\.png: mask file is missing"):
        MiniWeatherSegmentation(tmp_path, "night_sunny")
    skipped = MiniWeatherSegmentation(tmp_path, "night_sunny", on_error="skip")
    assert skipped.ids == ["b"] and [p.kind for p in skipped.problems] == ["missing_mask"]
    write_domain(tmp_path, "dusk_rainy", {"a": [CAR]})
    with pytest.raises(DataError, match=r"dusk_rainy/VOC2007/SegmentationClass: segmentation masks folder is missing"):
        MiniWeatherSegmentation(tmp_path, "dusk_rainy")


# ---- Cityscapes --------------------------------------------------------------------------------------

def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    names = write_cityscapes(tmp_path)
    ds = CityscapesSegmentation(tmp_path, "val")
    assert ds.ids == sorted(names) and len(ds) == 4
    image, mask = ds[0]
    assert image.shape == (3, H, W) and mask.dtype == torch.int64
    assert torch.equal(mask, torch.from_numpy(expected_train_ids()))
    # a *_labelTrainIds.png file is used as is when present
    train_ids = np.full((H, W), 5, np.uint8)
    save_png(train_ids, tmp_path / "gtFine" / "val" / "aachen" / f"{names[0]}_gtFine_labelTrainIds.png")
    assert CityscapesSegmentation(tmp_path, "val")[0][1].eq(5).all()


def test_cityscapes_layout_and_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"leftImg8bit/val: Cityscapes folder is missing"):
        CityscapesSegmentation(tmp_path, "val")
    names = write_cityscapes(tmp_path, "train")
    with pytest.raises(DataError, match=r"gtFine/val: Cityscapes folder is missing"):
        (tmp_path / "leftImg8bit" / "val").mkdir(parents=True)
        CityscapesSegmentation(tmp_path, "val")
    label = tmp_path / "gtFine" / "train" / "bonn" / f"{names[-1]}_gtFine_labelIds.png"
    save_png(label_ids(W, H + 1), label)
    with pytest.raises(DataError, match=rf"{names[-1]}_gtFine_labelIds\.png: label is 40x25 but image "
                                        rf"{names[-1]}_leftImg8bit\.png is 40x24"):
        CityscapesSegmentation(tmp_path, "train")[3]
    label.unlink()
    with pytest.raises(DataError, match=rf"{names[-1]}_gtFine_labelIds\.png: label file is missing"):
        CityscapesSegmentation(tmp_path, "train")
    truncate(tmp_path / "leftImg8bit" / "train" / "aachen" / f"{names[0]}_leftImg8bit.png")
    ds = CityscapesSegmentation(tmp_path, "train", on_error="skip")
    assert len(ds) == 2 and {p.kind for p in ds.problems} == {"missing_mask", "unreadable_image"}


# ---- GTAV ---------------------------------------------------------------------------------------------

def test_gtav_all_and_split_files(tmp_path):
    write_gtav(tmp_path, 3)
    ds = GTAVSegmentation(tmp_path, progress=False)
    assert ds.ids == ["00001", "00002", "00003"]
    assert torch.equal(ds[2][1], torch.from_numpy(expected_train_ids()))
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "train.txt").write_text("00001\n00003.png\n")
    assert GTAVSegmentation(tmp_path, "train", progress=False).ids == ["00001", "00003"]
    with pytest.raises(DataError, match=r"split/val\.txt: split file is missing"):
        GTAVSegmentation(tmp_path, "val", progress=False)
    from scipy.io import savemat

    savemat(tmp_path / "split.mat", {"trainIds": np.array([[1], [2]]), "valIds": np.array([[3]])})
    assert GTAVSegmentation(tmp_path, "val", progress=False).ids == ["00003"]


def test_gtav_size_mismatch_policies(tmp_path):
    write_gtav(tmp_path, 2)
    small = label_ids(W // 2, H // 2)  # half size: nearest upsampling repeats every pixel twice
    save_png(small, tmp_path / "labels" / "00002.png")
    ds = GTAVSegmentation(tmp_path, progress=False)
    (problem,) = ds.problems
    assert problem.kind == "size_mismatch" and problem.severity == "warning" and problem.path.endswith("00002.png")
    assert "label is 20x12 but image is 40x24; label resized" in problem.message
    _, mask = ds[1]
    expected = np.repeat(np.repeat(expected_train_ids(W // 2, H // 2), 2, axis=0), 2, axis=1)
    assert mask.shape == (H, W) and torch.equal(mask, torch.from_numpy(expected))
    assert GTAVSegmentation(tmp_path, mismatch="skip", progress=False).ids == ["00001"]
    with pytest.raises(DataError, match=r"labels/00002\.png: label is 20x12 but image is 40x24"):
        GTAVSegmentation(tmp_path, mismatch="error", progress=False)
    with pytest.raises(ConfigError, match="resize, skip, error"):
        GTAVSegmentation(tmp_path, mismatch="crop", progress=False)


def test_gtav_layout_errors(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"labels: GTAV folder is missing; expected .*labels/<id>\.png"):
        GTAVSegmentation(tmp_path, progress=False)
    write_gtav(tmp_path, 2)
    (tmp_path / "labels" / "00002.png").unlink()
    with pytest.raises(DataError, match=r"labels/00002\.png: label file is missing"):
        GTAVSegmentation(tmp_path, progress=False)
    save_png(np.zeros((H, W, 3), np.uint8), tmp_path / "labels" / "00002.png")  # a colour label image
    with pytest.raises(DataError, match=r"00002\.png: label image has mode RGB"):
        GTAVSegmentation(tmp_path, progress=False)[1]
