"""The training engine: ``fit(cfg) -> run_dir``, one code path for the CLI, notebooks and tests.

A step draws B source images with one twin each (from a randomly drawn pseudo-domain; none for
``source_only``), sums the model's already-weighted loss terms, checks that every term is finite,
clips gradients and steps the optimizer and the warm-up + step/cosine/one-cycle schedule. The run
folder ``<output_dir>/<run name>/`` (its layout, lock and keyed rows: ``drsf_kit.train.rundir``) receives
``config.json``, ``metrics.jsonl`` (and TensorBoard event files), a checkpoint every
``train.checkpoint_every`` steps and at the end, ``results.jsonl`` (tidy rows from scoring the source
test split and every target domain) and ``done``. A resume continues from the newest good checkpoint and
drops the metrics rows after it, so the files end up as an uninterrupted run's.

Under torchrun (``drsf_kit.train.distributed``) every process trains on its own ``batch_source`` source
images per step inside DistributedDataParallel and scores its share of the evaluation images
(``drsf_kit.train.dist_eval``); only rank 0 logs, checkpoints and writes results, and the checkpoint
holds the bare model and the number of global source images consumed, so a run resumes on any number
of processes. ``train.accumulate``, ``train.amp_dtype`` and the throughput switches are described in
``drsf_kit.train.accumulation``, ``precision`` and ``throughput``. One process runs exactly as without torchrun.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from drsf_kit.config import RunConfig, TrainConfig, check_paths, config_to_dict, validate_config
from drsf_kit.errors import ConfigError, DrsfError, NonFiniteLossError
from drsf_kit.train.builders import build_model_for  # noqa: F401  (re-exported: engine.build_model_for)
from drsf_kit.train.checkpoint import restore_training_state
from drsf_kit.train.precision import autocast, resolve_amp_dtype
from drsf_kit.train.sync_bn import convert_sync_batchnorm
from drsf_kit.data.twins import TwinBatch, TwinCollate
from drsf_kit.train.data import build_train_set
from drsf_kit.train.samplers import TwinBatchSampler
from drsf_kit.train.distributed import (
    TwinDistributedSampler,
    all_reduce_mean,
    any_process,
    barrier,
    broadcast_object,
    cleanup,
    effective_lr,
    finish_launch,
    gather_objects,
    init_distributed,
    launch_record,
    process_rng_state,
    replica_max_difference,
    seed_process,
    wrap_model,
    write_launch,
)
from drsf_kit.train.evaluate import evaluate_model, format_summary, write_run_tables
from drsf_kit.train.rundir import DONE, METRICS, RunDir, RunLock, finite_state, config_hash  # noqa: F401
from drsf_kit.train.memory import estimate_memory, format_estimate
from drsf_kit.train.precision import grad_scaler
from drsf_kit.train.accumulation import split_batch
from drsf_kit.train.throughput import StepMeter, configure_backends, maybe_compile, prepare_model
from drsf_kit.utils.runtime import seed_everything


# ------------------------------------------------------------------------------------------- building
def build_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW; biases and normalisation weights get no weight decay (it only shrinks their scale)."""
    decay, no_decay = [], []
    # parameters with a learning-rate multiplier of their own (the MDSF v2 discriminator) get extra groups,
    # whose gradients are also clipped on their own (``train_step``)
    mults = getattr(model, "lr_multipliers", dict)()
    own: dict[float, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and name in mults:
            own.setdefault(mults[name], []).append(p)
        elif p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups += [{"params": ps, "weight_decay": tcfg.weight_decay, "lr": tcfg.lr * m, "lr_mult": m,
                "clip_alone": True} for m, ps in own.items()]
    if tcfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=tcfg.lr, momentum=tcfg.momentum)
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.momentum, 0.999))


