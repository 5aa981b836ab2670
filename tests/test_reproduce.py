"""drsf_kit.evaluation.reproduce and benchmarks/reproduce_check.py: a rerun is matched row by row with the
committed results; equal values, differences, undefined values and unmatched rows are each counted."""

from __future__ import annotations

import json
import math

import pytest

from drsf_kit.errors import DataError
from drsf_kit.evaluation.reproduce import compare_rows, reproduced
from drsf_kit.evaluation.results import read_rows_file


def _row(variant, seed, domain, value, fidelity="ldm", metric="map50_voc07", cls=None, run=None):
    return {"task": "det", "variant": variant, "seed": seed, "fidelity": fidelity, "domain": domain,
            "split": "all", "metric": metric, "class": cls, "protocol": "v2/all_images", "value": value,
            "run": run or f"det-{variant}-s{seed}"}


def _committed():
    return [_row("naive_synth", 0, "fog", 0.5), _row("naive_synth", 1, "fog", 0.25),
            _row("drsf", 0, "fog", 0.75), _row("drsf", 0, "fog", None, metric="ap50_voc07", cls="car")]


def test_identical_rerun_is_reproduced_even_with_other_run_names():
    rerun = [dict(r, run="renamed-" + r["run"]) for r in reversed(_committed())]
    table = compare_rows(_committed(), rerun)
    assert list(table["variant"]) == ["drsf", "naive_synth"]  # sorted by (task, fidelity, variant)
    assert list(table["matched"]) == [2, 2] and list(table["equal"]) == [2, 2]
    assert list(table["max_abs_diff"]) == [0.0, 0.0]
    assert reproduced(table)


def test_differences_undefined_values_and_unmatched_rows_are_counted():
    rerun = _committed()
    rerun[1] = dict(rerun[1], value=0.2)               # naive_synth seed 1 moved by 0.05
    rerun[3] = dict(rerun[3], value=0.1)               # undefined before, a number now
    rerun.append(_row("drsf", 1, "fog", 0.7))          # a run the committed file lacks
    old = _committed() + [_row("naive_synth", 2, "fog", 0.3)]  # a run the rerun lacks
    table = compare_rows(old, rerun).set_index("variant")
    assert table.loc["naive_synth", "matched"] == 2 and table.loc["naive_synth", "equal"] == 1
    assert table.loc["naive_synth", "max_abs_diff"] == pytest.approx(0.05)
    assert table.loc["naive_synth", "only_old"] == 1 and table.loc["naive_synth", "only_new"] == 0
    assert table.loc["drsf", "equal"] == 1 and math.isnan(table.loc["drsf", "max_abs_diff"])
    assert table.loc["drsf", "only_new"] == 1
    assert table.loc["naive_synth", "differing"] == "map50_voc07" and table.loc["drsf", "differing"] == "ap50_voc07"
    assert not reproduced(table.reset_index())


def test_a_tolerance_accepts_float_noise_but_not_real_changes():
    # a calibration error summed in another order: 1e-9 apart; the headline metric equal
    old = _committed() + [_row("drsf", 0, "fog", 0.0941440753751632, metric="ece")]
    new = _committed() + [_row("drsf", 0, "fog", 0.09414407331653264, metric="ece")]
    strict = compare_rows(old, new).set_index("variant")
    assert strict.loc["drsf", "equal"] == 2 and strict.loc["drsf", "close"] == 2
    assert strict.loc["drsf", "differing"] == "ece" and not reproduced(strict.reset_index())
    loose = compare_rows(old, new, atol=1e-6)
    assert reproduced(loose) and set(loose["close"]) == {2, 3} and set(loose["differing"]) == {""}
    assert list(loose["equal"]) == list(strict["equal"])  # bitwise equality is still reported
    moved = compare_rows(old, [dict(r, value=0.5) if r["variant"] == "drsf" and r["metric"] == "map50_voc07" else r
                               for r in new], atol=1e-6)
    assert not reproduced(moved)


def test_levels_are_not_mixed_up():
    old = [_row("drsf", 0, "fog", 0.75, fidelity="clean"), _row("drsf", 0, "fog", 0.5, fidelity="ldm")]
    new = [_row("drsf", 0, "fog", 0.5, fidelity="clean"), _row("drsf", 0, "fog", 0.75, fidelity="ldm")]
    table = compare_rows(old, new)
    assert list(table["fidelity"]) == ["clean", "ldm"] and list(table["equal"]) == [0, 0]
    assert list(table["max_abs_diff"]) == [0.25, 0.25]


def test_a_measurement_named_twice_is_refused():
    with pytest.raises(DataError, match="^committed.json: its rows name the same measurement twice"):
        compare_rows(_committed() + [_committed()[0]], _committed(), names=("committed.json", "rerun.json"))


def test_read_rows_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        read_rows_file(bad)
    with pytest.raises(DataError, match="missing.json: no such results file"):
        read_rows_file(tmp_path / "missing.json")
    (tmp_path / "obj.json").write_text(json.dumps({"rows": "nope"}))
    with pytest.raises(DataError,
                       match="obj.json: expected a JSON list of result rows, or an object with such a list under 'rows'"):
        read_rows_file(tmp_path / "obj.json")


def test_script_writes_the_report_and_exit_code(tmp_path, monkeypatch, load_benchmark):
    script = load_benchmark("reproduce_check")
    monkeypatch.setattr(script, "ROOT", tmp_path)
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({"rows": _committed()}))
    new.write_text(json.dumps({"rows": _committed()}))
    assert script.main(["--old", str(old), "--new", str(new), "--task", "det", "--out", "rep",
                        "--note", "rerun on commit x"]) == 0
    doc = json.loads((tmp_path / "benchmarks" / "results" / "rep.json").read_text())
    assert doc["reproduced"] is True and {r["variant"] for r in doc["rows"]} == {"drsf", "naive_synth"}
    assert doc["note"] == "rerun on commit x" and "--note" not in doc["command"] and "--out rep" in doc["command"]
    changed = _committed()
    changed[0] = dict(changed[0], value=0.4)
    new.write_text(json.dumps({"rows": changed}))
    assert script.main(["--old", str(old), "--new", str(new), "--out", "rep"]) == 1
    text = (tmp_path / "benchmarks" / "results" / "rep.md").read_text()
    assert "NOT reproduced" in text and "0.1" in text
    doc = json.loads((tmp_path / "benchmarks" / "results" / "rep.json").read_text())
    assert doc["reproduced"] is False
    assert script.main(["--old", str(tmp_path / "nope.json"), "--new", str(new)]) == 2
    assert script.main(["--old", str(old), "--new", str(new), "--task", "sgm"]) == 2  # a typo compares nothing
