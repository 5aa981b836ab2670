"""Every input is checked before work starts, no command overwrites results, and paths stay inside
their roots: each test is one fault a new user met, answered by one line before any work (or handled
so that nothing is lost)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_dwd import CAR, write_domain, write_image
from test_manifest_paired import make_paired, row, write_rows

from drsf_kit.cli import main
from drsf_kit.config import check_paths, load_config
from drsf_kit.data.manifest import read_manifests
from drsf_kit.data.paired import PairedSynthetic
from drsf_kit.errors import ConfigError, DataError, DiskFullError
from drsf_kit.train import fit
from drsf_kit.train.rundir import RunDir
from drsf_kit.utils.io import append_jsonl, atomic_write_text, read_jsonl


def _one_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _run_args(tiny_weather, tmp_path, name, *extra):
    """A source-only run of the tiny dataset: no pseudo-domains needed, seconds on a CPU."""
    return [f"data.root={tiny_weather}", f"output_dir={tmp_path / 'runs'}", "variant=source_only",
            "train.batch_source=2", "train.max_steps=2", "train.checkpoint_every=1", "train.log_every=1",
            "train.warmup_steps=1", "train.tensorboard=false", "eval.domains=[daytime_clear]",
            "eval.max_images=0", f"run_name={name}", *extra]


@pytest.fixture(scope="module")
def finished_run(tiny_weather, tmp_path_factory):
    """A finished 2-step run with checkpoints at steps 1 and 2 and its final evaluation; tests copy it."""
    tmp = tmp_path_factory.mktemp("finished")
    assert main(["train", "--no-progress", *_run_args(tiny_weather, tmp, "done")]) == 0
    return tmp / "runs" / "done"


def _copy_run(finished_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "runs" / "done"
    shutil.copytree(finished_run, target)
    return target


# ------------------------------------------------------------------------- paths stay inside their roots
def test_a_manifest_path_leaving_the_synth_root_is_refused(tmp_path):
    data, synth = make_paired(tmp_path)
    target_image = data / "daytime_clear" / "VOC2007" / "JPEGImages" / "t1.jpg"  # a real image, outside
    manifest = synth / "night_sunny" / "manifest.jsonl"
    escape = os.path.relpath(target_image, manifest.parent)
    assert escape.startswith("..")
    write_rows(manifest, [row("s1", "night_sunny", size=[48, 32]), row("s2", "night_sunny", path=escape)])
    with pytest.raises(DataError, match=rf"{manifest}: row 2: .*field 'path' .* leads outside {synth} \(through '\.\.'"):
        read_manifests(synth)
    with pytest.raises(DataError, match="leads outside"):  # nothing is paired, so nothing is trained on
        PairedSynthetic(data, synth, progress=False)


def test_a_symlink_leaving_the_synth_root_is_refused(tmp_path):
    data, synth = make_paired(tmp_path)
    outside = tmp_path / "elsewhere.jpg"
    write_image(outside, 96, 64)
    link = synth / "night_sunny" / "s2.jpg"
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(DataError, match=r"row 2: .*'s2\.jpg' leads outside .* \(through a symbolic link"):
        read_manifests(synth)
    # a link that stays inside the root is fine
    link.unlink()
    link.symlink_to(synth / "daytime_foggy" / "s1.jpg")
    assert len(read_manifests(synth)) == 4


# ------------------------------------------------------------------------- nothing overwrites results
def test_a_capped_eval_never_replaces_the_final_evaluation(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    final = (run / "results.jsonl").read_bytes()
    tables = {p.name: p.read_bytes() for p in run.glob("*.csv")}
    assert main(["eval", "--run", str(run), "--max-images", "1", "--no-progress", "--device", "cpu"]) == 0
    assert (run / "results.jsonl").read_bytes() == final  # the run's own rows are untouched
    assert {p.name: p.read_bytes() for p in run.glob("*.csv")} == tables
    capped = read_jsonl(run / "results_capped.jsonl")
    assert capped and all(r["max_images"] == 1 for r in capped)
    assert "results_capped.jsonl" in capsys.readouterr().out
    # the same quick look again replaces its own rows, keyed by its cap; a bad cap is one line, first
    assert main(["eval", "--run", str(run), "--max-images", "1", "--no-progress", "--device", "cpu"]) == 0
    assert len(read_jsonl(run / "results_capped.jsonl")) == len(capped)
    assert main(["eval", "--run", str(run), "--max-images", "-3", "--device", "cpu"]) == 1
    assert "max_images must be 0 (every image) or a positive count, got -3" in _one_line(capsys.readouterr().err)


def test_eval_of_an_unknown_domain_is_refused_before_the_model_is_loaded(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    (run / "checkpoints" / "last.pt").unlink()  # would fail later, when the model is loaded
    assert main(["eval", "--run", str(run), "--domains", "moon", "--device", "cpu"]) == 1
    assert "eval.domains names domain 'moon', which has no folder" in _one_line(capsys.readouterr().err)


def test_a_resume_with_another_global_batch_is_refused(finished_run, tiny_weather, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    saved = (run / "config.json").read_bytes()
    argv = ["train", "--no-progress", *_run_args(tiny_weather, tmp_path, "done"), "train.max_steps=3"]
    assert main([*argv, "--resume", "train.batch_source=4"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "global batch of 2 source images; this launch would take 4 (train.batch_source=4 x 1 process)" in err
    assert (run / "config.json").read_bytes() == saved and RunDir(run).finished_step() == 2
    # the same global batch over more processes is fine (docs/scaling.md)
    RunDir(run).check_same_global_batch({"train": {"batch_source": 1}}, world_size=2)
    with pytest.raises(ConfigError, match="global batch of 2"):
        RunDir(run).check_same_global_batch({"train": {"batch_source": 2}}, world_size=2)


# ------------------------------------------------------------------------- config values range-checked
@pytest.mark.parametrize("override, message", [
    ("train.warmup_factor=-5", "train.warmup_factor must be in [0, 1], got -5.0"),
    ("train.weight_decay=-1", "train.weight_decay must be >= 0, got -1.0"),
    ("train.lr_gamma=-1", "train.lr_gamma must be in (0, 1], got -1.0"),
    ("train.grad_clip=-1", "train.grad_clip must be >= 0 (0 disables clipping), got -1.0"),
    ("train.momentum=1.5", "train.momentum must be in [0, 1), got 1.5"),
    ("data.num_workers=-2", "data.num_workers must be >= 0, got -2"),
    ("eval.max_images=-3", "eval.max_images must be >= 0 (0 scores every image), got -3"),
    ("eval.batch_size=0", "eval.batch_size must be at least 1, got 0"),
])
def test_out_of_range_config_values_are_one_line(override, message, capsys):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert main(["train", override, "--print-config"]) == 1
    assert message in _one_line(capsys.readouterr().err)


def test_a_yaml_key_given_twice_is_refused(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 1\ntrain:\n  lr: 0.01\n  max_steps: 5\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match=rf"{path}: .*duplicate key 'lr' on line 5 \(first given on line 3\)"):
        load_config(path)
    assert main(["train", "--config", str(path), "--print-config"]) == 1
    assert "duplicate key 'lr'" in _one_line(capsys.readouterr().err)
    # the same key in two different sections is not a duplicate
    path.write_text("seed: 1\ntrain:\n  max_steps: 5\neval:\n  max_images: 5\n")
    assert load_config(path).eval.max_images == 5


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 1\nrun_name: café\n".encode("latin-1"))
    assert main(["train", "--config", str(path), "--print-config"]) == 1
    assert f"{path}: line 2 is not UTF-8 text (byte 0xe9)" in _one_line(capsys.readouterr().err)


def test_an_id_list_that_is_not_utf8_names_its_line(tmp_path):
    from drsf_kit.data.dwd import DWDDetection

    voc = write_domain(tmp_path, "daytime_clear", {"a": [CAR], "b": [CAR]})
    (voc / "ImageSets" / "Main" / "train.txt").write_bytes(b"a\ncaf\xe9\n")
    with pytest.raises(DataError, match=re.escape("train.txt: line 2 is not UTF-8 text (b'caf\\xe9', byte 0xe9)")):
        DWDDetection(tmp_path, "daytime_clear", "train", progress=False)


# ------------------------------------------------------------------------- domains and splits, before training
def _tiny_source_only(tmp_path, *extra):
    data = tmp_path / "data"
    write_domain(data, "daytime_clear", {"a": [CAR], "b": [CAR]}, train=["a"], test=["b"])
    write_domain(data, "night_sunny", {"n": [CAR]}, test=["n"])
    return load_config(None, [f"data.root={data}", f"output_dir={tmp_path / 'runs'}", "variant=source_only",
                              "train.max_steps=1", "train.tensorboard=false", *extra]), data


@pytest.mark.parametrize("what", ["unknown_domain", "empty_target_split", "empty_source_split"])
def test_domains_and_splits_are_checked_before_training(tmp_path, what):
    if what == "unknown_domain":
        cfg, data = _tiny_source_only(tmp_path, "data.eval_domains=[moon]")
        expected = r"data.eval_domains names domain 'moon', which has no folder .* \(domains found there: daytime_clear, night_sunny\)"
    elif what == "empty_target_split":
        cfg, data = _tiny_source_only(tmp_path, "data.eval_domains=[night_sunny]", "data.protocol=drsf_code")
        (data / "night_sunny" / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("")
        expected = r"night_sunny/VOC2007/ImageSets/Main/test\.txt: split 'test' of domain 'night_sunny' lists no images"
    else:
        cfg, data = _tiny_source_only(tmp_path, "data.eval_domains=[night_sunny]")
        (data / "daytime_clear" / "VOC2007" / "ImageSets" / "Main" / "train.txt").write_text("\n")
        expected = r"train\.txt: split 'train' of domain 'daytime_clear' lists no images \(data.source_domain\)"
    with pytest.raises((ConfigError, DataError), match=expected):
        check_paths(cfg)
    with pytest.raises((ConfigError, DataError), match=expected):
        fit(cfg, progress=False)
    assert not (tmp_path / "runs").exists()  # refused before the run folder was made


def test_data_check_fails_on_an_empty_source_train_list(tmp_path, capsys):
    voc = write_domain(tmp_path, "daytime_clear", {"a": [CAR]}, test=["a"])
    (voc / "ImageSets" / "Main" / "train.txt").write_text("")
    assert main(["data", "check", str(tmp_path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "split 'train' of domain 'daytime_clear' lists no images" in out and "OK" not in out.split("\n")[-2]


def test_twins_of_the_wrong_size_stop_training_before_the_first_step(tiny_weather, synth_root, tmp_path, capsys):
    synth = tmp_path / "synth"
    shutil.copytree(synth_root, synth)
    rows = read_jsonl(synth / "night_sunny" / "manifest.jsonl")
    bad = synth / "night_sunny" / rows[-1]["path"]
    Image.open(bad).resize((40, 24)).save(bad)
    argv = ["train", "--no-progress", f"data.root={tiny_weather}", f"data.synth_root={synth}",
            f"output_dir={tmp_path / 'runs'}", "variant=naive_synth", "train.max_steps=2", "train.batch_source=1",
            "train.tensorboard=false", "eval.max_images=1", "run_name=bad_twins"]
    assert main(argv) == 1
    err = _one_line(capsys.readouterr().err)
    assert f"{bad}: " in err and "says the image is 320x180 but it is 40x24" in err
    assert not (tmp_path / "runs" / "bad_twins" / "metrics.jsonl").exists()  # no step was taken


# ------------------------------------------------------------------------- manifests: damage is not a kill remnant
def test_a_corrupt_row_in_the_middle_of_a_manifest_is_an_error(tmp_path):
    manifest = tmp_path / "gen" / "daytime_foggy" / "manifest.jsonl"
    for name in ("s1", "s2", "s3"):
        write_image(manifest.parent / f"{name}.jpg", 8, 8)
    write_rows(manifest, [row("s1")])
    with manifest.open("a") as fh:
        fh.write('{"source_id": "s2", "sour\n')  # damaged, and followed by a good row
    with manifest.open("a") as fh:
        fh.write(json.dumps(row("s3")) + "\n")
    with pytest.raises(DataError, match=rf"{manifest}: line 2 is not valid JSON .*only a torn last line is skipped"):
        read_manifests(tmp_path / "gen")


def test_a_torn_last_line_is_dropped_by_the_next_append(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n" + '{"a": 2, "b"')  # a kill during the second append
    assert read_jsonl(path) == [{"a": 1}]  # a torn last line is a kill remnant
    append_jsonl(path, {"a": 3})
    assert path.read_text() == '{"a": 1}\n{"a": 3}\n'  # gone, so only damage can sit mid-file
    assert read_jsonl(path) == [{"a": 1}, {"a": 3}]


# ------------------------------------------------------------------------- one writer, one line, nothing lost
def test_a_second_synth_into_the_same_folder_is_refused_at_once(tiny_weather, tmp_path, capsys):
    out = tmp_path / "synth"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = out / "procedural"
        folder.mkdir(parents=True)
        (folder / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": 0}))
        their_tmp = folder / "daytime_foggy" / ".a.jpg.x1y2.tmp"  # the first writer's file in progress
        their_tmp.parent.mkdir()
        their_tmp.write_bytes(b"half an image")
        argv = ["synth", "--data", str(tiny_weather), "--backend", "procedural", "--out", str(out),
                "--limit", "1", "--no-progress"]
        assert main(argv) == 1
        assert f"in use by pid {holder.pid} on host {socket.gethostname()}" in _one_line(capsys.readouterr().err)
        assert their_tmp.read_bytes() == b"half an image"
    finally:
        holder.kill()
        holder.wait()
    assert main(argv) == 0  # the holder is gone: its lock is taken over
    assert not (folder / ".lock").exists() and (folder / "daytime_foggy" / "manifest.jsonl").is_file()


def _lock_from_another_process(folder: Path, name: str) -> int:
    """0 when a child process gets ``folder``'s lock ``name``, 3 when it is refused as in use."""
    code = ("import sys\nfrom drsf_kit.utils.lock import RunLock\nfrom drsf_kit.errors import RunInUseError\n"
            f"try:\n    RunLock({str(folder)!r}, {name!r}).acquire().release()\nexcept RunInUseError:\n    sys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", code], env=env).returncode


