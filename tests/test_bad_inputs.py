"""Bad input gets one clear line naming the file and the problem, never silent corruption: 16-bit and
other non-8-bit images, decompression bombs, non-finite or mistyped config values, an unwritable
output folder and a notebook that is not JSON."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from test_dwd import CAR, write_domain

from drsf_kit.cli import main
from drsf_kit.config import load_config
from drsf_kit.data.dwd import DWDDetection
from drsf_kit.data.voc import load_rgb
from drsf_kit.errors import ConfigError, DataError


def _sixteen_bit(voc, image_id: str, value: int, width: int, height: int) -> None:
    (voc / "JPEGImages" / f"{image_id}.jpg").unlink()
    Image.fromarray(np.full((height, width), value, np.uint16)).save(voc / "JPEGImages" / f"{image_id}.png")


def test_16_bit_images_are_scaled_not_clipped(tmp_path, capsys):
    voc = write_domain(tmp_path, "daytime_clear", {"a": [CAR], "b": [CAR]}, test=["a", "b"])
    width, height = Image.open(voc / "JPEGImages" / "a.jpg").size
    _sixteen_bit(voc, "a", 32896, width, height)  # mid-grey in 16 bits (128 * 257)
    assert Image.open(voc / "JPEGImages" / "a.png").mode == "I;16"
    arr = load_rgb(voc / "JPEGImages" / "a.png")
    assert arr.shape == (height, width, 3) and arr.dtype == np.uint8 and set(np.unique(arr)) == {128}
    image, target = DWDDetection(tmp_path, "daytime_clear", "test")[0]
    assert abs(float(image.mean()) - 128 / 255) < 1e-6 and len(target["boxes"]) == 1  # not all white
    assert main(["data", "check", str(tmp_path), "--no-progress"]) == 0


def test_images_of_unknown_range_are_refused_with_the_file_named(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(DataError, match=r"f\.tiff: image mode F .* cannot be converted to 8-bit RGB"):
        load_rgb(tmp_path / "f.tiff")


def test_a_decompression_bomb_is_one_clear_line(tmp_path, capsys, monkeypatch):
    voc = write_domain(tmp_path, "daytime_clear", {"a": [CAR], "b": [CAR]}, test=["a", "b"])
    width, height = Image.open(voc / "JPEGImages" / "a.jpg").size
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", width * height // 4)  # "a" now counts as a bomb
    with pytest.raises(DataError, match=r"a\.jpg: image is too large to decode safely"):
        load_rgb(voc / "JPEGImages" / "a.jpg")
    assert main(["data", "check", str(tmp_path), "--no-progress"]) == 1
    out = capsys.readouterr()
    assert f"{voc / 'JPEGImages' / 'a.jpg'}: image is too large to decode safely" in out.out
    assert "Traceback" not in out.out + out.err


@pytest.mark.parametrize("override, message", [
    ("train.lr=nan", "'train.lr' expects a finite number, got 'nan'"),
    ("train.grad_clip=nan", "'train.grad_clip' expects a finite number"),
    ("train.weight_decay=inf", "'train.weight_decay' expects a finite number"),
    ("model.hparams.alpha=abc", "'model.hparams.alpha' expects a number, got 'abc'"),
    ("model.hparams.reduction=2.5", "'model.hparams.reduction' expects an integer"),
    ("model.hparams.entropy_mode=3", "'model.hparams.entropy_mode' expects a string"),
])
def test_non_finite_and_mistyped_config_values_are_refused(override, message, capsys):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, [override])
    assert main(["train", override, "--print-config"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err  # one line, no traceback


@pytest.mark.parametrize("how", ["read_only", "file_in_the_way"])
def test_unwritable_output_folder_is_one_line(tmp_path, capsys, how):
    parent = tmp_path / "out"
    if how == "read_only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        parent.mkdir()
        parent.chmod(0o500)
    else:
        parent.write_text("a file where the output folder should go")
    try:
        code = main(["data", "make-mini", "--out", str(parent / "mini"), "--n-train", "1", "--n-test", "1",
                     "--n-target", "1", "--no-progress"])
    finally:
        if parent.is_dir():
            parent.chmod(0o700)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(parent) in err and ("Permission denied" in err or "Not a directory" in err)


def test_debug_flag_shows_the_traceback(capsys):
    with pytest.raises(ConfigError):
        main(["--debug", "train", "train.lr=nan", "--print-config"])


def test_a_notebook_that_is_not_json_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{ not json")
    code = main(["batch", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and f"{bad}: not a notebook" in err and "Traceback" not in err