class LRFactor:
    """Learning-rate factor for step ``s``: linear warm-up, then step decay, cosine or one-cycle.

    A plain object (not a closure) so ``LambdaLR.state_dict`` stores its settings with the checkpoint.
    """

    def __init__(self, tcfg: TrainConfig):
        self.schedule, self.max_steps = tcfg.schedule, int(tcfg.max_steps)
        self.warmup = int(tcfg.warmup_steps)
        self.start = float(tcfg.warmup_factor)
        if self.schedule == "onecycle":
            # one-cycle: a longer ramp from lr/25, then cosine down to lr/1e4 (torch's OneCycleLR shape)
            self.warmup = self.warmup or max(1, int(0.3 * self.max_steps))
            self.start, self.floor = 1.0 / 25.0, 1e-4
        else:
            self.floor = 0.0
        self.milestones, self.gamma = tuple(tcfg.lr_steps), float(tcfg.lr_gamma)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.start + (1.0 - self.start) * step / self.warmup
        if self.schedule == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        span = max(1, self.max_steps - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def _follow_current_schedule(scheduler, tcfg: TrainConfig, step: int) -> None:
    """After a resume, the schedule of the *current* config applies (e.g. a longer max_steps)."""
    factor = LRFactor(tcfg)
    scheduler.lr_lambdas = [factor for _ in scheduler.optimizer.param_groups]
    scheduler.base_lrs = [tcfg.lr * g.get("lr_mult", 1.0) for g in scheduler.optimizer.param_groups]
    for group in scheduler.optimizer.param_groups:
        group["lr"] = tcfg.lr * group.get("lr_mult", 1.0) * factor(step)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


def build_scheduler(optimizer: torch.optim.Optimizer, tcfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over ``LRFactor``; stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(tcfg))


# ------------------------------------------------------------------------------------------- one step
@dataclass
class StepResult:
    """What one optimizer step produced (plain floats, ready to log)."""

    step: int  # 1-based number of the step just taken
    losses: dict[str, float]
    loss: float
    lr: float
    grad_norm: float
    stats: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    images: int = 0  # images in the step (sources and twins)
    images_per_s: float = 0.0
    gpu_mem_gb: float | None = None  # peak CUDA memory of the step; None off CUDA


def _autocast(device: torch.device, amp: bool, amp_dtype: str):
    return autocast(device, resolve_amp_dtype(amp, amp_dtype, device))


def _clip(params: list, max_norm: float) -> float:
    """Total gradient norm of ``params`` before clipping; clipped to ``max_norm`` when it is > 0."""
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))) if params else 0.0


def train_step(model, batch: TwinBatch, optimizer, device: torch.device, *, step: int, progress: float,
               scheduler=None, scaler=None, generator: torch.Generator | None = None, grad_clip: float = 0.0,
               amp: bool = False, amp_dtype: str = "auto", nan_at_step: int = 0, accumulate: int = 1) -> StepResult:
    """Forward, finiteness check, backward, clip, optimizer and scheduler step for one batch.

    Args:
        step: 1-based number of this step (named in a non-finite-loss error).
        progress: training progress in [0, 1] (drives MDSF's gradient-reversal ramp).
        nan_at_step: test hook; the first loss term becomes NaN at this step.
        accumulate: run the batch as this many micro-batches (``drsf_kit.train.accumulation``), one
            backward each, before the single optimizer step; the logged losses are their mean.
    Raises:
        NonFiniteLossError: naming the step and the first non-finite loss term; nothing is updated.
    """
    meter = StepMeter(device)
    t0 = meter.start()
    optimizer.zero_grad(set_to_none=True)
    pieces = split_batch(batch, accumulate)
    summed = None
    for k, piece in enumerate(pieces):
        piece = piece.to(device)
        # DDP: gradients are all-reduced once, on the last piece's backward
        sync = contextlib.nullcontext() if k == len(pieces) - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with _autocast(device, amp, amp_dtype):
                loss_dict = model(piece.images, piece.targets, domains=piece.domains, pairs=piece.pairs,
                                  progress=progress, generator=generator)
            if nan_at_step and step == nan_at_step:
                first = next(iter(loss_dict))
                loss_dict = {**loss_dict, first: loss_dict[first] * float("nan")}
            names = list(loss_dict)
            values = torch.stack([loss_dict[n].detach().float().reshape(()) for n in names]).cpu()  # one sync
            _check_finite(step, names, values)
            total = sum(loss_dict.values())
            if len(pieces) > 1:
                total = total / len(pieces)
            if scaler is not None and scaler.is_enabled():
                scaler.scale(total).backward()
            else:
                total.backward()
        summed = values if summed is None else summed + values
    values = summed / len(pieces) if len(pieces) > 1 else summed
    if scaler is not None and scaler.is_enabled():
        scaler.unscale_(optimizer)
    # A group marked clip_alone (the MDSF discriminator) is clipped by itself: an adversary whose gradient
    # spikes (it is confidently wrong for a few steps) must not scale down the task's gradient with it.
    params = [p for g in optimizer.param_groups if not g.get("clip_alone") for p in g["params"] if p.grad is not None]
    alone = [p for g in optimizer.param_groups if g.get("clip_alone") for p in g["params"] if p.grad is not None]
    grad_norm = _clip(params, grad_clip)
    alone_norm = _clip(alone, grad_clip) if alone else None
    if scaler is not None and scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    lr = optimizer.param_groups[0]["lr"]
    if scheduler is not None:
        scheduler.step()
    stats = dict(getattr(getattr(model, "module", model), "last_stats", {}) or {})
    if alone_norm is not None:
        stats["disc_grad_norm"] = alone_norm
    seconds = time.perf_counter() - t0
    return StepResult(step, dict(zip(names, values.tolist())), float(values.sum()), lr, grad_norm, stats,
                      seconds, images=len(batch), images_per_s=meter.images_per_second(len(batch), seconds),
                      gpu_mem_gb=meter.memory_gb())


