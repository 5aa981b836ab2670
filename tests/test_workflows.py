"""The one orchestration path: run states, refusals that name the command, comparable runs, the demo's
configs and warm starts, and the demo-next-to-protocol table. Nothing here trains: finished runs are
written as a run folder would be (``config.json`` + ``done``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from drsf_kit.workflows import runs as workflows
from drsf_kit.config import config_to_dict
from drsf_kit.errors import ConfigError
from drsf_kit.train.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def _finished(cfg, **changes) -> RunDir:
    """A finished run folder of ``cfg`` (with ``changes`` to its train section), without training."""
    run = RunDir(cfg.run_dir)
    values = config_to_dict(cfg)
    values["train"] = {**values["train"], **changes}
    run.write_config(values)
    run.mark_done(values["train"]["max_steps"])
    return run


def test_run_status_and_ensure_run_without_training(tmp_path):
    cfg = workflows.run_config("det", "drsf", 0, [f"output_dir={tmp_path}"], root=ROOT)
    assert workflows.run_status(cfg) == ("missing", [])
    run = _finished(cfg)
    assert workflows.run_status(cfg) == ("done", [])
    assert workflows.ensure_run(cfg) == run.path  # finished with the same config: returned as it is
    _finished(cfg, lr=0.5)
    assert workflows.run_status(cfg) == ("other", ["train.lr"])
    with pytest.raises(ConfigError, match=r"another config \(train\.lr: 0\.5 -> "):
        workflows.ensure_run(cfg)
    said = []
    assert workflows.ensure_run(cfg, reuse_anyway=True, say=said.append) == run.path and "reusing" in said[0]
    with pytest.raises(ConfigError, match="on_mismatch"):
        workflows.ensure_run(cfg, on_mismatch="maybe")


def test_require_runs_names_the_command_that_makes_a_missing_run(tmp_path):
    runs = tmp_path / "runs" / "demo"
    with pytest.raises(ConfigError) as err:
        workflows.require_runs(runs, "det", ["source_only", "drsf"], [0], root=ROOT)
    text = str(err.value)
    assert "det-source_only-0 does not exist" in text and "only reads runs" in text
    assert "`drsf demo --only 04`" in text
    assert f"drsf train --config configs/demo_det.yaml variant=source_only seed=0 output_dir={runs}" in text
    cfg = workflows.run_config("seg", "mdsf", 1, [f"output_dir={tmp_path / 'elsewhere'}"], root=ROOT)
    RunDir(cfg.run_dir).write_config(config_to_dict(cfg))  # started, never finished
    with pytest.raises(ConfigError, match="seg-mdsf-1 is unfinished.*configs/demo_seg.yaml variant=mdsf seed=1") as err:
        workflows.require_runs(tmp_path / "elsewhere", "seg", ["mdsf"], [1], root=ROOT)
    assert "drsf demo" not in str(err.value)  # not the demo's folder: only the train command is named


def test_require_runs_refuses_runs_of_mixed_settings(tmp_path):
    base = [f"output_dir={tmp_path}"]
    a = _finished(workflows.run_config("det", "source_only", 0, base, root=ROOT))
    b = _finished(workflows.run_config("det", "drsf", 1, base, root=ROOT))  # variant and seed may differ
    _finished(workflows.run_config("det", "source_only", 1, base, root=ROOT))
    _finished(workflows.run_config("det", "drsf", 0, base, root=ROOT))
    assert workflows.require_runs(tmp_path, "det", ["source_only", "drsf"], [0, 1], root=ROOT)[0] == a.path
    _finished(workflows.run_config("det", "drsf", 1, base, root=ROOT), max_steps=100)
    steps = workflows.run_config("det", "drsf", 1, base, root=ROOT).train.max_steps
    with pytest.raises(ConfigError, match=rf"trained with other settings \(train\.max_steps: {steps} -> 100\); one table"):
        workflows.require_runs(tmp_path, "det", ["source_only", "drsf"], [0, 1], root=ROOT)
    assert b.path in workflows.require_runs(tmp_path, "det", ["source_only", "drsf"], [0, 1], reuse_anyway=True, root=ROOT)
    # a run records its DRSF design: runs of two designs do not share a table, a run without blocks is no mismatch
    _finished(workflows.run_config("det", "drsf", 1, [*base, "model.hparams.method=v2"], root=ROOT))
    with pytest.raises(ConfigError, match=r"model\.hparams: \{'method': 'v3'\} -> \{'method': 'v2'\}"):
        workflows.require_runs(tmp_path, "det", ["drsf"], [0, 1], root=ROOT)


def test_demo_configs_fine_tune_from_the_shipped_warm_starts():
    """The demo's configs name the warm starts, which are in the repository with the sha256 data/README.md
    gives, and every variant's model starts from one: all its tensors but its own blocks are loaded."""
    from drsf_kit.train.builders import build_model_for, init_from

    for task in ("det", "seg"):
        cfg = workflows.run_config(task, "drsf", root=ROOT)
        model = build_model_for(cfg, load_pretrained=False)
        loaded = init_from(model, str(ROOT / cfg.model.init_weights))
        plain = build_model_for(workflows.run_config(task, "source_only", root=ROOT), load_pretrained=False)
        assert loaded == len(plain.state_dict())  # the source-only model's every tensor found its place
    with pytest.raises(Exception, match="mini_det_source_only.pt: does not fit the DRSFSegmenter"):
        init_from(build_model_for(workflows.run_config("seg", "drsf", root=ROOT), load_pretrained=False),
                  str(ROOT / "data" / "warm_start" / "mini_det_source_only.pt"))


