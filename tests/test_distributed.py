"""Several processes, one run: the source-image sharding sampler, LR scaling, the process-group helpers,
and torchrun runs on CPU (gloo): replicas stay identical, two processes reproduce one process with the
same global batch, and a checkpoint written by two processes resumes in one."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drsf_kit.errors import ConfigError
from drsf_kit.train.samplers import TwinBatchSampler
from drsf_kit.train.distributed import (
    TwinDistributedSampler,
    all_reduce_mean,
    any_process,
    broadcast_object,
    init_distributed,
    is_main_process,
    replica_max_difference,
    scale_lr,
    world_size,
)


def twin_table(n: int, domains: int = 3) -> list[dict[int, list[int]]]:
    """Source i has one twin per pseudo-domain d, numbered i * 10 + d (so a twin names its source)."""
    return [{d: [i * 10 + d] for d in range(1, domains + 1)} for i in range(n)]


def shards(table, batch_source: int, world: int, steps: int, start: int = 0, seed: int = 3):
    """Per step, the items of every process in rank order (what the global batch is made of)."""
    base = TwinBatchSampler(table, 1, seed)
    samplers = [TwinDistributedSampler(base, batch_source, rank=r, world_size=world, start=start, steps=steps)
                for r in range(world)]
    return [list(step) for step in zip(*(list(s) for s in samplers))], samplers


# ------------------------------------------------------------------------------------------- sampler
def test_every_source_image_once_per_epoch_across_processes():
    table = twin_table(12)
    steps, _ = shards(table, batch_source=2, world=3, steps=4)  # global batch 6: two steps per epoch
    for epoch in (steps[:2], steps[2:]):
        seen = [it.source for step in epoch for rank_items in step for it in rank_items]
        assert sorted(seen) == list(range(12))  # each image once, none on two processes
    first, second = ([it.source for step in half for r in step for it in r] for half in (steps[:2], steps[2:]))
    assert first != second  # each epoch is its own permutation
    for step in steps:  # every process gets its own B images
        assert [len(r) for r in step] == [2, 2, 2]


def test_twins_stay_with_their_source_image():
    table = twin_table(9)
    steps, _ = shards(table, batch_source=1, world=2, steps=9)
    items = [it for step in steps for r in step for it in r]
    assert all(it.twin // 10 == it.source and it.twin % 10 == it.domain for it in items)
    assert {it.domain for it in items} == {1, 2, 3}
    # flip and crop are drawn once per item, so a source and its twin get the same geometry
    assert {it.flip for it in items} == {True, False} and len({it.draws for it in items}) == len(items)


def test_position_is_global_sources_consumed_and_independent_of_world_size():
    table = twin_table(10)  # 10 images, global batch 4: steps straddle epoch boundaries
    base = TwinBatchSampler(table, 1, 3)
    stream = [base.item(k) for k in range(40)]
    run2, samplers2 = shards(table, batch_source=2, world=2, steps=3)
    assert [it for step in run2 for r in step for it in r] == stream[:12]
    state = samplers2[0].state_dict(3)
    assert state["sources_consumed"] == 12 and samplers2[1].state_dict(3) == state
    assert (state["epoch"], state["position"], state["next_batch"]) == (1, 2, 3)
    # the same state continues on 1 process (B=4) and on 4 processes (B=1): the same next images
    start = TwinDistributedSampler.position(state)
    one, _ = shards(table, batch_source=4, world=1, steps=2, start=start)
    four, _ = shards(table, batch_source=1, world=4, steps=2, start=start)
    assert [it for s in one for r in s for it in r] == [it for s in four for r in s for it in r] == stream[12:20]


def test_one_process_draws_the_engine_batches_and_reads_old_states():
    table = twin_table(7)
    engine = TwinBatchSampler(table, 3, 5, start=2, stop=6)
    mine = TwinDistributedSampler(TwinBatchSampler(table, 3, 5), 3, rank=0, world_size=1, start=6, steps=4)
    assert list(mine) == list(engine) and len(mine) == 4
    assert TwinDistributedSampler.position({"next_batch": 5, "batch_source": 2, "seed": 0}) == 10
    assert TwinDistributedSampler.position(None) == 0


def test_sampler_rejects_bad_arguments():
    base = TwinBatchSampler(twin_table(3), 1, 0)
    with pytest.raises(ConfigError, match="rank 2"):
        TwinDistributedSampler(base, 1, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_source"):
        TwinDistributedSampler(base, 0, rank=0, world_size=1)
    with pytest.raises(TypeError):
        len(TwinDistributedSampler(base, 1, rank=0, world_size=1))


# ------------------------------------------------------------------------------------------- lr, helpers
def test_scale_lr_rules():
    assert scale_lr(0.01, 16, 2, "linear") == pytest.approx(0.08)
    assert scale_lr(0.01, 16, 4, "sqrt") == pytest.approx(0.02)
    assert scale_lr(0.01, 16, 2, "none") == 0.01
    assert scale_lr(0.01, 1, 4, "linear") == pytest.approx(0.0025)
    with pytest.raises(ConfigError, match="lr_scaling 'cubic'; valid: none, linear, sqrt"):
        scale_lr(0.01, 2, 2, "cubic")
    with pytest.raises(ConfigError, match="positive"):
        scale_lr(0.01, 2, 0)


def test_single_process_helpers_are_no_ops(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.distributed, ctx.is_main) == (0, 1, None, False, True)
    assert not torch.distributed.is_initialized()
    assert is_main_process() and world_size() == 1
    assert all_reduce_mean({"a": 1.5}) == {"a": 1.5}
    assert torch.equal(all_reduce_mean(torch.tensor([2.0])), torch.tensor([2.0]))
    assert any_process(True) and not any_process(False)
    assert broadcast_object({"x": 1}) == {"x": 1}
    assert replica_max_difference(torch.nn.Linear(2, 2)) == 0.0
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        init_distributed(device="cpu")


# ------------------------------------------------------------------------------------------- torchrun runs
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env() -> dict:
    """The test's own drsf_kit first on the path; one thread per process (two cores, two processes)."""
    import drsf_kit

    package_parent = str(Path(drsf_kit.__file__).resolve().parents[1])
    path = os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "DRSF_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


