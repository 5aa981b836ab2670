"""drsf_kit.workflows.protocol and .report (`drsf protocol`): runs are paired by seed, shards split the runs
without overlap, and the report's target means and paired differences come from target rows only (never
validation rows); the committed reports are what the report code makes of the committed rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from drsf_kit.cli import main
from drsf_kit.workflows import protocol as protocol_module
from drsf_kit.workflows import report

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def protocol():
    return protocol_module


def test_jobs_share_source_only_across_levels_and_are_seed_major(protocol):
    proto, _ = protocol.load_protocol("det")
    todo = protocol.jobs_of(proto, None, ["clean", "ldm"], [0, 1])
    so = [j for j in todo if j["variant"] == "source_only"]
    assert len(so) == 2 and all(j["level"] == "shared" and j["serves"] == ["clean", "ldm"] for j in so)
    per_level = {lv: len(proto["variants"][lv]) - 1 for lv in ("clean", "ldm")}  # minus the shared source_only
    assert len(todo) == 2 * (1 + per_level["clean"] + per_level["ldm"])
    assert [j["seed"] for j in todo] == sorted(j["seed"] for j in todo)
    keys = [(j["level"], j["variant"], j["seed"]) for j in todo]
    assert len(keys) == len(set(keys))


def test_shards_partition_the_runs(protocol):
    proto, _ = protocol.load_protocol("det")
    todo = protocol.jobs_of(proto, None, ["clean", "ldm"], [0, 1, 2, 3, 4])
    keys = lambda js: [(j["level"], j["variant"], j["seed"]) for j in js]  # noqa: E731
    shards = [keys(todo[k::2]) for k in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(keys(todo))
    assert abs(len(shards[0]) - len(shards[1])) <= 1


def _rows(variant, seed, targets, val, fidelity="ldm"):
    common = {"task": "det", "variant": variant, "seed": seed, "fidelity": fidelity, "protocol": "v2/all_images",
              "metric": "map50_voc07", "class": None}
    rows = [{**common, "domain": d, "split": "all", "value": v, "unseen": d == "night_rainy", "role": "target"}
            for d, v in targets.items()]
    rows.append({**common, "domain": "daytime_clear", "split": "test", "value": 0.7, "unseen": False,
                 "role": "source_test"})
    # validation rows carry a huge value: if the report read them as targets, every mean would move
    rows.append({**common, "domain": "daytime_clear", "split": "val", "value": val, "unseen": False,
                 "role": "val_source"})
    return rows


def test_target_means_and_paired_difference_by_hand(protocol, tmp_path):
    rows = []
    naive = {0: (0.20, 0.10), 1: (0.30, 0.20), 2: (0.10, 0.30)}  # (daytime_foggy, night_rainy)
    drsf = {0: (0.24, 0.12), 1: (0.31, 0.25), 2: (0.16, 0.30)}
    for seed, (fog, nr) in naive.items():
        rows += _rows("naive_synth", seed, {"daytime_foggy": fog, "night_rainy": nr}, val=9.0)
    for seed, (fog, nr) in drsf.items():
        rows += _rows("drsf", seed, {"daytime_foggy": fog, "night_rainy": nr}, val=9.0)
    means = report.target_means(rows, "det", "map50_voc07")
    # seed 0: drsf target mean (24 + 12) / 2 = 18, naive (20 + 10) / 2 = 15 points
    assert means[("ldm", "drsf")][0]["target_mean"] == pytest.approx(18.0)
    assert means[("ldm", "naive_synth")][0]["target_mean"] == pytest.approx(15.0)
    assert means[("ldm", "drsf")][0]["seen_mean"] == pytest.approx(24.0)  # night_rainy is unseen
    assert means[("ldm", "drsf")][1]["night_rainy"] == pytest.approx(25.0)
    assert means[("ldm", "drsf")][0]["val"] == pytest.approx(900.0)  # validation stays in its own column
    # per-seed differences of the target mean: 3.0, 3.0, 3.0 -> mean 3, sd 0, interval [3, 3]
    text = report.report("det", rows, figure_dir=tmp_path)  # the figure goes here, not into the repository
    line = next(ln for ln in text.splitlines() if ln.startswith("| ldm | drsf | naive_synth | target_mean |"))
    assert "+3.0" in line and "[+3.0, +3.0]" in line and line.rstrip().endswith("| 3 |")
    # unseen column: differences 2, 5, 0 -> mean 2.333, sd 2.517, t(0.975, 2) = 4.303 -> half 6.25
    line = next(ln for ln in text.splitlines() if ln.startswith("| ldm | drsf | naive_synth | night_rainy |"))
    half = 4.302652729911275 * math.sqrt(((2 - 7 / 3) ** 2 + (5 - 7 / 3) ** 2 + (0 - 7 / 3) ** 2) / 2) / math.sqrt(3)
    assert f"[{7 / 3 - half:+.1f}, {7 / 3 + half:+.1f}]" in line
    assert "training-domain validation" in text and "no target image was read" in text
    assert "all their images; " in text  # no build given: no image count is claimed
    assert "all their images (37 each)" in report.report("det", rows, n_target=37)  # the build's count
    assert (tmp_path / "sdg_protocol_det.png").stat().st_size > 0


def test_report_lists_contenders_only_and_collect_keeps_the_training_command(protocol, tmp_path):
    rows = []
    for seed in (0, 1):
        for variant, v in (("source_only", 0.1), ("naive_synth", 0.5), ("naive_consistency", 0.52)):
            rows += _rows(variant, seed, {"daytime_foggy": v + seed / 100, "night_rainy": v}, val=0.3)
    text = report.report("det", rows)
    paired = [ln for ln in text.splitlines() if ln.count("|") == 8 and ln.startswith("| ldm |")]
    assert paired and not any(ln.startswith("| ldm | source_only |") for ln in paired)
    assert any(ln.startswith("| ldm | naive_consistency | naive_synth |") for ln in paired)
    assert not any(ln.startswith("| ldm | naive_synth | naive_consistency |") for ln in paired)
    report.write_rows(tmp_path, "det", rows, "train-command")
    report.write_rows(tmp_path, "det", rows, "collect-command", collect_only=True)
    import json

    commands = json.loads((tmp_path / "sdg_protocol.json").read_text())["commands"]
    assert commands == {"det": "train-command", "det_collected": "collect-command"}
    report.write_rows(tmp_path, "det", rows, "new-train-command")  # a new training run replaces both
    assert json.loads((tmp_path / "sdg_protocol.json").read_text())["commands"] == {"det": "new-train-command"}


def test_a_config_of_ones_own_reports_beside_its_runs_not_into_the_committed_results(protocol, tmp_path):
    out_json = ROOT / protocol.RESULTS / report.ROWS_FILE
    committed = out_json.read_bytes() if out_json.is_file() else None
    text = (ROOT / "configs" / "protocol" / "det.yaml").read_text()
    out = tmp_path / "variation"
    assert "output_dir: runs/protocol_det" in text
    # a data root of its own holding only the source split the warm start's name is derived from
    data = tmp_path / "data"
    split = data / "daytime_clear" / "VOC2007" / "ImageSets" / "Main" / "fit.txt"
    split.parent.mkdir(parents=True)
    split.write_text("000001\n")
    assert "data/mini-weather-protocol" in text
    mine = tmp_path / "mine.yaml"
    mine.write_text(text.replace("output_dir: runs/protocol_det", f"output_dir: {out}")
                    .replace("data/mini-weather-protocol", str(data)))
    assert main(["protocol", "--task", "det", "--config", str(mine), "--report-only", "--seeds", "0",
                 "--variants", "naive_synth", "--fidelity", "ldm"]) == 0
    doc = json.loads((out / "report" / "sdg_protocol.json").read_text())
    assert doc["rows"] == [] and doc["commands"]["det"].startswith("drsf protocol --task det --config")
    assert (out / "report" / "sdg_protocol_det.md").is_file()
    assert (out_json.read_bytes() if out_json.is_file() else None) == committed


def test_an_arm_is_its_variant_with_overrides_and_is_compared_with_it(protocol, tmp_path, monkeypatch):
    proto, run = protocol.load_protocol("det", str(ROOT / "configs" / "protocol" / "det_ablation.yaml"))
    base, base_run = protocol.load_protocol("det")
    # extends: the base's data, seeds and run folder (so its runs are reused), its own arms and variants
    assert run == base_run and proto["output_dir"] == base["output_dir"] and proto["seeds"] == base["seeds"]
    # a new data root reaches the inherited run section too (the confirmation builds)
    sproto, srun = protocol.load_protocol("seg", str(ROOT / "configs" / "protocol" / "seg_confirm.yaml"))
    assert srun["data"]["root"] == sproto["data_root"] == "data/mini-weather-protocol-b1"
    assert srun["task"] == "seg" and protocol.load_protocol("seg")[1]["data"]["root"] == "data/mini-weather-protocol"
    # the detection confirmation is det.yaml on a new build: the same train config, split and warm start
    dproto, drun = protocol.load_protocol("det", str(ROOT / "configs" / "protocol" / "det_confirm.yaml"))
    assert drun["data"].pop("root") == dproto["data_root"] == "data/mini-weather-protocol-b1"
    base_run_copy = {**base_run, "data": {k: v for k, v in base_run["data"].items() if k != "root"}}
    assert drun == base_run_copy and dproto["build"]["seed"] == 1 and dproto["build"]["seed"] != base["build"]["seed"]
    assert {k: dproto[k] for k in ("n_val", "val_images", "pretrain", "seeds")} == {
        k: base[k] for k in ("n_val", "val_images", "pretrain", "seeds")}
    assert protocol.parents(proto) == {"mdsf_no_align": "mdsf", "mdsf_no_fuse": "mdsf", "mdsf_twins_only": "mdsf"}
    todo = protocol.jobs_of(proto, None, ["ldm"], [0])
    assert [j["variant"] for j in todo] == proto["variants"]["ldm"] and all(j["level"] == "ldm" for j in todo)
    job = next(j for j in todo if j["variant"] == "mdsf_twins_only")
    cfg = protocol.run_config("det", proto, run, job, tmp_path / "w.pt")
    assert cfg.variant == "mdsf" and cfg.name == "det-ldm-mdsf_twins_only-s0"
    assert proto["method"] == "v2"  # protocol v2's rows were trained with the v2 design: its config pins it
    assert cfg.model.hparams == {"eta_max": 0.0, "p_mix": 0.0, "method": "v2"}
    plain = protocol.run_config("det", proto, run, next(j for j in todo if j["variant"] == "mdsf"), tmp_path / "w.pt")
    assert plain.variant == "mdsf" and plain.model.hparams == {"method": "v2"} and plain.name == "det-ldm-mdsf-s0"
    naive = protocol.run_config("det", proto, run, next(j for j in todo if j["variant"] == "naive_synth"), tmp_path / "w.pt")
    assert naive.model.hparams == {}  # a variant without blocks has no design to pin
    rows = []
    for seed in (0, 1):
        rows += _rows("mdsf", seed, {"daytime_foggy": 0.50, "night_rainy": 0.40}, val=0.3)
        rows += _rows("mdsf_no_align", seed, {"daytime_foggy": 0.48 - seed / 100, "night_rainy": 0.40}, val=0.3)
    text = report.report("det", rows, protocol.parents(proto))
    line = next(ln for ln in text.splitlines() if ln.startswith("| ldm | mdsf_no_align | mdsf | target_mean |"))
    assert "-1.2" in line and line.rstrip().endswith("| 2 |")  # (-1.0 + -1.5) / 2 points, paired by seed
    assert not any(ln.startswith("| ldm | mdsf_no_align | mdsf |") for ln in report.report("det", rows).splitlines())
    # compare_with: every variant also against the named baseline, once
    text = report.report("det", rows, protocol.parents(proto), tuple(proto["compare_with"]) + ("mdsf",))
    assert sum(ln.startswith("| ldm | mdsf_no_align | mdsf | target_mean |") for ln in text.splitlines()) == 1
    assert any(ln.startswith("| ldm | mdsf | mdsf_no_align | target_mean |") for ln in
               report.report("det", rows, None, ("mdsf_no_align",)).splitlines())


def test_a_bad_arm_or_a_missing_base_is_one_clear_error(protocol, tmp_path):
    from drsf_kit.errors import ConfigError

    with pytest.raises(ConfigError, match="arm 'x'"):
        protocol.arm({"arms": {"x": {"hparams": {"eta_max": 0}}}}, "x")
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        protocol.load_protocol("det", str(bad))


def test_levels_name_their_failure_strength_and_appearance_gap(protocol, tmp_path):
    from drsf_kit.errors import ConfigError
    from drsf_kit.synth.fidelity import LEVELS

    proto, _ = protocol.load_protocol("det", str(ROOT / "configs/protocol/det_gap_calibration.yaml"))
    assert protocol.level_profile(proto, "gap075") == (1.0, 0.75)
    assert protocol.level_profile(proto, "gap100") == (1.0, 1.0)
    assert protocol.level_profile(proto, "clean") == (0.0, 0.0)
    assert protocol.level_profile(proto, "ldm_gap") == LEVELS["ldm_gap"]
    # the calibration reuses the protocol's runs (same output folder) and trains no DRSF variant
    base, _ = protocol.load_protocol("det")
    assert proto["output_dir"] == base["output_dir"]
    assert {v for vs in proto["variants"].values() for v in vs} == {"source_only", "naive_synth"}
    for bad in ({"appearance_gap": 2.0}, {"strength": 1.0}, "ldm"):
        with pytest.raises(ConfigError, match="appearance gap|protocol level"):
            protocol.level_profile({"levels": {"x": bad}}, "x")


@pytest.mark.parametrize("task", ["det", "seg"])
def test_the_confirmation_builds_are_fresh_and_pin_the_method(protocol, task):
    """The pre-registered builds (docs/preregistration.md): new data, twins and warm start per build, the
    base protocol's train config unchanged, the five variants at both levels, drsf as design v3."""
    base_proto, base_run = protocol.load_protocol(task)
    seen = {base_proto["build"]["seed"], 1}  # build 0 (protocol v2) and build 1 (the v2 ldm confirmation) were scored
    folders = set()
    for build in (2, 3):
        proto, run = protocol.load_protocol(task, str(ROOT / "configs" / "protocol" / "confirm" / f"{task}_b{build}.yaml"))
        assert proto["build"]["seed"] == proto["synth_seed"] == proto["pretrain"]["seed"] == build and build not in seen
        assert {k: v for k, v in proto["pretrain"].items() if k != "seed"} == {
            k: v for k, v in base_proto["pretrain"].items() if k != "seed"}
        assert run["data"].pop("root") == proto["data_root"]
        assert run == {**base_run, "data": {k: v for k, v in base_run["data"].items() if k != "root"}}
        assert proto["variants"] == {level: ["source_only", "naive_synth", "naive_consistency", "mdsf_twins_only", "drsf"]
                                     for level in ("ldm", "ldm_gap")}
        assert len(proto["seeds"]) == 5 and proto["method"] == "v3"
        synth = protocol.synth_config(proto, run, "ldm_gap", progress=False)
        assert (synth.seed, synth.data) == (build, proto["data_root"])
        assert (synth.fidelity, synth.appearance_gap) == protocol.level_profile(base_proto, "ldm_gap")  # no recalibration
        jobs = protocol.jobs_of(proto, None, ["ldm"], [0])
        drsf = protocol.run_config(task, proto, run, next(j for j in jobs if j["variant"] == "drsf"), Path("w.pt"))
        assert drsf.model.hparams == {"method": "v3"}
        folders |= {proto["data_root"], proto["synth_out"], proto["output_dir"]}
    assert len(folders) == 6  # nothing shared between the two builds


