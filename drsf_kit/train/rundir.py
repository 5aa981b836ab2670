"""The run folder: the one module that knows its layout, its identity, its lock and its bookkeeping.

``<output_dir>/<run name>/`` holds::

    config.json      the resolved config (``config_to_dict``)
    run.json         every launch: processes, batches, learning rate, config hash
    metrics.jsonl    one row per logged step or event, keyed by (step, event)
    results.jsonl    tidy evaluation rows, keyed by everything but the value
    results_capped.jsonl  rows of quick evaluations on fewer images (``drsf eval --max-images N``)
    checkpoints/     step_NNNNNNNN.pt (the last ``train.keep_checkpoints``) and last.pt (the newest)
    done             the finished step; written last
    lock             pid and host of the process writing into the folder

A run is identified by its folder and by a hash of its resolved config without the bookkeeping keys
(``IDENTITY_EXCLUDED``: where the run lives, how often it logs); resuming with another config is
refused with the differing keys named, except for ``RESUMABLE`` keys such as ``train.max_steps``.
Rows are keyed so that replaying steps after a kill never duplicates them: on resume the metrics
after the checkpoint's step are dropped, and results rows of the same key are replaced.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from drsf_kit.errors import ConfigError, DataError, RunInUseError
from drsf_kit.models.hparams import LEGACY_METHOD, pin_method
from drsf_kit.models.variants import VARIANTS
from drsf_kit.train.checkpoint import load_checkpoint, save_checkpoint
from drsf_kit.utils.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from drsf_kit.utils.lock import RunLock, _pid_alive  # noqa: F401  (the lock lives with the shared helpers)

CONFIG = "config.json"
RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
RESULTS = "results.jsonl"
CAPPED_RESULTS = "results_capped.jsonl"  # `drsf eval --max-images N`: quick looks, apart from the results
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
DONE = "done"
LOCK = "lock"
STEP_PREFIX = "step_"
VALIDATION_PREFIX = "validation_"  # the protocol's validation_<level>.json
PROTOCOL_TIME = "protocol_time.json"

# keys that say where a run lives or how it reports, not what it trains: not part of its identity
IDENTITY_EXCLUDED = frozenset({
    "output_dir", "run_name", "device", "data.root", "data.synth_root", "data.num_workers",
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.tensorboard",
})
# keys a resume may change besides those: a longer run, another evaluation cadence, the NaN test hook,
# and how the global batch is split over another number of processes (docs/scaling.md)
RESUMABLE = IDENTITY_EXCLUDED | {
    "train.max_steps", "train.eval_every", "train.debug_nan_at_step", "train.batch_source", "train.lr_scaling",
    "train.reference_batch", "train.sync_bn", "train.find_unused_parameters", "train.amp", "train.amp_dtype",
    "train.accumulate", "train.cudnn_benchmark", "train.channels_last", "train.compile",
}
# row fields that change from one identical run to the next (wall-clock), left out of row keys
TIMING_FIELDS = frozenset({"time", "sec_per_step", "seconds", "images_per_s", "gpu_mem_gb"})


# ------------------------------------------------------------------------------------------- identity
def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as ``{"train.lr": 0.02, ...}`` (``model.hparams`` stays one value)."""
    flat = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted != "model.hparams":
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = list(value) if isinstance(value, tuple) else value
    return flat


def config_hash(values: dict) -> str:
    """12 hex digits identifying what a config trains (``IDENTITY_EXCLUDED`` keys left out)."""
    flat = {k: v for k, v in flatten(values).items() if k not in IDENTITY_EXCLUDED}
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def config_diff(saved: dict, current: dict, ignore: Iterable[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two config mappings (``ignore``d keys left out)."""
    a, b, skip = flatten(saved), flatten(current), set(ignore)
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k, None) != b.get(k, None))


def describe_diff(saved: dict, current: dict, keys: list[str]) -> str:
    """``key: saved -> current`` for each key, comma-separated (for error messages)."""
    a, b = flatten(saved), flatten(current)
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys)


# ------------------------------------------------------------------------------------------- rows
def metric_key(row: dict) -> tuple:
    """A metrics row's identity: its step and its event (``"step"`` for a training row)."""
    return row.get("step"), row.get("event", "step")


def result_key(row: dict) -> tuple:
    """A results row's identity: every field but the value and wall-clock fields."""
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in row.items()
                        if k != "value" and k not in TIMING_FIELDS))


