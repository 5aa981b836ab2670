"""`make gpu-check`: its CPU rehearsal runs every part, and it needs nothing of the notebook stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a GPU machine's ML image lacks: the check must import none of it (pycocotools is allowed: it
# installs from a wheel, and only the detection scores need it).
NOTEBOOK_STACK = ("ipywidgets", "papermill", "nbformat", "nbclient", "jupyter_client", "jupyterlab", "IPython",
                  "captum", "diffusers", "transformers", "voila", "seaborn", "ipykernel")
BLOCKER = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("not on a GPU machine: " + name)
sys.meta_path.insert(0, Block())
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def _without_notebook_stack(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "blocked.py"
    script.write_text(BLOCKER.format(blocked=set(NOTEBOOK_STACK), script=str(ROOT / "benchmarks" / "gpu_check.py")))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600)


def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    proc = _without_notebook_stack(["--out", str(tmp_path / "x.json")], tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_toy_check_runs_every_part_without_the_notebook_stack(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = _without_notebook_stack(["--toy", "--variants", "drsf", "--work", str(tmp_path / "work"), "--out", str(out)],
                                   tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["toy"] and record["device"].startswith("cpu") and record["torch"]
    assert {(r["config"], r["variant"]) for r in record["step"]} == {
        ("paper_det_dwd_r101.yaml", "drsf"), ("paper_seg_gtav_r101.yaml", "drsf")}
    assert {(r["task"], r["variant"]) for r in record["train"]} == {("det", "drsf"), ("seg", "drsf")}
    for row in record["train"]:
        assert row["s_per_iter"] > 0 and row["images_per_s"] > 0
        score = row["target_mean_map50_voc07" if row["task"] == "det" else "target_mean_miou"]
        assert score is not None and 0 <= score <= 100
    paper = record["paper_loader"]
    assert paper["steps"] == 2 and paper["s_per_iter"] > 0


@pytest.mark.slow
def test_toy_check_every_variant(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = _without_notebook_stack(["--toy", "--work", str(tmp_path / "work"), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    assert len(record["train"]) == 12 and len(record["step"]) == 12
