"""The training engine on tiny data: every variant x task trains, twins are batched right, a run resumes
exactly, a NaN stops the run cleanly, and `drsf eval` scores a finished run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from drsf_kit.cli import main
from drsf_kit.config import load_config, with_overrides
from drsf_kit.errors import NonFiniteLossError
from drsf_kit.evaluation.results import COLUMNS
from drsf_kit.models import VARIANTS
from drsf_kit.train import LRFactor, evaluate_run, fit, load_run
from drsf_kit.data.twins import TwinCollate
from drsf_kit.train.data import build_train_set
from drsf_kit.train.samplers import TwinBatchSampler
from drsf_kit.utils.io import read_jsonl

DOMAINS = ("daytime_clear", "daytime_foggy", "dusk_rainy", "night_rainy", "night_sunny")


def tiny_cfg(tiny_weather, synth_root, tmp_path, *overrides):
    return load_config(None, [
        f"data.root={tiny_weather}", f"data.synth_root={synth_root}", f"output_dir={tmp_path / 'runs'}",
        "train.batch_source=1", "train.max_steps=2", "train.log_every=1", "train.warmup_steps=1",
        "eval.max_images=1", "train.tensorboard=false", *overrides])


def losses_by_step(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r}


# ------------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("task", ["det", "seg"])
def test_twins_share_geometry_and_labels(tiny_weather, synth_root, tmp_path, task):
    # det: scale jitter (crop resized back); seg: fixed-size crops at full resolution
    crop = "train.crop_min_scale=0.6" if task == "det" else "train.crop_size=[96, 128]"
    cfg = tiny_cfg(tiny_weather, synth_root, tmp_path, f"task={task}", crop)
    train_set = build_train_set(cfg)
    assert train_set.coverage() == 1.0
    sampler = TwinBatchSampler(train_set.twin_table, 3, seed=0, hflip=0.5)
    collate = TwinCollate(task)
    flips = set()
    for b in range(4):
        items = sampler.batch(b)
        flips |= {it.flip for it in items}
        batch = collate([train_set[it] for it in items])
        assert batch.domains[:3].tolist() == [0, 0, 0] and all(1 <= d <= 4 for d in batch.domains[3:].tolist())
        assert batch.pairs.tolist() == [[0, 3], [1, 4], [2, 5]]
        for i, j in batch.pairs.tolist():
            # identical crop + flip: the twin's (reused) labels sit exactly where the source's do
            if task == "det":
                assert torch.equal(batch.targets[i]["boxes"], batch.targets[j]["boxes"])
                assert torch.equal(batch.targets[i]["labels"], batch.targets[j]["labels"])
                assert batch.images[i].shape == batch.images[j].shape
            else:
                assert torch.equal(batch.targets[i], batch.targets[j])
                assert batch.images.shape[-2:] == (96, 128) and batch.targets.shape[-2:] == (96, 128)
            assert not torch.equal(batch.images[i], batch.images[j])  # the twin is a different rendering
    assert flips == {True, False}


def test_sampler_state_is_the_batch_index(tiny_weather, synth_root, tmp_path):
    cfg = tiny_cfg(tiny_weather, synth_root, tmp_path)
    table = build_train_set(cfg).twin_table
    full = list(TwinBatchSampler(table, 4, seed=5, stop=10))
    assert list(TwinBatchSampler(table, 4, seed=5, start=6, stop=10)) == full[6:]  # a resume draws the same
    assert list(TwinBatchSampler(table, 4, seed=6, stop=10)) != full
    stream = TwinBatchSampler(table, 4, seed=5)
    assert [it for batch in full for it in batch] == [stream.item(k) for k in range(40)]  # batches = the stream in order
    # one epoch visits every source image exactly once (16 images, batches of 4)
    assert sorted(it.source for batch in full[:4] for it in batch) == list(range(16))
    alone = TwinBatchSampler(table, 4, seed=5, stop=2, use_twins=False)
    assert all(it.twin == -1 and it.domain == 0 for batch in alone for it in batch)


def test_lr_schedules():
    cfg = load_config(None, ["train.max_steps=100", "train.warmup_steps=10", "train.schedule=step",
                             "train.lr_steps=[50, 80]", "train.warmup_factor=0.1"])
    f = LRFactor(cfg.train)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55) and f(10) == 1.0
    assert (f(49), f(50), f(80)) == (1.0, pytest.approx(0.1), pytest.approx(0.01))
    cos = LRFactor(with_overrides(cfg, ["train.schedule=cosine"]).train)
    assert cos(10) == 1.0 and cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    one = LRFactor(with_overrides(cfg, ["train.schedule=onecycle", "train.warmup_steps=0"]).train)
    assert one(0) == pytest.approx(0.04) and one(30) == 1.0 and one(100) == pytest.approx(1e-4)


# ------------------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("task", ["det", "seg"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_and_writes_its_run(tiny_weather, synth_root, tmp_path, task, variant):
    cfg = tiny_cfg(tiny_weather, synth_root, tmp_path, f"task={task}", f"variant={variant}")
    run_dir = fit(cfg, progress=False)
    assert run_dir == tmp_path / "runs" / f"{task}-{variant}-0"
    for name in ("config.json", "metrics.jsonl", "results.jsonl", "done", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["variant"] == variant
    spec = VARIANTS[variant]
    # the run records the DRSF design it was built with (the default, v3), so it rebuilds after a default changes
    assert saved["model"]["hparams"].get("method") == ("v3" if spec.use_dfdr or spec.use_mdsf else None)
    steps = losses_by_step(run_dir)
    assert sorted(steps) == [1, 2]
    for row in steps.values():
        terms = {k: v for k, v in row.items() if k.startswith("loss_")}
        assert terms and all(math.isfinite(v) for v in terms.values())
        assert ("loss_align" in terms) == spec.use_dfdr and ("loss_cons" in terms) == spec.use_consistency
        assert "loss_adv" not in terms and "stats/disc_acc" not in row  # v3 fuses without an adversary
    start = read_jsonl(run_dir / "metrics.jsonl")[0]
    assert start["event"] == "start" and start["twin_coverage"] == (1.0 if spec.use_synth else 0.0)
    rows = read_jsonl(run_dir / "results.jsonl")
    assert all(set(r) == set(COLUMNS) for r in rows)
    summary = {r["domain"]: r for r in rows if r["class"] is None and r["metric"] == ("map50_voc07" if task == "det" else "miou")}
    assert set(summary) == set(DOMAINS)
    assert summary["daytime_clear"]["split"] == "test" and summary["dusk_rainy"]["split"] == "all"
    assert all(r["step"] == 2 and r["variant"] == variant and r["task"] == task and r["protocol"] == "all_images"
               for r in rows)
    assert all(r["value"] is None or 0.0 <= r["value"] <= 1.0 for r in rows)
    metric = "map50_voc07" if task == "det" else "miou"
    assert (run_dir / f"{metric}_all_images.md").is_file() and (run_dir / f"{metric}_all_images_per_class.md").is_file()


def test_resume_nan_same_seed_and_eval_cli(tiny_weather, synth_root, tmp_path):
    overrides = ["train.max_steps=4", "train.checkpoint_every=2", "eval.domains=[daytime_clear]",
                 "eval.max_images=1"]
    # the reference run goes through `drsf train`, the others through fit(): one code path
    args = [f"data.root={tiny_weather}", f"data.synth_root={synth_root}", f"output_dir={tmp_path / 'runs'}",
            "train.log_every=1", "train.warmup_steps=1", "train.batch_source=1", "run_name=ref", *overrides]
    assert main(["train", "--no-progress", *args]) == 0
    ref = losses_by_step(tmp_path / "runs" / "ref")
    assert list((tmp_path / "runs" / "ref").glob("events.out.tfevents.*"))  # TensorBoard beside metrics.jsonl
    cfg = tiny_cfg(tiny_weather, synth_root, tmp_path, *overrides)

    broken = with_overrides(cfg, ["run_name=cut", "train.debug_nan_at_step=3"])
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss term 'loss_classifier' is nan"):
        fit(broken, progress=False)
    run_dir = tmp_path / "runs" / "cut"
    last = read_jsonl(run_dir / "metrics.jsonl")[-1]
    assert last["event"] == "non_finite_loss" and last["step"] == 3 and last["term"] == "loss_classifier"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    assert not (run_dir / "done").exists()

    cut = losses_by_step(run_dir)
    assert [cut[s]["loss"] for s in (1, 2)] == [ref[s]["loss"] for s in (1, 2)]  # same seed, same losses

    fit(with_overrides(cfg, ["run_name=cut"]), resume=True, progress=False)
    resumed = losses_by_step(run_dir)
    assert [resumed[s]["loss"] for s in (3, 4)] == [ref[s]["loss"] for s in (3, 4)]  # exactly the same
    assert (run_dir / "done").is_file()
    model, loaded = load_run(run_dir)
    assert not model.training and model.trained_steps == 4 and loaded.name == "cut"

    before = len(read_jsonl(run_dir / "results.jsonl"))
    assert main(["eval", "--run", str(run_dir), "--domains", "daytime_clear", "night_sunny",
                 "--protocol", "drsf_code", "--no-progress"]) == 0
    rows = read_jsonl(run_dir / "results.jsonl")
    new = rows[before:]
    assert {r["domain"] for r in new} == {"daytime_clear", "night_sunny"}
    assert all(r["protocol"] == "drsf_code" and r["step"] == 4 for r in new)
    assert {r["split"] for r in new if r["domain"] == "night_sunny"} == {"test"}  # drsf_code scores its test split
    assert (run_dir / "map50_voc07_drsf_code.md").is_file() and (run_dir / "ap50_coco_drsf_code_per_class.md").is_file()
    assert "mAP@0.5, VOC2007" in (run_dir / "map50_voc07_drsf_code.md").read_text()
    assert evaluate_run(run_dir, domains=["daytime_clear"], write=False, progress=False)[0]["step"] == 4