def finite_state(state: Any) -> bool:
    """No NaN/inf in any floating tensor or float of a (nested) state dict."""
    import torch

    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(finite_state(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(finite_state(v) for v in state)
    if isinstance(state, float):
        return math.isfinite(state)
    return True


# a weight this large overflows float32 once multiplied by an input or by itself (3.4e38): a checkpoint
# holding one is poisoned even though every number in it is finite
MAX_WEIGHT = 1e18


def largest_weight(state: Any) -> float:
    """The largest magnitude of any floating tensor in a (nested) state dict (0.0 when there is none)."""
    import torch

    if isinstance(state, torch.Tensor):
        if not state.is_floating_point() or state.numel() == 0:
            return 0.0
        return float(state.detach().abs().max().float())
    if isinstance(state, dict):
        return max((largest_weight(v) for v in state.values()), default=0.0)
    if isinstance(state, (list, tuple)):
        return max((largest_weight(v) for v in state), default=0.0)
    return 0.0


# ------------------------------------------------------------------------------------------- the folder
class RunDir:
    """One run folder; every reader and writer of the layout goes through it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._metric_keys: set | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # paths
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        """``checkpoints/last.pt``: the newest checkpoint (what evaluation and analysis load)."""
        return self.checkpoints / LAST

    def checkpoint_path(self, step: int) -> Path:
        """Where the checkpoint of ``step`` goes."""
        return self.checkpoints / f"{STEP_PREFIX}{int(step):08d}.pt"

    def validation_path(self, level: str) -> Path:
        """The protocol's training-domain validation rows of this run at fidelity ``level``."""
        return self.path / f"{VALIDATION_PREFIX}{level}.json"

    @property
    def protocol_time_path(self) -> Path:
        """The protocol's timing of this run (training and test, validation)."""
        return self.path / PROTOCOL_TIME

    # state
    def exists(self) -> bool:
        """The folder exists and holds something (besides a lock)."""
        return self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir())

    def is_run(self) -> bool:
        """The folder holds a run (a ``config.json``)."""
        return self.config_path.is_file()

    def is_finished(self) -> bool:
        """The run wrote its ``done`` marker."""
        return (self.path / DONE).is_file()

    def finished_step(self) -> int | None:
        """The step recorded in ``done`` (None when unfinished)."""
        try:
            return int((self.path / DONE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def mark_done(self, step: int) -> None:
        """Write the ``done`` marker (the last file a run writes)."""
        atomic_write_text(self.path / DONE, f"{int(step)}\n")

    def unmark_done(self) -> None:
        """Remove ``done`` (a finished run is continued to a larger ``train.max_steps``)."""
        (self.path / DONE).unlink(missing_ok=True)

    def lock(self) -> RunLock:
        """A ``RunLock`` on this folder (use as a context manager or ``acquire()``)."""
        return RunLock(self.path)

    def clear(self) -> None:
        """Delete everything but the lock (start over in the same folder); refuses a non-run folder."""
        if not self.exists():
            return
        if not self.is_run():
            raise ConfigError(f"{self.path} is not a run folder (no config.json); refusing to delete it")
        for item in self.path.iterdir():
            if item.name == LOCK:
                continue
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        self._metric_keys = None

    # config
    def read_config(self) -> dict | None:
        """The saved config mapping (None when there is none).

        A config saved without a DRSF method (``model.hparams.method``) was written before the kit
        recorded it, when its default was ``LEGACY_METHOD``: the mapping returned names that one.
        """
        if not self.config_path.is_file():
            return None
        try:
            values = json.loads(self.config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(self.config_path, f"not valid JSON ({exc.msg})") from None
        model = values.get("model") if isinstance(values, dict) else None
        if isinstance(model, dict) and values.get("variant") in VARIANTS and isinstance(model.get("hparams", {}), dict):
            model["hparams"] = pin_method(values["variant"], model.get("hparams"), LEGACY_METHOD)
        return values

    def write_config(self, values: dict) -> None:
        """Save the resolved config mapping."""
        atomic_write_json(self.config_path, values)

    def check_same_config(self, current: dict, allowed: Iterable[str] = RESUMABLE, reuse_anyway: bool = False,
                          action: str = "resume") -> list[str]:
        """Refuse (``ConfigError``) when the saved config differs from ``current`` outside ``allowed``.

        Returns the differing keys (empty when the configs agree or nothing is saved yet).
        """
        saved = self.read_config()
        if saved is None:
            return []
        keys = config_diff(saved, current, ignore=allowed)
        if keys and not reuse_anyway:
            raise ConfigError(f"cannot {action} {self.path}: it was run with another config "
                              f"({describe_diff(saved, current, keys)}); choose another run_name or "
                              f"output_dir, or pass --reuse-anyway")
        if not reuse_anyway:
            self.check_same_global_batch(current, action)
        return keys

    def check_same_global_batch(self, current: dict, action: str = "resume",
                                world_size: int | None = None) -> None:
        """Refuse (``ConfigError``) a launch whose global batch (``train.batch_source`` x processes) is
        not the one the run's steps were taken with: a step would then mean another number of images,
        while config.json names one batch for all of them. Another number of processes with the same
        global batch is fine (docs/scaling.md). ``world_size`` defaults to torchrun's ``WORLD_SIZE``."""
        saved = self.read_config()
        if saved is None:
            return
        launches = self.launches()
        before = launches[-1].get("global_batch_source") if launches else None
        if not isinstance(before, int):
            before = int(flatten(saved).get("train.batch_source", 0) or 0)
        processes = int(world_size if world_size is not None else os.environ.get("WORLD_SIZE", "1") or 1)
        batch = int(flatten(current).get("train.batch_source", 0) or 0)
        if before and batch * processes != before:
            raise ConfigError(
                f"cannot {action} {self.path}: its steps were taken with a global batch of {before} source "
                f"images; this launch would take {batch * processes} (train.batch_source={batch} x {processes} "
                f"process{'es' if processes != 1 else ''}), so a step would mean another batch; set "
                f"train.batch_source so that it times the processes is {before}, or pass --reuse-anyway "
                f"(run.json then records each launch's batch)")

    def launches(self) -> list[dict]:
        """The launches ``run.json`` records (one per start or resume; empty when none)."""
        try:
            return list(json.loads(self.run_json.read_text(encoding="utf-8")).get("launches", []))
        except (OSError, ValueError, AttributeError):
            return []

    # metrics
    def metric_rows(self) -> list[dict]:
        """The rows of ``metrics.jsonl`` (empty when none)."""
        return read_jsonl(self.metrics_path) if self.metrics_path.is_file() else []

    def append_metric(self, row: dict) -> bool:
        """Append ``row`` unless a row with its (step, event) key is already there; True when written."""
        if self._metric_keys is None:
            self._metric_keys = {metric_key(r) for r in self.metric_rows()}
        key = metric_key(row)
        if key in self._metric_keys:
            return False
        append_jsonl(self.metrics_path, row)
        self._metric_keys.add(key)
        return True

    def truncate_metrics(self, after_step: int) -> int:
        """Drop the metrics rows of steps after ``after_step`` (about to be replayed); returns how many."""
        rows = self.metric_rows()
        keep = [r for r in rows if isinstance(r.get("step"), int) and r["step"] <= after_step]
        if len(keep) != len(rows) or (self.metrics_path.is_file() and not self.metrics_path.read_bytes().endswith(b"\n")):
            write_jsonl(self.metrics_path, keep)
        self._metric_keys = {metric_key(r) for r in keep}
        return len(rows) - len(keep)

    # results
    def result_rows(self) -> list[dict]:
        """The rows of ``results.jsonl`` (empty when none)."""
        return read_jsonl(self.results_path) if self.results_path.is_file() else []

    @property
    def capped_results_path(self) -> Path:
        """``results_capped.jsonl``: rows of evaluations on fewer images than the run's (quick looks)."""
        return self.path / CAPPED_RESULTS

    def write_results(self, rows: list[dict], capped: bool = False) -> None:
        """Add ``rows`` to ``results.jsonl`` (``results_capped.jsonl`` when ``capped``), replacing any row
        of the same key, in one atomic write."""
        path = self.capped_results_path if capped else self.results_path
        new = {result_key(r): r for r in rows}
        kept = [r for r in (read_jsonl(path) if path.is_file() else []) if result_key(r) not in new]
        write_jsonl(path, kept + list(new.values()))

    # checkpoints
    def checkpoint_files(self) -> list[Path]:
        """Step checkpoints, newest first; ``last.pt`` too when it is a file of its own (an older kit)."""
        files = sorted(self.checkpoints.glob(f"{STEP_PREFIX}*.pt"), reverse=True)
        last = self.last_checkpoint
        if last.is_file() and not any(last.samefile(p) for p in files):
            files = sorted([*files, last], key=_step_of, reverse=True)
        return files

    def save_checkpoint(self, step: int, keep: int, **kwargs) -> Path:
        """Write the checkpoint of ``step`` (``checkpoint.save_checkpoint`` arguments), point ``last.pt``
        at it and delete step checkpoints beyond the newest ``keep``."""
        path = save_checkpoint(self.checkpoint_path(step), step=step, **kwargs)
        tmp = self.checkpoints / f".{LAST}.link"
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)  # last.pt shares the file: no second copy on disk
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, self.last_checkpoint)
        for old in sorted(self.checkpoints.glob(f"{STEP_PREFIX}*.pt"), reverse=True)[max(1, int(keep)):]:
            old.unlink(missing_ok=True)
        return path

    def latest_checkpoint(self, map_location: str = "cpu", say=print) -> tuple[Path, dict] | None:
        """The newest readable checkpoint with finite weights and optimizer state, or None.

        A newer one that cannot be read, holds NaN/inf or a weight too large to step from (``MAX_WEIGHT``)
        is renamed ``*.bad`` and reported through ``say``, naming it; the previous one is tried next.
        """
        for path in self.checkpoint_files():
            try:
                ckpt = load_checkpoint(path, map_location=map_location)
            except DataError as exc:
                problem = exc.problem
            else:
                largest = largest_weight(ckpt["model"])
                if not (finite_state(ckpt["model"]) and finite_state(ckpt.get("optimizer"))):
                    problem = "holds non-finite weights or optimizer state"
                elif largest >= MAX_WEIGHT:
                    problem = (f"holds a weight of magnitude {largest:.3g}, which overflows float32 in the first "
                               f"layer (every step from it would give a NaN loss)")
                else:
                    return path, ckpt
            say(f"note: skipping checkpoint {path}: {problem}; trying the previous one")
            bad = path.replace(path.with_name(path.name + ".bad"))
            if self.last_checkpoint.is_file() and self.last_checkpoint.samefile(bad):
                self.last_checkpoint.unlink()
        return None


def has_results(folder: str | Path) -> bool:
    """Some run below ``folder`` (or ``folder`` itself) holds evaluation rows."""
    folder = Path(folder)
    return folder.is_dir() and any(folder.rglob(RESULTS))


def runs_with_checkpoint(folder: str | Path) -> list[RunDir]:
    """Every run below ``folder`` that holds a newest checkpoint (``checkpoints/last.pt``), sorted by path."""
    return [RunDir(path.parent.parent) for path in sorted(Path(folder).rglob(f"{CHECKPOINTS}/{LAST}"))]


def _step_of(path: Path) -> int:
    name = path.stem
    if name.startswith(STEP_PREFIX):
        return int(name[len(STEP_PREFIX):])

    try:
        return int(load_checkpoint(path)["step"])
    except DataError:
        return -1