def test_regime_ratio_and_margin_by_hand(protocol, tmp_path):
    rows = []
    # target mean = the one target's score: source_only 10 / 20, clean naive 50 / 60, gap naive 25 / 35
    for seed, (so, clean, gap) in {0: (0.10, 0.50, 0.25), 1: (0.20, 0.60, 0.35)}.items():
        for level in ("clean", "gap"):
            rows += _rows("source_only", seed, {"night_sunny": so}, val=0.0, fidelity=level)
        rows += _rows("naive_synth", seed, {"night_sunny": clean}, val=0.0, fidelity="clean")
        rows += _rows("naive_synth", seed, {"night_sunny": gap}, val=0.0, fidelity="gap")
    (r,) = report.regime(report.target_means(rows, "det", "map50_voc07"))
    # gains: clean 40, 40; gap 15, 15 -> R = 15 / 40; margins 15 - 20 = -5 on both seeds (sd 0)
    assert r["fidelity"] == "gap" and r["n"] == 2
    assert r["ratio"] == pytest.approx(0.375) and r["margin"] == pytest.approx(-5.0)
    assert r["low"] == pytest.approx(-5.0) and r["high"] == pytest.approx(-5.0)
    text = report.report("det", rows)
    assert "| gap | 2 | +15.0 | +40.0 | 0.38 | -5.0 | [-5.0, -5.0] |" in text


