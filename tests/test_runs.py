"""Runs you can trust: a killed run resumes to the files of an uninterrupted one, a second writer is
refused, ``--resume`` means resume, and the run folder's bookkeeping (``drsf_kit.train.rundir``) holds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import drsf_kit
from drsf_kit.cli import main
from drsf_kit.config import config_to_dict, load_config
from drsf_kit.errors import ConfigError, RunInUseError
from drsf_kit.train import fit
from drsf_kit.train.rundir import TIMING_FIELDS, RunDir, RunLock, config_diff, config_hash

ROOT = Path(drsf_kit.__file__).resolve().parents[1]

# The child trains through `drsf train` with one function wrapped to SIGKILL itself at a chosen point
# (or to hold the run folder): the kill lands at the same place on every machine.
CHILD = r"""
import os, signal, sys, time
import drsf_kit.train.engine as engine
from drsf_kit.cli import main

where = os.environ["DRSF_TEST_KILL"]
if where == "mid_training":  # after step 3's row, before step 4 (checkpoint at step 2)
    row = engine.RunLogger.row
    def logged(self, r):
        row(self, r)
        if r.get("step") == 3 and "loss" in r:
            os.kill(os.getpid(), signal.SIGKILL)
    engine.RunLogger.row = logged
elif where == "final_eval":  # the final scores are written, the eval row and `done` are not
    write = engine.RunDir.write_results
    def written(self, rows):
        write(self, rows)
        os.kill(os.getpid(), signal.SIGKILL)
    engine.RunDir.write_results = written
elif where == "hold":  # holds the folder's lock for a minute
    engine.train_step = lambda *a, **k: time.sleep(60)
