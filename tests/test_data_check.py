"""`drsf data check` and `drsf data make-mini`, through the real command line entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from test_dwd import CAR, truncate, write_domain
from test_segmentation_datasets import label_ids, save_png, write_cityscapes, write_gtav

import drsf_kit.cli.data
from drsf_kit.cli import main
from drsf_kit.data.check import check_dataset, format_report


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["data", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def table_row(text: str, name: str) -> list[str]:
    """The cells of the table row whose first cell is ``name`` (``domain`` = the header)."""
    lines = text.splitlines()
    table = lines[next(k for k, line in enumerate(lines) if line.startswith("domain ")):]
    return next(line.split() for line in table if line.startswith(name + " "))


def clean(root: Path) -> Path:
    write_domain(root, "daytime_clear", {"a": [CAR, ("person", 2, 2, 9, 30)], "b": [CAR], "c": [("bus", 1, 1, 40, 30)]},
                 train=["a", "b"], test=["c"], masks=True)
    write_domain(root, "dusk_rainy", {"r": [CAR]}, masks=True)
    return root


def test_clean_dataset_passes(tmp_path, capsys):
    code, out, _ = run(capsys, "check", clean(tmp_path), "--no-progress")
    assert code == 0, out
    header = table_row(out, "domain")
    assert header[:4] == ["domain", "images:train", "images:test", "images:all"]
    row = dict(zip(header, table_row(out, "daytime_clear")))
    assert row["images:train"] == "2" and row["images:test"] == "1" and row["images:all"] == "3"
    assert row["boxes:car"] == "2" and row["boxes:person"] == "1" and row["boxes:bus"] == "1"
    assert row["masks"] == "3" and row["problems"] == "none"
    rainy = dict(zip(header, table_row(out, "dusk_rainy")))
    assert rainy["images:test"] == "-" and rainy["images:all"] == "1"
    assert out.rstrip().endswith("Result: OK")


def test_errors_are_listed_and_fail(tmp_path, capsys):
    voc = clean(tmp_path) / "daytime_clear" / "VOC2007"
    truncate(voc / "JPEGImages" / "a.jpg")
    (voc / "JPEGImages" / "b.jpg").unlink()
    save_png(np.full((32, 48), 40, np.uint8), voc / "SegmentationClass" / "c.png")
    rainy = tmp_path / "dusk_rainy" / "VOC2007"
    save_png(np.zeros((10, 48), np.uint8), rainy / "SegmentationClass" / "r.png")
    code, out, _ = run(capsys, "check", tmp_path, "--no-progress")
    assert code == 1
    assert f"error: {voc / 'JPEGImages' / 'a.jpg'}: image cannot be decoded, the file is truncated" in out
    assert f"error: {voc / 'JPEGImages' / 'b.jpg'}: image file is missing" in out
    assert f"error: {voc / 'SegmentationClass' / 'c.png'}: mask holds values 40; expected train ids 0..18 or 255" in out
    assert f"error: {rainy / 'SegmentationClass' / 'r.png'}: mask is 48x10 but image r.jpg is 48x32" in out
    assert "missing_image=1" in out and "unreadable_image=1" in out and "size_mismatch=1" in out
    assert "Result: FAILED: 4 errors" in out


def test_warnings_fail_only_when_strict(tmp_path, capsys):
    write_domain(tmp_path, "daytime_foggy", {"w": [("car", 30, 2, 60, 20)], "e": [], "u": [("tram", 1, 1, 5, 5)]})
    code, out, _ = run(capsys, "check", tmp_path, "--no-progress")
    assert code == 0 and "Result: OK (2 warnings)" in out
    assert "w.xml: object 1 (car) box (xmin, ymin, xmax, ymax) = (30, 2, 60, 20) reaches outside the 48x32 image" in out
    assert "info: " in out and "e.xml: annotation has no objects" in out
    code, out, _ = run(capsys, "check", tmp_path, "--strict", "--no-progress")
    assert code == 1 and "error: " in out and "u.xml: object 1 has unknown class 'tram'" in out
    report = check_dataset(tmp_path, strict=False, progress=False)
    assert (report.count("error"), report.count("warning"), report.count("info")) == (0, 2, 1) and report.ok
    markdown = format_report(report, markdown=True, max_problems=1)
    assert "| domain | images:train" in markdown and "| daytime_foggy | 3 | - | 3 |" in markdown
    assert "- ... and 2 more" in markdown


def test_domains_option_and_layout_errors(tmp_path, capsys):
    clean(tmp_path)
    truncate(tmp_path / "dusk_rainy" / "VOC2007" / "JPEGImages" / "r.jpg")
    code, out, _ = run(capsys, "check", tmp_path, "--domains", "daytime_clear", "--no-progress")
    assert code == 0 and "dusk_rainy" not in out
    code, out, _ = run(capsys, "check", tmp_path, "--domains", "night_sunny", "--no-progress")
    assert code == 1 and f"error: {tmp_path / 'night_sunny'}: no VOC2007 folder" in out
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "check", tmp_path / "empty", "--no-progress")
    assert code == 1 and err.startswith(f"error: {tmp_path / 'empty'}: no domain folders found")
    code, _, err = run(capsys, "check", tmp_path / "nowhere", "--no-progress")
    assert code == 1 and "dataset folder does not exist" in err


def test_cityscapes_and_gtav_formats(tmp_path, capsys):
    city = tmp_path / "cityscapes"
    names = write_cityscapes(city, "val")
    write_cityscapes(city, "train", cities=("zurich",), per_city=1)
    code, out, _ = run(capsys, "check", city, "--format", "cityscapes", "--no-progress")
    row = table_row(out, "cityscapes")
    assert code == 0 and row[1:5] == ["1", "4", "5", "none"]  # train, val, masks, problems
    bad = city / "gtFine" / "val" / "aachen" / f"{names[0]}_gtFine_labelTrainIds.png"
    save_png(np.full((24, 40), 19, np.uint8), bad)
    code, out, _ = run(capsys, "check", city, "--format", "cityscapes", "--no-progress")
    assert code == 1 and f"error: {bad}: mask holds values 19" in out

    gtav = tmp_path / "gtav"
    write_gtav(gtav, 2)
    save_png(label_ids(20, 12), gtav / "labels" / "00002.png")
    code, out, _ = run(capsys, "check", gtav, "--format", "gtav", "--no-progress")
    assert code == 0 and "warning: " in out and "00002.png: label is 20x12 but image is 40x24" in out
    assert run(capsys, "check", gtav, "--format", "gtav", "--strict", "--no-progress")[0] == 1
    Image.new("RGB", (40, 24)).save(gtav / "labels" / "00001.png")
    code, out, _ = run(capsys, "check", gtav, "--format", "gtav", "--no-progress")
    assert code == 1 and "00001.png: label image has mode RGB" in out


def test_make_mini_calls_the_renderer_and_checks(tmp_path, capsys, monkeypatch):
    calls = []

    def fake_make_mini_weather(out, **kwargs):
        calls.append((out, kwargs))
        write_domain(Path(out), "daytime_clear", {"a": [CAR]}, test=["a"])
        return Path(out)

    monkeypatch.setattr(drsf_kit.cli.data, "make_mini_weather", fake_make_mini_weather)
    out_dir = tmp_path / "mini"
    code, out, _ = run(capsys, "make-mini", "--out", out_dir, "--seed", 3, "--n-train", 5, "--height", 90,
                       "--overwrite", "--no-progress")
    assert code == 0
    assert calls == [(str(out_dir), {"seed": 3, "n_train": 5, "n_test": 200, "n_target": 200, "height": 90,
                                     "width": 320, "progress": False, "overwrite": True})]
    assert f"mini-weather benchmark written to {out_dir}" in out and "Result: OK" in out


def test_mini_weather_benchmark_passes_the_check(request, capsys):
    """Integration: the embedded benchmark loads through every loader and passes the check."""
    tiny_weather = request.getfixturevalue("tiny_weather")
    from drsf_kit.data.cityscapes import MiniWeatherSegmentation
    from drsf_kit.data.classes import DWD_DOMAINS
    from drsf_kit.data.dwd import PROTOCOLS, DWDDetection, split_for

    code, out, _ = run(capsys, "check", tiny_weather, "--no-progress")
    assert code == 0, out
    for domain in DWD_DOMAINS:
        assert int(dict(zip(table_row(out, "domain"), table_row(out, domain)))["images:all"]) > 0
        for protocol in PROTOCOLS:
            assert len(DWDDetection(tiny_weather, domain, split_for(domain, protocol), progress=False)) > 0
    ds = DWDDetection(tiny_weather, "daytime_clear", "train", with_masks=True, progress=False)
    image, target = ds[0]
    assert target["mask"].shape == image.shape[1:] and len(target["boxes"]) == len(target["labels"])
    seg = MiniWeatherSegmentation(tiny_weather, "night_rainy", "all")
    assert seg[0][1].shape == seg[0][0].shape[1:]