def test_each_shard_of_a_synth_folder_has_its_own_writer(tmp_path):
    from drsf_kit.synth.runner import lock_name
    from drsf_kit.utils.lock import RunLock

    folder = tmp_path / "procedural"
    with RunLock(folder, lock_name((0, 2))):
        assert _lock_from_another_process(folder, lock_name((0, 2))) == 3  # the same shard: refused
        assert _lock_from_another_process(folder, lock_name((1, 2))) == 0  # shards run side by side


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_naming_the_folder_and_loses_nothing(tmp_path, monkeypatch):
    path = tmp_path / "out" / "config.json"
    atomic_write_text(path, "old")
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(DiskFullError) as info:
        atomic_write_text(path, "x" * 5000)
    message = str(info.value)
    assert message.startswith(f"{path.parent}: no space left on the device while writing config.json (needed 4.9 KB, free ")
    assert path.read_text() == "old" and [p.name for p in path.parent.iterdir()] == ["config.json"]
    with pytest.raises(DiskFullError, match="while writing rows.jsonl"):
        append_jsonl(tmp_path / "out" / "rows.jsonl", {"a": 1})


def test_a_full_disk_during_train_and_synth_is_one_line(finished_run, tiny_weather, tmp_path, monkeypatch, capsys):
    run = _copy_run(finished_run, tmp_path)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    monkeypatch.setattr(os, "fsync", _no_space)
    argv = ["train", "--no-progress", *_run_args(tiny_weather, tmp_path, "done"), "train.max_steps=3"]
    assert main([*argv, "--resume"]) == 1
    assert f"{run}: no space left on the device while writing" in _one_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    assert main(["synth", "--data", str(tiny_weather), "--backend", "procedural", "--out", str(tmp_path / "s"),
                 "--limit", "1", "--no-progress"]) == 1
    assert "no space left on the device" in _one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------- a poisoned checkpoint