sys.exit(main(sys.argv[1:]))
"""


def _args(tiny_weather, synth_root, tmp_path, name, *extra):
    return [f"data.root={tiny_weather}", f"data.synth_root={synth_root}", f"output_dir={tmp_path / 'runs'}",
            "train.batch_source=1", "train.max_steps=4", "train.checkpoint_every=2", "train.log_every=1",
            "train.warmup_steps=1", "train.tensorboard=false", "eval.domains=[daytime_clear]",
            "eval.max_images=1", f"run_name={name}", *extra]


def _child(where: str, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "DRSF_TEST_KILL": where,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", CHILD, *argv], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _timeless(rows: list[dict], drop=()) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS and k not in drop} for r in rows]


@pytest.fixture(scope="module")
def reference(tiny_weather, synth_root, tmp_path_factory):
    """An uninterrupted 4-step run: its metrics and results rows."""
    tmp = tmp_path_factory.mktemp("ref")
    assert main(["train", "--no-progress", *_args(tiny_weather, synth_root, tmp, "ref")]) == 0
    run = RunDir(tmp / "runs" / "ref")
    return _timeless(run.metric_rows()), _timeless(run.result_rows(), drop=("run",))


@pytest.mark.parametrize("where", ["mid_training", "final_eval"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(reference, tiny_weather, synth_root, tmp_path, where, capfd):
    argv = ["train", "--no-progress", *_args(tiny_weather, synth_root, tmp_path, where)]
    child = _child(where, argv)
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err
    run = RunDir(tmp_path / "runs" / where)
    assert not run.is_finished() and (run.path / "lock").is_file()  # the dead process's lock is left behind
    assert main([*argv, "--resume"]) == 0
    assert "taking over the stale lock" in capfd.readouterr().err
    metrics, results = reference
    assert _timeless(run.metric_rows()) == metrics  # step for step, no replayed row twice
    assert _timeless(run.result_rows(), drop=("run",)) == results  # no duplicated result row
    assert run.finished_step() == 4 and not (run.path / "lock").exists()


def test_a_second_writer_is_refused_with_the_holders_pid_and_host(tiny_weather, synth_root, tmp_path, capsys):
    argv = ["train", "--no-progress", *_args(tiny_weather, synth_root, tmp_path, "busy")]
    holder = _child("hold", argv)
    lock = tmp_path / "runs" / "busy" / "lock"
    try:
        deadline = time.monotonic() + 60
        while not (lock.is_file() and lock.read_text()) and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lock.is_file(), holder.stderr.read() if holder.poll() is not None else "no lock after 60 s"
        for extra in ([], ["--resume"], ["--overwrite"]):
            t0 = time.monotonic()
            assert main([*argv, *extra]) == 1
            err = capsys.readouterr().err
            assert f"in use by pid {holder.pid} on host {socket.gethostname()}" in err, err
            assert time.monotonic() - t0 < 5  # at once: before any data is read
    finally:
        holder.kill()
        holder.wait()
    assert RunLock(lock.parent).acquire().held  # the dead holder's lock is taken over


def test_resume_refuses_without_checkpoint_and_continues_a_finished_run(tiny_weather, synth_root, tmp_path, capsys):
    argv = ["train", "--no-progress", *_args(tiny_weather, synth_root, tmp_path, "r", "train.max_steps=2")]
    assert main([*argv, "--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err and not (tmp_path / "runs" / "r" / "done").exists()
    assert main([*argv, "--resume", "--start-over"]) == 0
    run = RunDir(tmp_path / "runs" / "r")
    assert run.finished_step() == 2
    assert main([*argv, "--resume", "train.lr=0.5"]) == 1  # another config: refused, the key named
    assert "train.lr: 0.02 -> 0.5" in capsys.readouterr().err
    assert main([*argv, "--resume", "train.max_steps=4"]) == 0  # a finished run continues to more steps
    steps = [r["step"] for r in run.metric_rows() if "loss" in r]
    assert steps == [1, 2, 3, 4] and run.finished_step() == 4
    assert torch.load(run.last_checkpoint, weights_only=True)["step"] == 4
    assert sorted(p.name for p in run.checkpoints.glob("step_*.pt")) == ["step_00000002.pt", "step_00000004.pt"]


# ------------------------------------------------------------------------------------- the folder alone
def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, capsys):
    first = RunLock(tmp_path).acquire()
    other = RunLock(tmp_path)
    other.me = {"pid": first.me["pid"] + 1, "host": first.me["host"]}  # another process of this host
    with pytest.raises(RunInUseError, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
        other.acquire()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "lock").write_text(f'{{"pid": {int(dead.stdout)}, "host": "{socket.gethostname()}", "since": 0}}')
    assert RunLock(tmp_path).acquire().held
    assert "taking over the stale lock" in capsys.readouterr().err


def test_rows_are_keyed_and_replays_do_not_duplicate(tmp_path):
    run = RunDir(tmp_path)
    for step in (0, 1, 2, 3):
        assert run.append_metric({"step": step, "loss": float(step)})
    assert not RunDir(tmp_path).append_metric({"step": 2, "loss": 9.0})  # a replayed step: kept once
    assert RunDir(tmp_path).append_metric({"step": 2, "event": "eval", "eval": {}})
    assert run.truncate_metrics(1) == 3
    assert [r["step"] for r in run.metric_rows()] == [0, 1] and run.append_metric({"step": 2, "loss": 2.0})
    rows = [{"domain": d, "metric": "miou", "step": 4, "class": None, "value": v} for d, v in (("a", 0.1), ("b", 0.2))]
    run.write_results(rows)
    run.write_results([{**rows[0], "value": 0.3}])  # the same evaluation again replaces its row
    assert [(r["domain"], r["value"]) for r in run.result_rows()] == [("b", 0.2), ("a", 0.3)]


def test_last_k_checkpoints_kept_and_a_bad_one_skipped(tmp_path, capsys):
    run = RunDir(tmp_path)
    model = torch.nn.Linear(2, 2)
    for step in (2, 4, 6):
        with torch.no_grad():
            model.weight.fill_(step)
        run.save_checkpoint(step, keep=2, model=model, optimizer=None, scheduler=None, scaler=None, config={})
    assert [p.name for p in run.checkpoint_files()] == ["step_00000006.pt", "step_00000004.pt"]
    assert torch.load(run.last_checkpoint, weights_only=True)["step"] == 6
    with torch.no_grad():
        model.weight[0, 0] = float("nan")  # poisoned weights, e.g. a run that diverged
    run.save_checkpoint(8, keep=3, model=model, optimizer=None, scheduler=None, scaler=None, config={})
    path, ckpt = run.latest_checkpoint(say=print)
    assert path.name == "step_00000006.pt" and ckpt["step"] == 6
    assert "skipping checkpoint" in capsys.readouterr().out and not run.last_checkpoint.exists()
    run.checkpoint_path(6).write_bytes(b"truncated")  # unreadable: the previous one is used
    assert run.latest_checkpoint(say=print)[1]["step"] == 4


def test_config_identity_ignores_bookkeeping_and_names_differences(tmp_path):
    cfg = config_to_dict(load_config(None, []))
    moved = config_to_dict(load_config(None, [f"output_dir={tmp_path}", "train.log_every=3", "device=cpu"]))
    other = config_to_dict(load_config(None, ["train.lr=0.01", "model.hparams={tau: 2.0}"]))
    assert config_hash(cfg) == config_hash(moved) != config_hash(other)
    assert config_diff(cfg, other) == ["model.hparams", "train.lr"]


def test_fit_refuses_resume_with_another_variant(tiny_weather, synth_root, tmp_path):
    cfg = load_config(None, _args(tiny_weather, synth_root, tmp_path, "v", "train.max_steps=1"))
    RunDir(cfg.run_dir).write_config({**config_to_dict(cfg), "variant": "source_only"})
    with pytest.raises(ConfigError, match="variant: 'source_only' -> 'drsf'"):
        fit(cfg, resume=True, progress=False)
    assert not (cfg.run_dir / "lock").exists()  # a refusal leaves no lock behind


def test_ensure_run_refuses_a_finished_run_of_another_config(tmp_path):
    """Notebooks' ensure_run never reuses a finished run trained with other settings without being told."""
    from drsf_kit.workflows import notebook as nbk

    ctx = nbk.setup(SMOKE=True, OUTPUT_DIR=str(tmp_path))
    cfg = nbk.run_config(ctx, "det", "drsf")
    run = RunDir(cfg.run_dir)
    saved = config_to_dict(cfg)
    run.write_config({**saved, "device": "cuda", "train": {**saved["train"], "lr": 0.5}})
    run.mark_done(3)
    with pytest.raises(ConfigError, match=rf"another config \(train\.lr: 0\.5 -> {cfg.train.lr}\); set REUSE_ANYWAY=True"):
        nbk.ensure_run(ctx, "det", "drsf")
    assert nbk.ensure_run(ctx, "det", "drsf", reuse_anyway=True) == run.path  # asked for: kept as it is
    run.write_config({**saved, "device": "cuda"})  # only bookkeeping differs: the same run
    assert nbk.ensure_run(ctx, "det", "drsf") == run.path
