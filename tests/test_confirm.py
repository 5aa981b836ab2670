"""The pre-registered confirmation's analysis: exact sign-flip p, t interval, Holm, the verdict rule and the
interim/complete report, on rows the test writes; and the committed plan against the committed configs."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import stats

from drsf_kit.errors import ConfigError
from drsf_kit.evaluation.paired import paired_difference, sign_flip_p
from drsf_kit.workflows import confirm
from drsf_kit.workflows.protocol import load_protocol

TARGETS = ("daytime_foggy", "dusk_rainy", "night_rainy", "night_sunny")


def _rows(task, level, variant, build, seed, value):
    """The summary target rows of one run whose four target domains all score ``value``."""
    return [{"task": task, "fidelity": level, "variant": variant, "seed": seed, "build": build, "domain": d,
             "split": "all", "metric": confirm.HEADLINE[task], "value": value, "class": None, "unseen": d == "night_rainy",
             "role": "target", "protocol": "v2/all_images", "run": f"{task}-{level}-{variant}-s{seed}"} for d in TARGETS]


def _plan(tmp_path, **kw):
    plan = confirm.load_plan()
    return {**plan, **kw}


def test_sign_flip_p_is_the_exact_enumeration():
    d = np.array([1.5, 0.2, -0.4, 2.0, 0.9, 1.1, -0.3, 0.8])
    flips = np.array(list(itertools.product([1, -1], repeat=d.size)))
    means = (flips * d).mean(axis=1)
    by_hand = np.mean(np.abs(means) >= abs(d.mean()) - 1e-12)
    assert sign_flip_p(d) == pytest.approx(by_hand)
    assert sign_flip_p(np.arange(1, 11)) == pytest.approx(2 / 1024)  # all ten positive: the smallest p at n = 10


def test_t_interval_and_holm_by_hand():
    d = np.array([1.0, 2.0, 4.0, 0.5, 2.5])
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    pd = paired_difference(dict(enumerate(d)), dict.fromkeys(range(5), 0.0))
    assert (pd.low, pd.high) == pytest.approx((d.mean() - half, d.mean() + half))
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert confirm.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert confirm.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert [confirm.verdict(m, p, 0.05) for m, p in ((1.0, 0.01), (-1.0, 0.01), (1.0, 0.2))] == [
        "confirmed", "reversed", "not confirmed"]


def test_contrasts_stay_interim_until_every_cell_is_full_then_decide(tmp_path):
    plan = _plan(tmp_path, tasks=["det"], levels=["ldm"], builds=[2, 3], units_per_cell=4,
                 baselines={"naive_synth": 2.0, "mdsf_twins_only": 1.0})
    rows = []
    for build, seed in itertools.product((2, 3), (0, 1)):
        gain = 0.03 + 0.002 * seed  # drsf +3.0 or +3.2 points over naive_synth, -0.2 or -0.3 against two twins
        rows += _rows("det", "ldm", "naive_synth", build, seed, 0.30)
        rows += _rows("det", "ldm", "mdsf_twins_only", build, seed, 0.30 + gain + 0.002 + 0.001 * build - 0.002)
        if (build, seed) != (3, 1):
            rows += _rows("det", "ldm", "drsf", build, seed, 0.30 + gain)
    records = confirm.contrasts(plan, rows)
    assert [r["n"] for r in records] == [3, 3] and not any(r["complete"] or "verdict" in r for r in records)
    text = confirm.report_text(plan, rows, records, "abc")
    assert "Interim: no verdict" in text and "3 of 4" in text and "Holm p" not in text
    rows += _rows("det", "ldm", "drsf", 3, 1, 0.30 + 0.032)
    records = confirm.contrasts(plan, rows)
    naive, matched = records
    assert naive["n"] == 4 and naive["units"] == [[2, 0], [2, 1], [3, 0], [3, 1]]
    assert naive["diffs"] == pytest.approx([3.0, 3.2, 3.0, 3.2]) and naive["mean"] == pytest.approx(3.1)
    assert matched["diffs"] == pytest.approx([-0.2, -0.2, -0.3, -0.3]) and matched["mean"] == pytest.approx(-0.25)
    # four units: the smallest exact p is 2/16, so nothing survives Holm at 0.05: not confirmed, goal read apart
    assert naive["p"] == pytest.approx(2 / 16) and naive["p_holm"] == pytest.approx(0.25)
    assert naive["verdict"] == matched["verdict"] == "not confirmed" and naive["goal_met"] and not matched["goal_met"]
    text = confirm.report_text(plan, rows, records, "abc")
    assert "**Complete.**" in text and "| det | ldm | naive_synth | 4 | +3.1 |" in text and "0 confirmed" in text
    path = confirm.figure(records, tmp_path)
    assert path.read_bytes().startswith(b"\x89PNG")


def test_the_committed_plan_names_the_committed_builds(tmp_path):
    plan = confirm.load_plan()
    assert plan["units_per_cell"] == len(plan["builds"]) * 5 >= 10 and plan["method"] == "drsf"
    for task in plan["tasks"]:
        for build in plan["builds"]:
            proto, _ = load_protocol(task, str(confirm.build_config(plan, task, build)))
            assert proto["build"]["seed"] == build and len(proto["seeds"]) * len(plan["builds"]) == plan["units_per_cell"]
            for level in plan["levels"]:
                assert {plan["method"], *plan["baselines"], *plan["context"]} <= set(proto["variants"][level])
    bad = tmp_path / "plan.yaml"
    bad.write_text("method: drsf\nbaseline: {}\n")
    with pytest.raises(ConfigError, match=r"plan\.yaml: a confirmation plan has exactly the keys.*unknown: baseline"):
        confirm.load_plan(bad)


def test_no_runs_give_an_interim_report_and_rows_file(tmp_path):
    path = confirm.run_confirm(runs_root=str(tmp_path), results=str(tmp_path / "out"), command="drsf confirm")
    doc = json.loads((tmp_path / "out" / "sdg_confirm.json").read_text())
    assert doc["rows"] == [] and doc["command"] == "drsf confirm" and all(c["n"] == 0 for c in doc["contrasts"])
    assert "Interim: no verdict" in path.read_text() and (tmp_path / "out" / "sdg_confirm.png").is_file()


def test_collect_reads_the_runs_of_another_checkout_and_tags_their_build(tmp_path):
    """``--runs-root``: the builds' relative folders are read under the checkout the runs were trained in."""
    plan = {**confirm.load_plan(), "tasks": ["det"], "builds": [2], "levels": ["ldm"]}
    proto, run = load_protocol("det", str(confirm.build_config(plan, "det", 2)))
    split = tmp_path / proto["data_root"] / "daytime_clear" / "VOC2007" / "ImageSets" / "Main" / "fit.txt"
    split.parent.mkdir(parents=True)
    split.write_text("000001\n")
    folder = tmp_path / proto["output_dir"] / "det-ldm-drsf-s3"
    folder.mkdir(parents=True)
    results = [{"domain": d, "split": "all", "metric": "map50_voc07", "value": 0.4, "class": None} for d in TARGETS]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    (folder / "done").write_text("300\n")
    rows = confirm.collect(plan, tmp_path)
    assert {(r["build"], r["variant"], r["seed"], r["fidelity"]) for r in rows} == {(2, "drsf", 3, "ldm")}
    assert len(rows) == 4 and all(r["role"] == "target" and r["value"] == 0.4 for r in rows)
    assert confirm.unit_means(rows, "det") == {("ldm", "drsf"): {(2, 3): pytest.approx(40.0)}}


