"""Resume after a kill, manifest repair, --overwrite, and shards + merge == one unsharded run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from tiny_diffusion import make_tiny_dwd

from drsf_kit.cli import main
from drsf_kit.data.manifest import read_manifests
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.synth import SynthConfig, merge_shards, run_synth
from drsf_kit.utils.io import read_jsonl

DOMAINS = ("daytime_foggy", "night_rainy")
TOTAL = 60 * len(DOMAINS)


@pytest.fixture(scope="module")
def dwd60(tmp_path_factory):
    return make_tiny_dwd(tmp_path_factory.mktemp("dwd60"), n=60, seed=4)


def snapshot(base: Path) -> tuple[dict, dict]:
    """(relative image path -> bytes, (domain, source_id, index) -> manifest row without timing)."""
    images = {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*.jpg"))}
    rows = {}
    for row in read_manifests(base):  # raises on a duplicated image
        key = (row["domain"], row["source_id"], row["index"])
        rows[key] = {k: v for k, v in row.items() if k != "seconds" and not k.startswith("_")}
    return images, rows


def _count_rows(base: Path) -> int:
    return sum(len(read_jsonl(p)) for p in base.rglob("manifest*.jsonl"))


def _listed_bytes(base: Path) -> int:
    # cheap enough to poll often without slowing the run being watched
    return sum(p.stat().st_size for p in base.glob("procedural/*/manifest.jsonl"))


def test_resume_after_kill_matches_uninterrupted_run(dwd60, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "drsf_kit", "synth", "--data", str(dwd60), "--out", str(out),
           "--domains", ",".join(DOMAINS), "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while _listed_bytes(out) < 1500:  # kill once the first few images are listed
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the generation never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    listed = _count_rows(out)
    assert 3 <= listed < TOTAL, "the run must be cut off mid-way for this test to mean anything"
    # whatever the kill left: every listed image decodes completely
    for row in read_manifests(out / "procedural"):
        with Image.open(Path(row["_manifest_dir"]) / row["path"]) as im:
            im.load()
    # rerun: finishes the rest without redoing or duplicating anything
    assert main(["synth", "--data", str(dwd60), "--out", str(out), "--domains", ",".join(DOMAINS),
                 "--no-progress"]) == 0
    summary = json.loads((out / "procedural" / "summary.json").read_text())
    assert sum(d["resumed"] for d in summary["domains"].values()) == listed
    assert summary["generated"] == TOTAL - listed
    assert not list(out.rglob("*.tmp")), "temporary files of the killed run must be cleaned up"
    reference = tmp_path / "reference"
    run_synth(SynthConfig(data=str(dwd60), out=str(reference), domains=DOMAINS, progress=False))
    images, rows = snapshot(out / "procedural")
    ref_images, ref_rows = snapshot(reference / "procedural")
    assert len(rows) == TOTAL and images.keys() == ref_images.keys()
    assert images == ref_images and rows == ref_rows


def test_damaged_manifest_is_repaired_on_resume(tmp_path):
    dwd = make_tiny_dwd(tmp_path / "dwd", n=5, seed=5)
    cfg = SynthConfig(data=str(dwd), out=str(tmp_path / "o"), domains=("night_sunny",), progress=False)
    run_synth(cfg)
    folder = tmp_path / "o" / "procedural" / "night_sunny"
    before = snapshot(tmp_path / "o" / "procedural")
    (folder / "img0002.jpg").unlink()  # an image lost after its row was written
    with open(folder / "manifest.jsonl", "ab") as fh:  # and an append cut short by a kill
        fh.write(b'{"source_id": "img0004", "source_dom')
    summary = run_synth(cfg)
    assert summary["domains"]["night_sunny"] == {**summary["domains"]["night_sunny"], "generated": 1, "resumed": 4}
    assert snapshot(tmp_path / "o" / "procedural") == before
    assert (folder / "manifest.jsonl").read_bytes().endswith(b"}\n")
    # --overwrite regenerates everything, still one row per image
    summary = run_synth(SynthConfig(**{**cfg.__dict__, "overwrite": True}))
    assert summary["domains"]["night_sunny"]["generated"] == 5
    assert summary["domains"]["night_sunny"]["resumed"] == 0
    assert snapshot(tmp_path / "o" / "procedural") == before


def test_shards_and_merge_equal_unsharded(tmp_path, capsys):
    dwd = make_tiny_dwd(tmp_path / "dwd", n=7, seed=6)
    common = {"data": str(dwd), "domains": ("daytime_foggy", "night_rainy"), "per_image": 2, "seed": 11,
              "progress": False}
    run_synth(SynthConfig(out=str(tmp_path / "whole"), **common))
    sharded = tmp_path / "sharded"
    for i in range(3):
        run_synth(SynthConfig(out=str(sharded), shard=(i, 3), **common))
    parts = sorted(p.name for p in (sharded / "procedural" / "night_rainy").glob("manifest.part-*"))
    assert parts == [f"manifest.part-{i}-of-3.jsonl" for i in range(3)]
    assert sum(len(read_jsonl(sharded / "procedural" / "night_rainy" / p)) for p in parts) == 14
    assert main(["synth", "merge", str(sharded)]) == 0
    assert json.loads((sharded / "procedural" / "night_rainy" / "shards.json").read_text()) == {
        "of": 3, "merged": [0, 1, 2]}
    merged = json.loads(capsys.readouterr().out)["merged"]
    assert sorted(Path(k).name for k in merged) == ["daytime_foggy", "night_rainy"]
    assert set(merged.values()) == {14}
    # the parts are gone: each domain folder reads as one manifest, sorted by source id and index
    assert not list(sharded.rglob("manifest.part-*"))
    for domain in common["domains"]:
        ids = [(r["source_id"], r["index"]) for r in read_jsonl(sharded / "procedural" / domain / "manifest.jsonl")]
        assert ids == sorted(ids) and len(ids) == 14
    assert snapshot(sharded / "procedural") == snapshot(tmp_path / "whole" / "procedural")
    # nothing left to merge; resumed shard and unsharded runs find everything done
    assert merge_shards(sharded) == {}
    assert run_synth(SynthConfig(out=str(sharded), shard=(1, 3), **common))["generated"] == 0
    assert merge_shards(sharded) == {str(sharded / "procedural" / d): 14 for d in common["domains"]}
    summary = run_synth(SynthConfig(out=str(sharded), **common))
    assert summary["generated"] == 0 and summary["domains"]["night_rainy"]["resumed"] == 14


def test_merge_refuses_overlaps_and_missing_shards(tmp_path):
    dwd = make_tiny_dwd(tmp_path / "dwd", n=4, seed=7)
    common = {"data": str(dwd), "domains": ("night_sunny",), "progress": False}
    out = tmp_path / "o"
    folder = out / "procedural" / "night_sunny"
    run_synth(SynthConfig(out=str(out), shard=(0, 2), **common))
    part0 = (folder / "manifest.part-0-of-2.jsonl").read_bytes()
    with pytest.raises(DataError, match=r"shard\(s\) \[1\] of 2"):
        merge_shards(out)
    # an unsharded run must not ignore unmerged shard results
    with pytest.raises(ConfigError, match="synth merge"):
        run_synth(SynthConfig(out=str(out), **common))
    run_synth(SynthConfig(out=str(out), shard=(1, 2), **common))
    part1 = folder / "manifest.part-1-of-2.jsonl"
    good = part1.read_bytes()
    part1.write_bytes(good + part0)  # shard 1 claiming shard 0's images is refused
    with pytest.raises(DataError, match="also listed in manifest.part-0-of-2.jsonl"):
        merge_shards(out)
    part1.write_bytes(good)
    assert merge_shards(out) == {str(folder): 4}
    assert len(read_manifests(out / "procedural")) == 4
    with pytest.raises(DataError, match="no manifest.part"):
        merge_shards(tmp_path / "dwd")