def _check_finite(step: int, names: list[str], values: torch.Tensor) -> None:
    """Raise ``NonFiniteLossError`` on every process when any process has a non-finite loss term."""
    finite = torch.isfinite(values)
    all_finite = bool(finite.all())
    # every process must stop at the same step: one leaving alone would hang the others in DDP
    if any_process(not all_finite) and all_finite:
        exc = NonFiniteLossError(f"step {step}: a loss term is non-finite on another process")
        exc.step, exc.term = step, None
        raise exc
    if not all_finite:
        bad = names[int((~finite).nonzero()[0])]
        exc = NonFiniteLossError(f"step {step}: loss term {bad!r} is {values[names.index(bad)].item()} "
                                 f"(terms: {', '.join(f'{k}={v:.4g}' for k, v in zip(names, values.tolist()))}); "
                                 "lower train.lr, raise train.warmup_steps or set train.grad_clip")
        exc.step, exc.term = step, bad
        raise exc


def train_one_epoch(model, loader: Iterable[TwinBatch], optimizer, device: torch.device, *, start_step: int = 0,
                    total_steps: int, scheduler=None, scaler=None, generator: torch.Generator | None = None,
                    tcfg: TrainConfig | None = None, on_step: Callable[[StepResult], None] | None = None,
                    progress: bool = True) -> int:
    """Train over every batch of ``loader`` (one pass), calling ``on_step`` after each step.

    Args:
        start_step: steps already taken (numbering continues from it).
        total_steps: the run's ``max_steps`` (for the progress fraction and the bar).
        tcfg: clipping, AMP and the NaN test hook (defaults: ``TrainConfig()``).
        on_step: logging / checkpointing / evaluation callback.
    Returns:
        The number of steps taken so far (``start_step`` + batches consumed).
    """
    tcfg = tcfg or TrainConfig()
    model.train()
    step = start_step
    bar = tqdm(total=total_steps, initial=start_step, desc="train", disable=not progress, dynamic_ncols=True)
    try:
        for batch in loader:
            step += 1
            result = train_step(model, batch, optimizer, device, step=step, progress=(step - 1) / max(1, total_steps),
                                scheduler=scheduler, scaler=scaler, generator=generator, grad_clip=tcfg.grad_clip,
                                amp=tcfg.amp, amp_dtype=tcfg.amp_dtype, nan_at_step=tcfg.debug_nan_at_step,
                                accumulate=tcfg.accumulate)
            bar.update(1)
            bar.set_postfix({"loss": f"{result.loss:.3f}",
                             **{k.replace("loss_", ""): f"{v:.3f}" for k, v in result.losses.items()}}, refresh=False)
            if on_step is not None:
                on_step(result)
    finally:
        bar.close()
    return step


# ------------------------------------------------------------------------------------------- logging
class RunLogger:
    """metrics.jsonl rows (keyed by step and event: a replayed row is not written twice) and TensorBoard
    scalars; a no-op outside the main process."""

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool = True, start_step: int = 0):
        self.run_dir, self.enabled, self.writer = run_dir, enabled, None
        self.run = RunDir(run_dir)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional: metrics.jsonl holds the same numbers
                SummaryWriter = None
            if SummaryWriter is not None:
                # purge_step: events after the resumed step (replayed now) are dropped, not doubled
                self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step or None)

    def row(self, row: dict) -> None:
        """Append one metrics row."""
        if self.enabled:
            self.run.append_metric({"time": round(time.time(), 3), **row})

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """TensorBoard scalars (skipped without a writer)."""
        if self.writer is not None:
            for tag, value in values.items():
                if value is not None and math.isfinite(value):
                    self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ------------------------------------------------------------------------------------------- fit