def test_earlier_rows_stand_in_only_for_builds_without_runs(tmp_path):
    """``--earlier``: a build whose run folders are gone keeps its earlier rows; a build with runs is read
    from them; the source of each is recorded, carried into a later collection, and a commit mismatch is refused."""
    plan = _plan(tmp_path, tasks=["det"], levels=["ldm"], builds=[2, 3])
    old = _rows("det", "ldm", "drsf", 2, 0, 0.5) + _rows("det", "ldm", "drsf", 3, 0, 0.1)
    earlier = tmp_path / "sdg_confirm.json"
    earlier.write_text(json.dumps({"trained_at": "abc123", "date": "2026-12-01 10:00 UTC", "command": "drsf confirm",
                                   "rows": old}))
    runs = _rows("det", "ldm", "drsf", 3, 0, 0.3)
    rows, sources = confirm.with_earlier_rows(plan, runs, earlier, "abc123")
    assert confirm.unit_means(rows, "det") == {("ldm", "drsf"): {(2, 0): pytest.approx(50.0), (3, 0): pytest.approx(30.0)}}
    assert [(s["build"], s["source"], s["runs"]) for s in sources] == [(2, "earlier collection", 1), (3, "runs", 1)]
    assert sources[0]["collected"] == "2026-12-01 10:00 UTC"
    # a second collection keeps the first one's record of where build 2 came from
    earlier.write_text(json.dumps({"trained_at": "abc123", "date": "2026-12-02", "rows": rows, "sources": sources}))
    _, again = confirm.with_earlier_rows(plan, [], earlier, "abc123")
    assert [(s["build"], s["source"], s.get("collected")) for s in again] == [
        (2, "earlier collection", "2026-12-01 10:00 UTC"), (3, "earlier collection", "2026-12-02")]
    with pytest.raises(ConfigError, match=r"sdg_confirm\.json: its rows were trained from abc123, the runs .* from def456"):
        confirm.with_earlier_rows(plan, runs, earlier, "def456")
    with pytest.raises(ConfigError, match=r"missing\.json: no such earlier collection"):
        confirm.with_earlier_rows(plan, runs, tmp_path / "missing.json", "abc123")