def torchrun(launcher: list[str], train_args: list[str]) -> subprocess.Popen:
    """Start `python -m torch.distributed.run LAUNCHER -m drsf_kit train TRAIN_ARGS` (not waited for)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "drsf_kit", "train", "--no-progress",
           *train_args]
    return subprocess.Popen(cmd, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    return out


def loss_rows(run_dir: Path) -> dict[int, dict]:
    from drsf_kit.utils.io import read_jsonl

    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r}


def scalar_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def update_difference(cfg, run_a: Path, run_b: Path) -> float:
    """|w_b - w_a| / |w_a - w_init| over all parameters: how far apart two runs' weight updates are."""
    from drsf_kit.train import build_model_for
    from drsf_kit.utils.runtime import seed_everything

    seed_everything(cfg.seed)
    init = dict(build_model_for(cfg).named_parameters())
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in (run_a, run_b))
    assert set(a) == set(b)  # both hold the bare model: no "module." prefix
    diff = sum(float((b[k] - a[k]).norm()) ** 2 for k in init) ** 0.5
    return diff / sum(float((a[k] - v.detach()).norm()) ** 2 for k, v in init.items()) ** 0.5


def test_two_processes_match_one_process_and_resume_in_one(tiny_weather, synth_root, tmp_path):
    from drsf_kit.config import load_config
    from drsf_kit.train import fit
    from drsf_kit.utils.io import read_jsonl

    # naive_synth segmentation: its loss is a per-pixel mean and it draws no random numbers, so 2 processes
    # x 1 source image equal 1 process x 2 images, up to float summation order. BatchNorm would still
    # differ (each process normalising its own 2 images, not all 4): train.sync_bn makes the statistics
    # span both processes, as one process sees them. SGD, because AdamW divides each gradient by its own
    # magnitude and so turns float noise in near-zero gradients into lr-sized steps. A constant lr keeps
    # the schedule independent of max_steps: 3 steps on 2 processes + 2 resumed on 1 = 5 steps on 1.
    common = [f"data.root={tiny_weather}", f"data.synth_root={synth_root}", f"output_dir={tmp_path}",
              "variant=naive_synth", "train.optimizer=sgd", "train.lr=0.003", "train.schedule=step",
              "train.warmup_steps=0", "train.log_every=1", "train.checkpoint_every=0", "train.sync_bn=true",
              "eval.max_images=1", "eval.batch_size=2"]
    two = torchrun(["--nproc_per_node=2", "--master_port", str(free_port())],
                   ["--config", str(CONFIGS / "mini_seg.yaml"), *common, "run_name=two", "train.batch_source=1",
                    "train.max_steps=3", "train.lr_scaling=linear", "train.reference_batch=2"])
    one_cfg = load_config(CONFIGS / "mini_seg.yaml", [*common, "run_name=one", "train.batch_source=2",
                                                     "train.max_steps=5", "train.tensorboard=false"])
    one_dir = fit(one_cfg, progress=False)  # runs while the two processes train
    out = finish(two)
    two_dir = tmp_path / "two"
    assert out.count("run folder:") == 1  # only rank 0 reports

    run = json.loads((two_dir / "run.json").read_text())
    assert (run["world_size"], run["global_batch_source"], run["global_batch_images"]) == (2, 2, 4)
    assert run["lr"] == run["base_lr"] == pytest.approx(0.003) and run["lr_scaling"] == "linear"
    assert run["sync_bn"] is True and run["backend"] == "gloo" and run["finished_step"] == 3
    assert run["replica_max_abs_diff"] == 0.0  # DDP kept both replicas bit-identical
    ckpt = torch.load(two_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["sampler"]["sources_consumed"] == 6 and len(ckpt["extra"]["rank_rng"]) == 2

    # TensorBoard: one event file, written by rank 0 only, with losses, lr and per-domain evaluation
    assert len(list(two_dir.glob("events.out.tfevents.*"))) == 1
    assert {"loss/total", "loss/loss_task", "lr", "grad_norm", "eval/daytime_foggy/miou"} <= scalar_tags(two_dir)

    # the 2-process checkpoint continues in 1 process at step 3 with source image 7 of the stream
    # (without `done` the run looks interrupted after its step-3 checkpoint)
    (two_dir / "done").unlink()
    fit(load_config(CONFIGS / "mini_seg.yaml", [*common, "run_name=two", "train.batch_source=2",
                                               "train.max_steps=5", "train.tensorboard=false"]),
        resume=True, progress=False)
    # the resume is a launch in run.json (below); metrics.jsonl holds each step once, as an uninterrupted run
    assert [r["step"] for r in read_jsonl(two_dir / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4, 5]
    assert (two_dir / "done").read_text().strip() == "5"
    assert torch.load(two_dir / "checkpoints" / "last.pt", weights_only=True)["sampler"]["sources_consumed"] == 10
    run = json.loads((two_dir / "run.json").read_text())
    assert [(la["world_size"], la["start_step"], la["start_sources_consumed"]) for la in run["launches"]] == [
        (2, 0, 0), (1, 3, 6)]

    # Step 1 is the same forward pass: the same loss to float precision, and the same gradient up to the
    # order of float32 sums (measured 1e-5). Training through float32 BatchNorm amplifies such
    # differences step by step (one process on 1 vs 2 threads drifts apart too); measured here: losses
    # within 3e-5, weight updates 3% apart after 5 steps, and 5e-13 when both runs compute in float64.
    # Without sync_bn, step 1 is already 2e-3 off in loss and 4e-3 in gradient norm.
    ref, got = loss_rows(one_dir), loss_rows(two_dir)
    assert sorted(got) == sorted(ref) == [1, 2, 3, 4, 5]
    assert got[1]["loss"] == pytest.approx(ref[1]["loss"], rel=1e-6)
    assert got[1]["grad_norm"] == pytest.approx(ref[1]["grad_norm"], rel=1e-4)
    for step in (2, 3, 4, 5):
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-3), step
    assert update_difference(one_cfg, one_dir, two_dir) < 0.1


def test_two_nodes_train_a_detector_with_both_blocks(tiny_weather, synth_root, tmp_path):
    # the multi-node launch, both "nodes" on this machine: two torchrun agents meet at a c10d rendezvous
    # and start one process each. drsf (DFDR + MDSF) on the detector also checks that every parameter
    # gets a gradient (DDP without find_unused_parameters) and that rank > 0 draws its own MDSF mixing.
    # The default design (v3) with its optional adversary on, so that the discriminator is trained under DDP too.
    endpoint = f"127.0.0.1:{free_port()}"
    args = ["--config", str(CONFIGS / "mini_det.yaml"), f"data.root={tiny_weather}", f"data.synth_root={synth_root}",
            f"output_dir={tmp_path}", "run_name=nodes", "variant=drsf", "model.hparams.w_adv=0.1",
            "train.batch_source=1", "train.max_steps=2",
            "train.log_every=1", "train.warmup_steps=1", "eval.max_images=1", "eval.batch_size=2"]
    nodes = [torchrun(["--nnodes=2", f"--node_rank={r}", "--nproc_per_node=1", "--rdzv-backend=c10d",
                       f"--rdzv-endpoint={endpoint}", "--rdzv-id=drsf-test"], args) for r in (0, 1)]
    outs = [finish(p) for p in nodes]
    assert sum(o.count("run folder:") for o in outs) == 1
    run_dir = tmp_path / "nodes"
    run = json.loads((run_dir / "run.json").read_text())
    assert (run["world_size"], run["nodes"], run["processes_per_node"]) == (2, 2, 1)
    assert run["replica_max_abs_diff"] == 0.0 and (run_dir / "done").is_file()
    rows = loss_rows(run_dir)
    assert sorted(rows) == [1, 2] and all(math.isfinite(r["loss"]) for r in rows.values())
    assert {"loss_align", "loss_rea", "loss_adv", "stats/gate_mean", "stats/disc_acc"} <= set(rows[2])
    states = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["extra"]["rank_rng"]
    assert not torch.equal(states[0]["generator"], states[1]["generator"])  # each rank mixes its own way
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    tags = scalar_tags(run_dir)
    assert {"loss/loss_adv", "stats/gate_mean", "stats/disc_acc", "lr", "eval/night_sunny/map50_voc07"} <= tags