@pytest.mark.parametrize("folder, task, config", [
    ("benchmarks/results", "det", None), ("benchmarks/results", "seg", None),
    ("benchmarks/results/ablation", "det", "configs/protocol/det_ablation.yaml"),
    ("benchmarks/results/ablation", "seg", "configs/protocol/seg_ablation.yaml"),
    ("benchmarks/results/confirm", "det", "configs/protocol/det_confirm.yaml"),
    ("benchmarks/results/confirm_ablation", "det", "configs/protocol/det_confirm_ablation.yaml"),
    ("benchmarks/results/gap_calibration", "det", "configs/protocol/det_gap_calibration.yaml"),
])
def test_the_committed_reports_are_the_report_of_the_committed_rows(protocol, folder, task, config, tmp_path):
    """Everything above the recorded commands, byte for byte; the image count comes from the build."""
    rows = [r for r in json.loads((ROOT / folder / report.ROWS_FILE).read_text())["rows"] if r["task"] == task]
    proto, _ = protocol.load_protocol(task, str(ROOT / config) if config else None)
    text = report.report(task, rows, protocol.parents(proto), tuple(proto.get("compare_with") or ()),
                         figure_dir=tmp_path, n_target=proto["build"]["n_target"])
    committed = (ROOT / folder / f"sdg_protocol_{task}.md").read_text(encoding="utf-8")
    assert committed.split("\nTraining command recorded:")[0] == text
    assert f"all their images ({proto['build']['n_target']} each)" in text