def test_run_confirm_prints_where_reused_rows_come_from(tmp_path):
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"trained_at": "unknown", "date": "2026-12-01 10:00 UTC", "command": "drsf confirm x",
                                   "rows": _rows("seg", "ldm_gap", "drsf", 2, 4, 0.2)}))
    path = confirm.run_confirm(runs_root=str(tmp_path), results=str(tmp_path / "out"), earlier=str(earlier))
    doc = json.loads((tmp_path / "out" / "sdg_confirm.json").read_text())
    assert len(doc["rows"]) == 4 and {(s["task"], s["build"]) for s in doc["sources"] if s["source"] != "none"} == {("seg", 2)}
    assert "- seg build 2: 1 run, from rows of an earlier collection (`drsf confirm x`, 2026-12-01 10:00 UTC" in path.read_text()


def test_readme_and_protocol_quote_the_committed_verdicts():
    """The committed results recompute from their own rows, and the README and docs/protocol.md carry the
    report's twelve verdict rows verbatim (no number typed in by hand)."""
    root = confirm.project_root()
    doc = json.loads((root / "benchmarks" / "results" / confirm.ROWS_FILE).read_text(encoding="utf-8"))
    plan = confirm.load_plan()
    fresh = confirm.contrasts(plan, doc["rows"])
    assert len(fresh) == 12 and all(r["complete"] and r["n"] == plan["units_per_cell"] for r in fresh)
    for mine, saved in zip(fresh, doc["contrasts"]):
        assert (mine["task"], mine["level"], mine["baseline"]) == (saved["task"], saved["level"], saved["baseline"])
        assert (mine["mean"], mine["p"], mine["p_holm"]) == pytest.approx((saved["mean"], saved["p"], saved["p_holm"]))
        assert mine["verdict"] == saved["verdict"]
    report = confirm.report_text(plan, doc["rows"], fresh, doc["trained_at"]).splitlines()
    rows = [line for line in report
            if line.startswith(("| det |", "| seg |")) and ("confirmed" in line or "reversed" in line)]
    assert len(rows) == 12
    rows += [line for line in report if line.startswith("Verdicts: ")]
    assert len(rows) == 13
    for name in ("README.md", "docs/protocol.md"):
        text = (root / name).read_text(encoding="utf-8")
        missing = [line for line in rows if line not in text]
        assert not missing, f"{name} does not carry the report's verdict rows: {missing}"