def test_shipped_warm_start_files_are_recorded():
    readme = (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    for task in ("det", "seg"):
        cfg = workflows.run_config(task, "drsf", root=ROOT)
        weights = ROOT / cfg.model.init_weights
        assert cfg.model.init_weights == f"data/warm_start/mini_{task}_source_only.pt" and weights.is_file()
        assert weights.stat().st_size < 8 * 2**20, "keep the shipped warm start small"
        assert hashlib.sha256(weights.read_bytes()).hexdigest() in readme
        assert f"drsf warm-start --task {task}" in readme


def test_a_relative_warm_start_is_found_from_a_sub_folder(tmp_path, monkeypatch):
    from drsf_kit.train.builders import find_weights

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "w.pt").write_bytes(b"x")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # where a notebook kernel starts
    assert find_weights("data/w.pt") == str(tmp_path / "data" / "w.pt")
    assert find_weights("data/none.pt") == "data/none.pt"  # not found: the loader names it


def test_ensure_data_refuses_a_missing_folder_that_is_not_mini_weather(tmp_path):
    with pytest.raises(ConfigError, match="real-dwd.*does not exist"):
        workflows.ensure_data(tmp_path / "real-dwd")
    with pytest.raises(ConfigError, match="must end in a backend folder"):
        workflows.ensure_synth(tmp_path, tmp_path / "synth" / "paint")


def test_protocol_comparison_labels_both_sources():
    from drsf_kit.evaluation.tables import protocol_comparison

    def rows(variant, seed, source, target, **extra):
        common = {"task": "det", "variant": variant, "seed": seed, "metric": "map50_voc07", "class": None, **extra}
        return [{**common, "domain": "daytime_clear", "value": source, "role": "source_test"},
                {**common, "domain": "night_sunny", "value": target, "role": "target"},
                {**common, "domain": "dusk_rainy", "value": target + 0.2, "role": "target"},
                {**common, "domain": "daytime_clear", "value": 0.0, "role": "val_source"}]

    demo = pd.DataFrame(rows("drsf", 0, 0.6, 0.1)[:3] + rows("source_only", 0, 0.7, 0.2)[:3])
    demo = demo.drop(columns="role").assign(step=300, run=demo["variant"])  # a run's rows: no role, no val rows
    protocol = pd.DataFrame(rows("drsf", 0, 0.5, 0.3, fidelity="ldm") + rows("drsf", 1, 0.7, 0.5, fidelity="ldm"))
    table = protocol_comparison(demo, protocol, "det")
    assert list(table.index) == ["source_only", "drsf"]
    assert table.loc["drsf", "demo (1 seed): source test"] == 60.0
    assert table.loc["drsf", "protocol ldm (2 seeds): source test"] == 60.0  # validation rows left out
    assert table.loc["drsf", "protocol ldm (2 seeds): target mean"] == 50.0  # mean of (40, 60)
    assert pd.isna(table.loc["source_only", "protocol ldm (2 seeds): target mean"])


def test_ensure_runs_trains_side_by_side_and_refuses_before_training(tiny_weather, synth_root, tmp_path):
    from drsf_kit.workflows.notebook import SMOKE_DET, SMOKE_TRAIN

    over = [f"output_dir={tmp_path}", f"data.root={tiny_weather}", f"data.synth_root={synth_root}", "device=cpu",
            "model.init_weights=", *SMOKE_TRAIN, *SMOKE_DET]
    cfgs = [workflows.run_config("det", v, 0, over, root=ROOT) for v in ("source_only", "naive_synth")]
    other = workflows.run_config("det", "drsf", 0, over, root=ROOT)
    _finished(other, lr=0.5)  # a finished run of another config: refused before anything trains
    with pytest.raises(ConfigError, match=r"another config \(train\.lr: 0\.5 -> "):
        workflows.ensure_runs([*cfgs, other], jobs=2, progress=False)
    assert not any(RunDir(c.run_dir).is_run() for c in cfgs)
    paths = workflows.ensure_runs(cfgs, jobs=2, progress=False)  # two processes, one run each
    assert paths == [c.run_dir for c in cfgs]
    for cfg in cfgs:
        run = RunDir(cfg.run_dir)
        assert run.is_finished() and workflows.run_status(cfg) == ("done", [])
        assert (run.path / "checkpoints" / "last.pt").is_file()
    stamps = [(c.run_dir / "done").stat().st_mtime_ns for c in cfgs]
    assert workflows.ensure_runs(cfgs, jobs=2, progress=False) == paths  # finished: nothing trains again
    assert [(c.run_dir / "done").stat().st_mtime_ns for c in cfgs] == stamps


def test_auto_jobs_is_one_per_core_on_cpu(monkeypatch):
    monkeypatch.setenv("DRSF_NUM_THREADS", "3")
    assert workflows.auto_jobs("cpu") == 3
    monkeypatch.setenv("DRSF_NUM_THREADS", "1")
    assert workflows.auto_jobs("cpu") == 1