def prepare_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> Path:
    """Create the run folder; refuse to mix a new run into an old one unless resuming or overwriting."""
    run = RunDir(cfg.run_dir)
    if run.exists() and not resume:
        if not overwrite:
            raise ConfigError(f"run folder {run.path} already holds a run; pass --resume to continue it, "
                              f"--overwrite to start over, or choose another run_name/output_dir")
        run.clear()
    run.path.mkdir(parents=True, exist_ok=True)
    return run.path


def open_run(cfg: RunConfig, resume: bool, overwrite: bool = False, start_over: bool = False,
             reuse_anyway: bool = False) -> tuple[RunLock, dict | None, bool]:
    """Lock the run folder and decide where training starts (the main process only).

    Returns:
        ``(lock, checkpoint or None, finished)``; ``finished`` means there is nothing to train.
    Raises:
        RunInUseError: another live process writes into the folder.
        ConfigError: a run in the way, a saved config that differs (the keys named), or ``resume``
            without a usable checkpoint and without ``start_over``.
    """
    run = RunDir(cfg.run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    lock = run.lock().acquire()
    try:
        if not resume:
            prepare_run_dir(cfg, resume, overwrite)
            return lock, None, False
        run.check_same_config(config_to_dict(cfg), reuse_anyway=reuse_anyway)
        done_step = run.finished_step()
        if done_step is not None and done_step >= cfg.train.max_steps:
            return lock, None, True
        found = run.latest_checkpoint()
        if found is None:
            if not start_over:
                raise ConfigError(f"nothing to resume in {run.path}: no usable checkpoint; pass --start-over "
                                  f"to train it from step 0 in the same folder")
            run.clear()
            return lock, None, False
        path, ckpt = found
        if ckpt["config"].get("variant") != cfg.variant or ckpt["config"].get("task") != cfg.task:
            raise ConfigError(f"{path} belongs to a {ckpt['config'].get('task')}/{ckpt['config'].get('variant')} "
                              f"run, not {cfg.task}/{cfg.variant}")
        run.unmark_done()  # a finished run asked for more steps continues
        run.truncate_metrics(int(ckpt["step"]))  # the steps after the checkpoint are replayed
        return lock, ckpt, False
    except BaseException:
        lock.release()
        raise


def fit(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        start_over: bool = False, reuse_anyway: bool = False) -> Path:
    """Train ``cfg`` to ``train.max_steps``, evaluate, and return the run folder.

    Args:
        cfg: the run config (``drsf_kit.config.load_config``).
        resume: continue from the newest good checkpoint (a finished run is returned as is unless
            ``train.max_steps`` grew); without one, refused unless ``start_over``.
        overwrite: delete an existing run folder of the same name first.
        progress: show tqdm bars.
        start_over: with ``resume``, train from step 0 in the folder when there is nothing to resume.
        reuse_anyway: with ``resume``, continue even though the saved config differs.
    Raises:
        ConfigError: bad names, a missing data folder, a run folder in the way, a differing config.
        RunInUseError: another live process writes into the run folder.
        NonFiniteLossError: a NaN/inf loss term (the row lands in metrics.jsonl; last.pt stays intact).

    Started by torchrun, every process calls ``fit`` and joins the process group here (see
    ``drsf_kit.train.distributed``); the group is closed again when ``fit`` created it.
    """
    validate_config(cfg)
    check_paths(cfg)
    ctx = init_distributed(device=cfg.device)  # torchrun's environment; nothing to do for one process
    lock, error, opened = None, None, (None, False)
    try:
        if ctx.is_main:  # rank 0 owns the folder; the others learn its decision (or its refusal)
            try:
                lock, ckpt, finished = open_run(cfg, resume, overwrite, start_over, reuse_anyway)
                opened = (ckpt, finished)
            except DrsfError as exc:
                error = exc
        error = broadcast_object(error)
        if error is not None:
            raise error
        ckpt, finished = broadcast_object(opened)  # rank 0 hands the checkpoint to the others
        if finished:
            return cfg.run_dir
        return _fit(cfg, ctx, ckpt, progress)
    finally:
        if lock is not None:
            lock.release()
        cleanup(ctx)


def _fit(cfg: RunConfig, ctx, ckpt: dict | None, progress: bool) -> Path:
    main = ctx.is_main
    progress = progress and main
    run_dir = cfg.run_dir
    run = RunDir(run_dir)
    device = ctx.device
    seed_everything(cfg.seed)
    train_set = build_train_set(cfg, progress=progress)
    model = build_model_for(cfg).to(device)
    amp_dtype = resolve_amp_dtype(cfg.train.amp, cfg.train.amp_dtype, device)
    estimate = None
    if main and ckpt is None:  # a fresh run only; before sync_bn: the probe must not wait for other ranks
        image_hw = tuple(train_set.source[0][0].shape[-2:]) if cfg.task == "seg" and not cfg.train.crop_size else None
        estimate = estimate_memory(model, cfg, device, amp_dtype, image_hw)
        if progress:
            print(f"[train] {format_estimate(estimate)}")
    if cfg.train.sync_bn and ctx.distributed:
        model = convert_sync_batchnorm(model, device)  # same parameters and names: checkpoints load either way
    # the learning rate for the global batch (batch_source x processes), per train.lr_scaling
    tcfg = dataclasses.replace(cfg.train, lr=effective_lr(cfg.train, ctx.world_size))
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg)
    scaler = grad_scaler(device, amp_dtype)  # enabled for fp16 only
    configure_backends(cfg.train, device)
    prepare_model(model, cfg.train, device)
    generator = torch.Generator().manual_seed(cfg.seed)  # MDSF's mixing draws, checkpointed with the rest
    start, consumed, rank_rng = 0, 0, None
    if ckpt is not None:  # read by rank 0 in open_run: no shared folder needed for a resume
        start = restore_training_state(ckpt, model=model, optimizer=optimizer, scheduler=scheduler,
                                       scaler=scaler, generator=generator)
        _follow_current_schedule(scheduler, tcfg, start)
        consumed = TwinDistributedSampler.position(ckpt.get("sampler"))
        rank_rng = (ckpt.get("extra") or {}).get("rank_rng")
    seed_process(ctx, cfg.seed, start, generator, rank_rng)  # ranks > 0 draw their own random numbers
    use_twins = cfg.spec.use_synth
    if main:
        run.write_config(config_to_dict(cfg))
        record = {**launch_record(ctx, cfg, tcfg.lr, start, consumed, use_twins), "config_hash": config_hash(config_to_dict(cfg))}
        write_launch(run_dir, record, resume=ckpt is not None)
    stream = TwinBatchSampler(train_set.twin_table, cfg.train.batch_source, cfg.seed, use_twins=use_twins,
                              hflip=cfg.train.hflip, twins_per_source=getattr(model, "twins_per_source", 1))
    # this process's slice of every global batch, from the next unseen source image of the stream
    sampler = TwinDistributedSampler(stream, cfg.train.batch_source, rank=ctx.rank, world_size=ctx.world_size,
                                     start=consumed, steps=max(0, cfg.train.max_steps - start))
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=TwinCollate(cfg.task),
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                        # its own generator: creating the iterator must not draw from the global RNG, or a
                        # resumed run would be one draw off the uninterrupted one
                        generator=torch.Generator().manual_seed(cfg.seed))
    log = RunLogger(run_dir, cfg.train.tensorboard, enabled=main, start_step=start)
    if main and start == 0:
        log.row({"step": 0, "event": "start", "device": str(device), "world_size": ctx.world_size,
                 "global_batch_source": sampler.global_batch, "train_images": len(train_set),
                 "twin_coverage": train_set.coverage(), "trainable_params": sum(
                     p.numel() for p in model.parameters() if p.requires_grad), "memory_estimate": estimate})
    # a resume is recorded in run.json's launches, not here: metrics.jsonl stays an uninterrupted run's

    def checkpoint(step: int) -> None:
        # every process's random state, so the same number of processes continues exactly
        extra = {"rank_rng": gather_objects(process_rng_state(generator))} if ctx.distributed else None
        if main and not finite_state(model.state_dict()):
            # keep the previous good checkpoint the newest: a poisoned one would break every resume
            print(f"[train] step {step}: the weights hold NaN/inf; checkpoint not written", flush=True)
        elif main:
            run.save_checkpoint(step, keep=cfg.train.keep_checkpoints, model=model, optimizer=optimizer,
                                scheduler=scheduler, scaler=scaler, config=config_to_dict(cfg),
                                sampler_state=sampler.state_dict(step - start), generator=generator, extra=extra)
        barrier()

    def on_step(r: StepResult) -> None:
        t = cfg.train
        # the rows logged depend on the step alone (not on where a resume began): a resumed run logs
        # exactly the rows of an uninterrupted one
        if r.step % max(1, t.log_every) == 0 or r.step == t.max_steps or r.step == 1:
            # losses and statistics averaged over processes (every process takes part in the reduction)
            mean = all_reduce_mean({"loss": r.loss, **r.losses, **{f"stats/{k}": v for k, v in r.stats.items()}})
            losses = {k: mean[k] for k in r.losses}
            stats = {k: v for k, v in mean.items() if k.startswith("stats/")}
            # speed and memory are this process's own (images/s x processes = the run's throughput)
            speed = {"images_per_s": round(r.images_per_s, 3), "gpu_mem_gb": r.gpu_mem_gb}
            log.row({"step": r.step, "loss": mean["loss"], **losses, "lr": r.lr, "grad_norm": r.grad_norm,
                     "sec_per_step": r.seconds, **speed, **stats})
            log.scalars(r.step, {**{f"loss/{k}": v for k, v in losses.items()}, "loss/total": mean["loss"],
                                 "lr": r.lr, "grad_norm": r.grad_norm, "speed/images_per_s": r.images_per_s,
                                 "speed/gpu_mem_gb": r.gpu_mem_gb, **stats})
        if t.eval_every and r.step % t.eval_every == 0 and r.step < t.max_steps:
            # every process scores its share of the images; rank 0 gets the totals (train.dist_eval)
            _, summary = evaluate_model(model, cfg, device=device, step=r.step, progress=False)
            if main:
                log.row({"step": r.step, "event": "eval", "protocol": cfg.eval_protocol(), "eval": summary})
                log.scalars(r.step, {f"eval/{d}/{m}": v for d, vals in summary.items() for m, v in vals.items()})
            model.train()
            barrier()
        # after this step's rows: a resume from it finds them all and replays none
        if t.checkpoint_every and r.step % t.checkpoint_every == 0 and r.step < t.max_steps:
            checkpoint(r.step)

    t0 = time.perf_counter()
    ddp = wrap_model(model, ctx, cfg.train.find_unused_parameters)  # `model` stays the bare one
    ddp = maybe_compile(ddp, cfg.train, device)  # train.compile on CUDA; checkpoints keep the bare names
    try:
        step = train_one_epoch(ddp, loader, optimizer, device, start_step=start, total_steps=cfg.train.max_steps,
                               scheduler=scheduler, scaler=scaler, generator=generator, tcfg=cfg.train,
                               on_step=on_step, progress=progress)
    except NonFiniteLossError as exc:
        log.row({"step": getattr(exc, "step", None), "event": "non_finite_loss", "term": getattr(exc, "term", None),
                 "error": str(exc)})
        log.close()
        raise
    except BaseException:
        log.close()
        raise
    checkpoint(step)
    drift = replica_max_difference(model)  # every process takes part; 0.0 when the replicas agree
    if main:
        finish_launch(run_dir, finished_step=step, train_seconds=round(time.perf_counter() - t0, 3),
                      replica_max_abs_diff=drift)
    # every process scores its share of the images; rank 0 gets the rows (train.dist_eval)
    rows, summary = evaluate_model(model, cfg, device=device, step=step, progress=progress)
    if main:
        run.write_results(rows)  # keyed: an evaluation replayed after a kill replaces its rows
        log.row({"step": step, "event": "eval", "protocol": cfg.eval_protocol(), "eval": summary})
        log.scalars(step, {f"eval/{d}/{m}": v for d, vals in summary.items() for m, v in vals.items()})
        write_run_tables(run_dir, cfg.task, cfg.eval_protocol(), cfg.data.source_domain)
        health = model.health_summary() if hasattr(model, "health_summary") else None
        if health is not None:  # e.g. a discriminator that stayed at the prior says so here
            log.row({"step": step, "event": "health", **health})
            if progress:
                print(f"[train] {cfg.name}: {health['text']}")
        if progress:
            print(f"[train] {cfg.name}: {step} steps; {cfg.eval_protocol()} protocol\n{format_summary(summary, cfg.task)}")
        run.mark_done(step)
    log.close()
    barrier()  # the other processes wait for rank 0's tables and done marker
    return run_dir
