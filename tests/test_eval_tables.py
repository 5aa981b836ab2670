"""Tidy results loading and the domain / per-class tables built from them."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from drsf_kit.errors import ConfigError, DataError
from drsf_kit.evaluation.results import REQUIRED_COLUMNS as REQUIRED
from drsf_kit.evaluation.results import detection_rows, load_results
from drsf_kit.evaluation.tables import METRIC_LABELS, domain_table, per_class_table, write_tables
from drsf_kit.utils.io import append_jsonl

SOURCE, TARGETS = "daytime_clear", ("daytime_foggy", "dusk_rainy")
SPLITS = {"daytime_clear": "test", "daytime_foggy": "all", "dusk_rainy": "all"}  # protocol all_images
# map50_voc07 per (variant, seed, domain); per-class AP: car = map + 0.1, bus = map - 0.1, bike no GT.
VALUES = {
    ("source_only", 0): {"daytime_clear": 0.50, "daytime_foggy": 0.20, "dusk_rainy": 0.10},
    ("source_only", 1): {"daytime_clear": 0.52, "daytime_foggy": 0.24, "dusk_rainy": 0.12},
    ("drsf", 0): {"daytime_clear": 0.51, "daytime_foggy": 0.30, "dusk_rainy": 0.20},
    ("drsf", 1): {"daytime_clear": 0.49, "daytime_foggy": 0.34, "dusk_rainy": 0.26},
}


def fake_result(m: float) -> dict:
    """An evaluate_detections-shaped dict with made-up numbers (tables only read the values)."""
    per_class = {"bus": m - 0.1, "bike": float("nan"), "car": m + 0.1}
    return {"map50_voc07": m, "ap50_voc07": per_class, "ap50_coco": m - 0.05,
            "ap50_coco_per_class": {k: v - 0.05 for k, v in per_class.items()}, "iou_threshold": 0.5}


def write_runs(root, protocol="all_images", values=VALUES):
    for (variant, seed), per_domain in values.items():
        run = f"{variant}_s{seed}"
        for domain, m in per_domain.items():
            for row in detection_rows(fake_result(m), variant=variant, seed=seed, domain=domain,
                                      split=SPLITS[domain], protocol=protocol, step=1000, run=run):
                append_jsonl(root / run / "results.jsonl", row)
    return root


@pytest.fixture()
def results(tmp_path):
    return load_results(write_runs(tmp_path / "runs"))


def test_load_results_two_run_folders_with_truncated_line(tmp_path):
    rows = detection_rows(fake_result(0.4), variant="drsf", seed=0, domain="dusk_rainy", split="all",
                          protocol="all_images", step=10, run="a", extra={"backbone": "r18"})
    append_jsonl(tmp_path / "a" / "results.jsonl", rows[0])
    for row in rows[1:]:
        append_jsonl(tmp_path / "b" / "results.jsonl", {**row, "run": "b"})
    with open(tmp_path / "b" / "results.jsonl", "a") as fh:
        fh.write('{"task": "det", "variant": "dr')  # a write cut short
    df = load_results([tmp_path / "a", tmp_path / "b" / "results.jsonl"])
    assert len(df) == len(rows) and set(df["run"]) == {"a", "b"}
    assert df.loc[df["metric"] == "map50_voc07", "value"].item() == pytest.approx(0.4)
    assert df["class"].iloc[0] is None and df["backbone"].eq("r18").all()
    # bike had no GT: its value is null on disk, NaN in the frame
    assert df[(df["class"] == "bike")]["value"].isna().all()
    assert len(load_results(tmp_path)) == len(rows)  # a folder of runs, searched recursively


def test_load_results_errors_name_the_file(tmp_path):
    bad = tmp_path / "r" / "results.jsonl"
    append_jsonl(bad, {"task": "det", "metric": "miou", "value": 0.3})
    with pytest.raises(DataError, match=r"results\.jsonl.*row 1 lacks.*variant"):
        load_results(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no results.jsonl"):
        load_results(tmp_path / "empty")
    with pytest.raises(DataError, match="missing_run: does not exist"):
        load_results(tmp_path / "missing_run")
    append_jsonl(tmp_path / "s" / "results.jsonl", {**dict.fromkeys(REQUIRED), "value": "high"})
    with pytest.raises(DataError, match="non-numeric value 'high'"):
        load_results(tmp_path / "s")


def test_domain_table_means_stds_and_caption(results):
    t = domain_table(results, "map50_voc07")
    assert list(t.index) == ["source_only", "drsf"]  # the ablation order
    assert t.loc["drsf", "daytime_clear"] == pytest.approx(0.50)
    assert t.loc["drsf", "daytime_foggy"] == pytest.approx(0.32)
    assert t.loc["drsf", "daytime_foggy ±std"] == pytest.approx(0.04 / 2**0.5)  # sample std of .30, .34
    # target mean per seed: drsf seed 0 -> .25, seed 1 -> .30; mean .275, std .05 / sqrt(2)
    assert t.loc["drsf", "target_mean"] == pytest.approx(0.275)
    assert t.loc["drsf", "target_mean ±std"] == pytest.approx(0.05 / 2**0.5)
    assert t.loc["source_only", "seeds"] == 2
    caption = t.attrs["caption"]
    assert "mAP@0.5, VOC2007 11-point, %" in caption
    assert "all_images" in caption and "targets scored on all their images, train.txt and test.txt together" in caption
    assert "test: daytime_clear (source)" in caption and "all: daytime_foggy, dusk_rainy" in caption


def test_rows_by_run_and_latest_step(tmp_path, results):
    later = detection_rows(fake_result(0.9), variant="drsf", seed=0, domain="dusk_rainy", split="all",
                           protocol="all_images", step=2000, run="drsf_s0")
    df = pd.concat([results, pd.DataFrame(later)], ignore_index=True)
    t = domain_table(df, "map50_voc07", rows="run")
    assert t.loc["drsf_s0", "dusk_rainy"] == pytest.approx(0.9)  # step 2000 replaces step 1000
    assert "dusk_rainy ±std" not in t.columns and t["seeds"].eq(1).all()


def test_mixed_protocols_are_refused(tmp_path, results):
    one_run = {("mdsf", 0): VALUES[("drsf", 0)]}
    other = load_results(write_runs(tmp_path / "other", protocol="drsf_code", values=one_run))
    with pytest.raises(DataError, match="mix protocols"):
        domain_table(pd.concat([results, other]), "map50_voc07")
    resplit = results.copy()
    resplit.loc[(resplit["run"] == "drsf_s0") & (resplit["domain"] == "daytime_foggy"), "split"] = "test"
    with pytest.raises(DataError, match="daytime_foggy.*several splits"):
        domain_table(resplit, "map50_voc07")


def test_two_runs_one_seed_are_not_merged(results):
    clone = results[results["run"] == "drsf_s0"].assign(run="drsf_s0_again")
    with pytest.raises(DataError, match="several runs"):
        domain_table(pd.concat([results, clone]), "map50_voc07")


def test_per_class_table(results):
    t = per_class_table(results, "map50_voc07", domain="daytime_foggy")
    assert t.attrs["metric"] == "ap50_voc07"
    assert t.attrs["value_columns"] == ["bus", "bike", "car", "class_mean"]  # DWD class order
    row = t.loc[("drsf", "daytime_foggy")]
    assert row["car"] == pytest.approx(0.42) and math.isnan(row["bike"])
    assert row["class_mean"] == pytest.approx(0.32)  # bike has no GT and is left out
    assert "AP@0.5 per class, VOC2007 11-point" in t.attrs["caption"]


def test_write_tables_writes_summary_and_per_class(tmp_path, results):
    paths = write_tables(results, tmp_path / "tables", "map50_voc07", name="dwd_det")
    assert {p.name for p in paths.values()} == {"dwd_det.md", "dwd_det.csv", "dwd_det_per_class.md",
                                                 "dwd_det_per_class.csv"}
    md = paths["summary_md"].read_text()
    assert md.startswith("Table: mAP@0.5, VOC2007 11-point, %") and "Protocol: all_images" in md
    assert "| drsf | 50.0 ± 1.4 | 32.0 ± 2.8 | 23.0 ± 4.2 | 27.5 ± 3.5 | 2 |" in md
    csv = pd.read_csv(paths["summary_csv"], comment="#", index_col=0)
    assert csv.loc["drsf", "daytime_foggy"] == 32.0 and csv.loc["drsf", "daytime_foggy_std"] == 2.8
    assert paths["summary_csv"].read_text().startswith("# mAP@0.5")
    per_class = paths["per_class_md"].read_text()
    assert per_class.startswith("Table: AP@0.5 per class") and "| drsf | dusk_rainy |" in per_class
    # the COCO table is captioned as COCO, and its per-class companion is COCO AP50 too
    coco = write_tables(results, tmp_path / "tables", "ap50_coco")
    assert "COCO-style" in coco["summary_md"].read_text() and "COCO-style" in coco["per_class_md"].read_text()


def test_unknown_metric_and_domain_errors(results):
    with pytest.raises(DataError, match="no summary rows"):
        domain_table(results, "miou")
    with pytest.raises(ConfigError, match="no caption"):
        domain_table(results, "f1")
    with pytest.raises(ConfigError, match="night_rainy"):
        domain_table(results, "map50_voc07", targets=["night_rainy"])
    assert set(METRIC_LABELS) >= {"map50_voc07", "ap50_coco", "ap_coco", "ap75_coco", "ece", "miou", "pixel_acc",
                                  "iou", "ap50_voc07"}
    json.dumps(METRIC_LABELS)