def test_a_poisoned_checkpoint_is_named_and_the_resume_falls_back(finished_run, tiny_weather, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    newest = run / "checkpoints" / "step_00000002.pt"
    ckpt = torch.load(newest, weights_only=True)
    ckpt["model"] = {k: v * 1e30 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, newest)  # finite numbers, but every step from them is NaN
    (run / "checkpoints" / "last.pt").unlink()
    os.link(newest, run / "checkpoints" / "last.pt")
    argv = ["train", "--no-progress", *_run_args(tiny_weather, tmp_path, "done"), "train.max_steps=3"]
    assert main([*argv, "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"skipping checkpoint {newest}: holds a weight of magnitude 1e+30" in out
    assert (run / "checkpoints" / "step_00000002.pt.bad").is_file()
    assert RunDir(run).finished_step() == 3
    assert [r["step"] for r in RunDir(run).metric_rows() if "loss" in r] == [1, 2, 3]  # step 2 replayed from 1


# ------------------------------------------------------------------------- notebooks and the app
def test_a_notebook_without_a_kernelspec_is_one_line(tmp_path, capsys):
    book = tmp_path / "plain.ipynb"
    book.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]}, "execution_count": None,
         "outputs": [], "source": "SEED = 0"}]}))
    assert main(["batch", str(book), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert f"{book}: has no kernelspec (metadata.kernelspec.name)" in err
    assert not (tmp_path / "out").exists()


def test_the_app_token_is_not_on_the_command_line(tmp_path):
    from drsf_kit.workflows.app import TOKEN_ENV, token_env, voila_command

    secret = "0123456789abcdef-secret"
    command = voila_command(tmp_path / "page.ipynb", 8123, token=secret)
    assert not any(secret in part for part in command) and "--Voila.auto_token=True" in command
    env = token_env({"PATH": "/bin", TOKEN_ENV: "inherited"}, secret)
    assert env[TOKEN_ENV] == secret and env["PATH"] == "/bin"
    assert TOKEN_ENV not in token_env({TOKEN_ENV: "inherited"}, "")  # --no-token: no stray token either
    assert "--Voila.token=" in voila_command(tmp_path / "page.ipynb", 8123, token="")


def test_a_waiting_writer_takes_the_synth_lock_once_the_first_releases_it(tmp_path):
    """Runs trained side by side share one synth folder: the later worker waits instead of failing."""
    import threading

    from drsf_kit.errors import RunInUseError
    from drsf_kit.utils.lock import RunLock

    first = RunLock(tmp_path, name=".lock").acquire()
    other = RunLock(tmp_path, name=".lock")
    other.me = {**other.me, "pid": other.me["pid"] + 1}  # a second writer: another (live-looking) process
    first_me = first.me
    with pytest.raises(RunInUseError):
        other.acquire()  # without waiting: refused at once, as a second `drsf synth` is
    timer = threading.Timer(1.0, first.release)
    timer.start()
    got = other.acquire(wait=30)
    assert got.held and json.loads((tmp_path / ".lock").read_text())["pid"] == first_me["pid"] + 1
    got.release()
