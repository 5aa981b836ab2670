"""What the notebooks call: their parameters as run-config keys, where things go, saving figures and tables.

Every function a notebook calls lives here (the notebooks define nothing); the data, pseudo-domains and
runs come from ``drsf_kit.workflows.runs``.

Every notebook's ``parameters`` cell sets upper-case names and then calls::

    ctx = nbk.setup(SMOKE=SMOKE, DATA_ROOT=DATA_ROOT, ..., OUTPUT_DIR=OUTPUT_DIR)

The names that mean a run-config key (``PARAMETER_KEYS``: ``VARIANT`` is ``variant``, ``MAX_STEPS`` is
``train.max_steps``, ``INIT_WEIGHTS`` is ``model.init_weights`` ...) are checked by
``config.py`` itself, so a bad value gets the same message as in a YAML file, prefixed with the
parameter's name. Data, pseudo-domains and runs are made by ``drsf_kit.workflows.runs`` (the one path
the demo, the app and the benchmarks use too); the helpers here only add the notebook's folders.

``setup`` resolves relative paths against the project root (the folder holding ``pyproject.toml``, so a
notebook behaves the same whether Jupyter starts it in ``notebooks/`` or papermill in the root), and
decides where outputs go:

- ``OUTPUT_DIR`` set (``drsf batch`` sets it per grid point): everything the notebook writes goes below
  it (``figures/``, ``runs/``, and with ``SMOKE`` the tiny data too).
- ``SMOKE=True`` without ``OUTPUT_DIR``: below ``runs/smoke/``, so a quick check never overwrites the
  demo's data, runs or figures.
- otherwise: ``figures/`` of the project and the given data and runs folders.

With ``SMOKE=True`` the notebooks work on a tiny dataset rendered for the purpose (``DATA_ROOT`` and
``SYNTH_ROOT`` are then ignored) and train for a few steps: minutes become seconds. The training
notebooks (04, 05) make runs; the others only read them and say which command makes a missing one.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from drsf_kit import __version__
from drsf_kit.config import DEFAULT_DATA_ROOT, DEFAULT_RUNS_DIR, DEFAULT_SYNTH_ROOT, config_from_dict, config_to_dict
from drsf_kit.data import voc
from drsf_kit.data.classes import DWD_DOMAINS
from drsf_kit.data.dwd import DWDDetection
from drsf_kit.data.paired import PairedSynthetic
from drsf_kit.errors import ConfigError
from drsf_kit.evaluation.results import HEADLINE_METRIC, load_results, read_rows_file
from drsf_kit.evaluation.tables import domain_table, frame_to_markdown, protocol_comparison, to_markdown
from drsf_kit.models import VARIANTS, build_model
from drsf_kit.synth.fidelity import parse_level
from drsf_kit.synth.procedural import apply_domain
from drsf_kit.synth.runner import load_source_item
from drsf_kit.train import evaluate_run
from drsf_kit.train.evaluate import read_run_config
from drsf_kit.train.rundir import RunDir
from drsf_kit.utils.io import atomic_write_bytes, atomic_write_text
from drsf_kit.utils.runtime import default_num_threads, resolve_device
from drsf_kit.viz import overview
from drsf_kit.viz.plots import save_figure as write_figure
from drsf_kit.workflows import runs
from drsf_kit.workflows.runs import project_root, resolve_path

SMOKE_DIRNAME = "runs/smoke"
FIGURE_FORMATS = ("png", "pdf", "svg")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CURRENT: dict[str, "NotebookContext"] = {}


# ----------------------------------------------------------------------------------------- parameters
# Parameters that are run-config keys: config.py checks them (and the runs use them under that key).
PARAMETER_KEYS = {
    "TASK": "task", "VARIANT": "variant", "SEED": "seed", "DEVICE": "device", "RUNS_DIR": "output_dir",
    "DATA_ROOT": "data.root", "SYNTH_ROOT": "data.synth_root", "PROTOCOL": "data.protocol",
    "MAX_STEPS": "train.max_steps", "BATCH_SOURCE": "train.batch_source", "LR": "train.lr",
    "PRETRAINED_BACKBONE": "model.pretrained_backbone", "INIT_WEIGHTS": "model.init_weights",
}
# list parameters whose every item is a run-config key's value
LIST_KEYS = {"VARIANTS": "variant", "SEEDS": "seed"}
KEEP_CONFIG = {"MAX_STEPS": 0}  # a parameter at this value keeps the config's own (nothing to check)


def _as_list(name: str, value: Any) -> list:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        value = [value]
    if not value:
        raise ConfigError(f"parameter {name}={value!r}: expected a non-empty list")
    return list(value)


def _check_key(name: str, key: str, value: Any) -> Any:
    """``value`` as config.py reads it under ``key`` (a nested mapping through ``config_from_dict``)."""
    tree: dict = {}
    node = tree
    *sections, last = key.split(".")
    for section in sections:
        node = node.setdefault(section, {})
    node[last] = value
    try:
        cfg = config_from_dict(tree)
    except ConfigError as exc:
        raise ConfigError(f"parameter {name}={value!r}: {exc}") from None
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"parameter {name}={value!r}: expected True or False")
    return value


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"parameter {name}={value!r}: expected an integer >= 1")
    return value


def _check_jobs(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"parameter {name}={value!r}: expected an integer >= 0 (0: one run per CPU core, one on a GPU)")
    return value


def _check_domains(name: str, value: Any) -> list[str]:
    value, valid = _as_list(name, value), DWD_DOMAINS
    bad = [v for v in value if v not in valid]
    if bad:
        raise ConfigError(f"parameter {name}: unknown value(s) {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
    return value


# notebook-only parameters (no run-config key): their own small checks
OWN_CHECKS = {
    "SMOKE": _check_bool, "REUSE_ANYWAY": _check_bool, "N_IMAGES": _check_count, "JOBS": _check_jobs,
    "DOMAINS": _check_domains, "SYNTH_DOMAINS": _check_domains, "EVAL_DOMAINS": _check_domains,
    "OUTPUT_DIR": lambda name, value: "" if value in (None, "") else str(_check_key(name, "output_dir", value)),
}


def check_parameters(**params: Any) -> dict[str, Any]:
    """Check every known parameter; names must be upper case.

    Run-config parameters (``PARAMETER_KEYS``, ``LIST_KEYS``) are read by ``config.py``; the
    notebook-only ones by ``OWN_CHECKS``. Returns the parameters with normalised values (a comma string
    for a list parameter becomes a list). Raises ``ConfigError`` naming the parameter and the problem.
    """
    out = {}
    for name, value in params.items():
        if name != name.upper() or not name.isidentifier():
            raise ConfigError(f"parameter {name!r}: notebook parameters are UPPER_CASE identifiers")
        if name in PARAMETER_KEYS and not (name in KEEP_CONFIG and value == KEEP_CONFIG[name]):
            checked = _check_key(name, PARAMETER_KEYS[name], value)
            out[name] = value if isinstance(value, (str, os.PathLike)) else checked
        elif name in LIST_KEYS:
            out[name] = [_check_key(name, LIST_KEYS[name], v) for v in _as_list(name, value)]
        elif name in OWN_CHECKS:
            out[name] = OWN_CHECKS[name](name, value)
        else:
            out[name] = value
    return out


# -------------------------------------------------------------------------------------------- the context
@dataclass(frozen=True)
class NotebookContext:
    """Where one notebook run reads and writes, and its checked parameters (``params``)."""

    smoke: bool  # tiny sizes and a tiny dataset; never touches the demo's folders
    seed: int  # seeds data sampling and training
    device: str  # auto | cpu | cuda[:N]
    root: Path  # the project root (relative paths are resolved against it)
    output_dir: Path  # everything this run writes goes below it (the root for a normal run)
    figures_dir: Path  # save_figure / save_table write here
    data_root: Path  # the real data (DWD layout)
    synth_root: Path  # the generated pseudo-domains of one backend: <synth_root>/<domain>/
    runs_dir: Path  # training runs: <runs_dir>/<task>-<variant>-<seed>/
    params: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """A few lines saying what this run uses and where it writes."""
        mode = "SMOKE (tiny sizes)" if self.smoke else "demo parameters"
        return (
            f"mode: {mode}; seed {self.seed}; device {self.device}\n"
            f"data: {self.data_root}\nsynthetic: {self.synth_root}\nruns: {self.runs_dir}\n"
            f"figures and tables: {self.figures_dir}"
        )


def setup(**params: Any) -> NotebookContext:
    """Check the notebook's parameters and decide where it reads and writes (see the module doc).

    Pass the parameters cell's names as keywords (``SMOKE``, ``SEED``, ``DEVICE``, ``DATA_ROOT``,
    ``SYNTH_ROOT``, ``RUNS_DIR``, ``OUTPUT_DIR`` are understood; others are checked when known and
    kept in ``params``). The context becomes the current one for ``save_figure``/``save_table``.
    """
    params = check_parameters(**params)
    root = project_root()
    smoke = bool(params.get("SMOKE", False))
    output = params.get("OUTPUT_DIR") or ""
    if output:
        output_dir = resolve_path(output, root)
    elif smoke:
        output_dir = root / SMOKE_DIRNAME
    else:
        output_dir = root
    if smoke:
        data_root = output_dir / "data" / "mini-weather"
        synth_root = output_dir / "data" / "synth" / Path(params.get("SYNTH_ROOT", "procedural")).name
        runs_dir = output_dir / "runs"
    else:
        data_root = resolve_path(params.get("DATA_ROOT", DEFAULT_DATA_ROOT), root)
        synth_root = resolve_path(params.get("SYNTH_ROOT", DEFAULT_SYNTH_ROOT), root)
        runs_dir = resolve_path(params.get("RUNS_DIR", DEFAULT_RUNS_DIR), root)
        if output:  # a batch point keeps its runs apart from every other point's
            runs_dir = output_dir / "runs"
    ctx = NotebookContext(
        smoke=smoke,
        seed=int(params.get("SEED", 0)),
        device=params.get("DEVICE", "auto"),
        root=root,
        output_dir=output_dir,
        figures_dir=output_dir / "figures",
        data_root=data_root,
        synth_root=synth_root,
        runs_dir=runs_dir,
        params=dict(params),
    )
    _CURRENT["context"] = ctx
    return ctx


def current_context() -> NotebookContext | None:
    """The context of the last ``setup`` call in this process (None before any)."""
    return _CURRENT.get("context")


def figures_dir(out_dir: str | os.PathLike | None = None) -> Path:
    """``out_dir`` when given, else the current context's figures folder, else ``<project>/figures``."""
    if out_dir is not None:
        return resolve_path(out_dir)
    ctx = current_context()
    return ctx.figures_dir if ctx is not None else project_root() / "figures"


def _checked_name(name: str) -> str:
    if not _NAME.match(name) or name in (".", ".."):
        raise ConfigError(f"figure/table name {name!r}: use letters, digits, '_', '-' and '.' only")
    return name


def save_figure(fig, name: str, out_dir: str | os.PathLike | None = None, fmt: str = "png", dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically as ``<figures>/<name>.<fmt>`` (``viz.plots.save_figure``) and
    return the path; the figure stays open, so the notebook still shows it."""
    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"figure format {fmt!r}: valid formats are {', '.join(FIGURE_FORMATS)}")
    if not hasattr(fig, "savefig"):
        raise ConfigError(f"save_figure expects a matplotlib Figure, got {type(fig).__name__}")
    return write_figure(fig, figures_dir(out_dir) / f"{_checked_name(name)}.{fmt}", dpi=dpi, close=False)


def save_table(table, name: str, out_dir: str | os.PathLike | None = None, caption: str | None = None) -> Path:
    """Save a table atomically as ``<figures>/<name>.md`` (and ``.csv`` for a DataFrame).

    ``table`` is a pandas DataFrame or ready Markdown text; ``caption`` (metric, protocol, units)
    goes above it. Returns the Markdown file's path.
    """
    folder = figures_dir(out_dir)
    name = _checked_name(name)
    if isinstance(table, str):
        text = table
    else:
        text = _markdown(table)
        atomic_write_text(folder / f"{name}.csv", table.to_csv())
    if caption:
        text = f"{caption}\n\n{text}"
    return atomic_write_text(folder / f"{name}.md", text.rstrip("\n") + "\n")


def _markdown(df) -> str:
    """A DataFrame as Markdown, index included (the kit's one writer: ``evaluation.tables.frame_to_markdown``)."""
    return frame_to_markdown(df)


# ------------------------------------------------------------------------------------------ environment
ENVIRONMENT_PACKAGES = (
    "torch", "torchvision", "numpy", "pandas", "matplotlib", "scikit-learn", "diffusers", "transformers",
    "captum", "seaborn", "pycocotools", "papermill", "ipywidgets", "nbclient",
)


def environment_table(ctx: NotebookContext | None = None):
    """One row per check (Python, package versions, device, threads, data folders): item, value, status.

    ``status`` is ``ok``, ``missing`` (a package or folder that is needed and absent) or ``note``
    (something to know, e.g. a folder that a later notebook will create).
    """
    rows = [("python", f"{platform.python_version()} ({sys.executable})", "ok"), ("drsf_kit", __version__, "ok")]
    for package in ENVIRONMENT_PACKAGES:
        try:
            rows.append((package, metadata.version(package), "ok"))
        except metadata.PackageNotFoundError:
            rows.append((package, "not installed", "missing"))
    cuda = torch.cuda.is_available()
    rows.append(("cuda", torch.cuda.get_device_name(0) if cuda else "not available (CPU run)", "ok" if cuda else "note"))
    rows.append(("torch threads", str(torch.get_num_threads()), "ok"))
    rows.append(("usable cores", str(default_num_threads()), "ok"))
    rows.append(("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "unset"), "ok" if os.environ.get("HF_HUB_OFFLINE") else "note"))
    if ctx is not None:
        rows.append(("device", f"{ctx.device} -> {resolve_device(ctx.device)}", "ok"))
        for label, folder in (("data", ctx.data_root), ("synthetic data", ctx.synth_root), ("runs", ctx.runs_dir)):
            exists = Path(folder).is_dir()
            rows.append((f"{label} folder", str(folder), "ok" if exists else "note"))
    return pd.DataFrame(rows, columns=["item", "value", "status"]).set_index("item")


# ------------------------------------------------------------------------------ data, synthetic data, runs
# SMOKE sizes: enough images for every domain and split to exist, few enough to render in seconds.
SMOKE_DATA = {"n_train": 12, "n_test": 4, "n_target": 4, "height": 96, "width": 160}
# SMOKE training: a few optimizer steps on one source image (+ twin) each, two images per domain
# scored, no TensorBoard files.
SMOKE_TRAIN = ("train.max_steps=3", "train.batch_source=1", "train.warmup_steps=1", "train.log_every=1",
               "train.checkpoint_every=0", "train.tensorboard=false", "eval.max_images=2")
# The detector resizes its inputs; in SMOKE it keeps the small images small.
SMOKE_DET = ("model.min_size=96", "model.max_size=160")


def ensure_mini_weather(ctx: NotebookContext, progress: bool = False) -> Path:
    """The context's data folder (``runs.ensure_data``): with ``SMOKE`` the tiny build
    (``SMOKE_DATA``) in the smoke workspace, otherwise the data folder, a missing ``mini-weather`` one
    rendered with the demo sizes."""
    return runs.ensure_data(ctx.data_root, sizes=SMOKE_DATA if ctx.smoke else None, progress=progress)


def ensure_synth(ctx: NotebookContext, domains=None, progress: bool = False) -> Path:
    """The context's pseudo-domain folder (``runs.ensure_synth``), its data made first when missing."""
    return runs.ensure_synth(ensure_mini_weather(ctx), ctx.synth_root, seed=ctx.seed, device=ctx.device,
                                  domains=domains, progress=progress)


def config_overrides(ctx: NotebookContext) -> list[str]:
    """The run-config overrides the context stands for: its folders and device, the parameters that are
    run-config keys (``PARAMETER_KEYS``; ``MAX_STEPS=0`` keeps the config's), and ``SMOKE_TRAIN``."""
    items = [f"device={ctx.device}", f"output_dir={ctx.runs_dir}", f"data.root={ctx.data_root}",
             f"data.synth_root={ctx.synth_root}"]
    for name in ("PROTOCOL", "MAX_STEPS", "BATCH_SOURCE", "LR", "PRETRAINED_BACKBONE", "INIT_WEIGHTS"):
        if name in ctx.params and ctx.params[name] != KEEP_CONFIG.get(name, object()):
            items.append(f"{PARAMETER_KEYS[name]}={'' if ctx.params[name] is None else ctx.params[name]}")
    return items + (list(SMOKE_TRAIN) if ctx.smoke else [])


def run_config(ctx: NotebookContext, task: str, variant: str, seed: int | None = None, overrides=()):
    """The ``RunConfig`` of one run (``runs.run_config``: the demo's config of ``task``), with the
    context's overrides, ``SMOKE_DET`` for a smoke detector, then ``overrides``."""
    smoke_det = list(SMOKE_DET) if ctx.smoke and task == "det" else []
    return runs.run_config(task, variant, ctx.seed if seed is None else seed,
                                [*config_overrides(ctx), *smoke_det, *overrides], root=ctx.root)


def ensure_run(ctx: NotebookContext, task: str, variant: str, seed: int | None = None, overrides=(),
               progress: bool = True, on_mismatch: str = "refuse", reuse_anyway: bool | None = None) -> Path:
    """Train one run unless its folder already holds it finished (``runs.ensure_run``); the training
    notebooks call it. ``reuse_anyway`` defaults to the notebook's ``REUSE_ANYWAY`` parameter."""
    if reuse_anyway is None:
        reuse_anyway = bool(ctx.params.get("REUSE_ANYWAY", False))
    return runs.ensure_run(run_config(ctx, task, variant, seed, overrides), on_mismatch=on_mismatch,
                                reuse_anyway=reuse_anyway, progress=progress,
                                data_sizes=SMOKE_DATA if ctx.smoke else None)


def ensure_runs(ctx: NotebookContext, task: str, variants, seed: int | None = None, overrides=(),
                progress: bool = True, on_mismatch: str = "refuse", reuse_anyway: bool | None = None,
                jobs: int | None = None) -> list[Path]:
    """``ensure_run`` for each of ``variants`` (``runs.ensure_runs``), ``jobs`` runs side by side:
    by default the notebook's ``JOBS`` parameter, where 0 (or none) means ``runs.auto_jobs`` (one
    per CPU core, one on a GPU)."""
    if reuse_anyway is None:
        reuse_anyway = bool(ctx.params.get("REUSE_ANYWAY", False))
    if jobs is None:
        jobs = int(ctx.params.get("JOBS", 0) or 0)
    cfgs = [run_config(ctx, task, variant, seed, overrides) for variant in variants]
    return runs.ensure_runs(cfgs, jobs=jobs or runs.auto_jobs(ctx.device), on_mismatch=on_mismatch,
                                 reuse_anyway=reuse_anyway, progress=progress,
                                 data_sizes=SMOKE_DATA if ctx.smoke else None)


def require_runs(ctx: NotebookContext, task: str, variants=None, seeds=None) -> list[Path]:
    """The finished runs a read-only notebook (06-09) uses (``runs.require_runs``): never trains;
    a missing run raises an error naming the command that makes it. ``variants`` and ``seeds`` default
    to the ``VARIANTS``/``VARIANT`` and ``SEEDS``/``SEED`` parameters."""
    if variants is None:
        variants = ctx.params.get("VARIANTS") or [ctx.params.get("VARIANT", "drsf")]
    if seeds is None:
        seeds = ctx.params.get("SEEDS") or [ctx.seed]
    return runs.require_runs(ctx.runs_dir, task, variants, seeds,
                                  reuse_anyway=bool(ctx.params.get("REUSE_ANYWAY", False)), root=ctx.root)


@dataclass(frozen=True)
class TrainedVariants:
    """What a training notebook (04 detector, 05 segmenter) shows after ``train_variants``."""

    task: str  # det | seg
    metric: str  # the headline metric of the table (map50_voc07 | miou)
    config: dict  # the first variant's resolved run config (the others differ in ``variant`` only)
    run_dirs: list  # one finished run folder per variant, in the order of VARIANTS
    curves: Any  # matplotlib Figure: the training loss of every run
    table: Any  # DataFrame: ``metric`` per domain (percent), source test first, then the targets and their mean

    @property
    def table_markdown(self) -> str:
        """The table as Markdown (caption line, percentages)."""
        return to_markdown(self.table)


def train_variants(ctx: NotebookContext, task: str, progress: bool = True) -> TrainedVariants:
    """The training notebooks' one call: the data and pseudo-domains (made when missing), one run per
    ``VARIANTS`` parameter (``ensure_runs``: a finished run of the same config is reused, one of other
    settings trained again, ``JOBS`` side by side), their loss curves and the headline metric per domain."""
    ensure_mini_weather(ctx, progress=progress)
    ensure_synth(ctx, progress=progress)
    max_steps = ctx.params.get("MAX_STEPS", 0)
    overrides = [f"train.max_steps={max_steps}"] if max_steps else []
    variants = ctx.params["VARIANTS"]
    config = config_to_dict(run_config(ctx, task, variants[0], overrides=overrides))
    run_dirs = ensure_runs(ctx, task, variants, overrides=overrides, progress=progress, on_mismatch="retrain")
    curves = overview.training_curves_figure(run_dirs, "loss", smooth=1 if ctx.smoke else 10)
    metric = HEADLINE_METRIC[task]
    table = domain_table(load_results(run_dirs), metric, task=task)
    return TrainedVariants(task, metric, config, run_dirs, curves, table)


def twin_scenes(ctx: NotebookContext, n: int = 3, task: str = "det", domains=None) -> dict[str, dict]:
    """``{source_id: {domain: image [3,H,W]}}`` for the first ``n`` source images that have twins:
    the source image first, then its pseudo-domain twins (resized to the source's size if needed)."""
    paired = PairedSynthetic(ctx.data_root, ctx.synth_root, task=task, domains=domains, progress=False)
    scenes = {}
    for source_id in paired.source_ids[:n]:
        image = paired.source[paired.source.index_of(source_id)][0]
        scene = {paired.source_domain: image}
        for domain, items in sorted(paired.twins(source_id).items()):
            twin = paired[items[0]][0]
            if twin.shape != image.shape:
                twin = F.interpolate(twin[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
            scene[domain] = twin
        scenes[source_id] = scene
    if not scenes:
        raise ConfigError(f"no source image under {ctx.data_root} has twins under {ctx.synth_root}")
    return scenes


def fusion_scenes(ctx: NotebookContext, cfg=None, n: int = 3, task: str = "det") -> dict[str, dict]:
    """``{source_id: {pseudo_domain: image [3,H,W]}}``: what MDSF fuses in training, per source image.

    MDSF fuses two twins of one source image from two different pseudo-domains, never the source image
    with a twin; so each scene holds only pseudo-domain twins (no source image), and only the first ``n``
    source images with twins of at least two pseudo-domains are kept. With a run's config ``cfg`` the
    twins come from the run's own pseudo-domains (``cfg.data.synth_domains``) under its synth root
    (``cfg.data.synth_root``, when that folder exists here; else the context's). Twins are resized to
    the first twin's size when needed (``predict_mixed`` mixes same-sized images).
    """
    synth_root, domains = ctx.synth_root, None
    if cfg is not None:
        run_root = resolve_path(cfg.data.synth_root, ctx.root)
        synth_root = run_root if run_root.is_dir() else ctx.synth_root
        domains = list(cfg.data.synth_domains)
    paired = PairedSynthetic(ctx.data_root, synth_root, task=task, progress=False)
    keep = [d for d in paired.domains if domains is None or d in domains]
    scenes: dict[str, dict] = {}
    for source_id in paired.source_ids:
        twins = {d: items for d, items in paired.twins(source_id).items() if d in keep}
        if len(twins) < 2:
            continue
        order = [d for d in (domains or sorted(twins)) if d in twins]  # the run's pseudo-domain order
        scene, size = {}, None
        for domain in order:
            twin = paired[twins[domain][0]][0]
            size = size or tuple(twin.shape[-2:])
            if tuple(twin.shape[-2:]) != size:
                twin = F.interpolate(twin[None], size=size, mode="bilinear", align_corners=False)[0]
            scene[domain] = twin
        scenes[source_id] = scene
        if len(scenes) == n:
            break
    if not scenes:
        raise ConfigError(f"no source image under {ctx.data_root} has twins of two pseudo-domains "
                          f"({', '.join(keep) or 'none found'}) under {synth_root}: MDSF fuses two of them")
    return scenes


def mixing_sweep(explorer, steps: int = 11, score_threshold: float = 0.3):
    """``analysis.explore.lambda_sweep`` on the explorer's current pair (two pseudo-domain twins of one
    source image), its frame's ``attrs`` naming the scene and what lambda mixes (``fusion``), so
    ``viz.dashboard.lambda_sweep_figure`` titles and labels it on its own."""
    from drsf_kit.analysis.explore import lambda_sweep

    scene, domain_a, domain_b = explorer.pair
    image_a, image_b = explorer.scenes[scene][domain_a], explorer.scenes[scene][domain_b]
    sweep = lambda_sweep(explorer.model, image_a, image_b, steps=steps, domain_names=explorer.domain_names or None,
                         score_threshold=score_threshold, names=(domain_a, domain_b))
    sweep.attrs.update(scene=str(scene), fusion=explorer.fusion)
    return sweep


def fidelity_scenes(ctx: NotebookContext, domain: str = "night_sunny", levels=("clean", "ldm", "ldm_gap"),
                    n: int = 2, source_domain: str = "daytime_clear") -> dict[str, dict]:
    """``{source_id: {column: image [H,W,3] uint8}}``: each of the first ``n`` source images, its
    procedural ``domain`` twin at every fidelity level (made here, in memory, with the image's boxes),
    and a real ``domain`` image of another scene for comparison."""
    source = DWDDetection(ctx.data_root, source_domain, "train", progress=False)
    target = DWDDetection(ctx.data_root, domain, "test", progress=False)
    scenes = {}
    for k, source_id in enumerate(sorted(source.ids)[:n]):
        item = load_source_item(source, source_id, with_mask=False)
        rgb = np.asarray(item.image.convert("RGB"))
        scene = {source_domain: rgb}
        for level in levels:
            strength, gap = parse_level(level)
            scene[f"{domain} twin, {level}"] = apply_domain(rgb, domain, k, strength, item.boxes, gap)[0]
        real = voc.load_rgb(target.image_path(k % len(target)))
        scene[f"real {domain} (another scene)"] = real
        scenes[source_id] = scene
    return scenes


def save_png(data: bytes, name: str, out_dir: str | os.PathLike | None = None) -> Path:
    """Save PNG bytes (e.g. a widget's picture) atomically as ``<figures>/<name>.png``."""
    if not isinstance(data, (bytes, bytearray)) or not bytes(data[:8]) == b"\x89PNG\r\n\x1a\n":
        raise ConfigError(f"save_png({name!r}) expects PNG bytes")
    return atomic_write_bytes(figures_dir(out_dir) / f"{_checked_name(name)}.png", bytes(data))


def forward_check(device: str = "auto", tasks=("det", "seg"), size: tuple[int, int] = (180, 320), seed: int = 0):
    """Build every variant's mini model per task and run one inference pass on a random image.

    Returns a DataFrame (task, variant, parameters, output, seconds): a quick proof that the models
    build and run on this machine before any data exists.
    """
    dev = resolve_device(device)
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(seed)).to(dev)
    rows = []
    for task in tasks:
        for variant in VARIANTS:
            start = time.perf_counter()
            torch.manual_seed(seed)
            model = build_model(task, "mini", variant, num_domains=5).to(dev).eval()
            with torch.no_grad():
                out = model([image]) if task == "det" else model(image[None])
            if task == "det":
                output = f"{len(out[0]['boxes'])} boxes"
            else:
                logits = out["out"] if isinstance(out, dict) else out
                output = f"logits {tuple(logits.shape)}"
            rows.append({"task": task, "variant": variant, "parameters": sum(p.numel() for p in model.parameters()),
                         "output": output, "seconds": round(time.perf_counter() - start, 3)})
    return pd.DataFrame(rows)


def ensure_evaluated(ctx: NotebookContext, run_dirs, protocol: str, progress: bool = False) -> list[Path]:
    """Score each run under ``protocol`` unless its ``results.jsonl`` already has rows for it (after its
    last training step); SMOKE scores two images per domain. Returns the run folders."""
    done = []
    for run_dir in map(Path, run_dirs):
        rows = load_results(run_dir) if RunDir(run_dir).results_path.exists() else None
        steps = read_run_config(run_dir).train.max_steps
        scored = rows is not None and ((rows["protocol"] == protocol) & (rows["step"] >= steps)).any()
        if not scored:
            evaluate_run(run_dir, protocol=protocol, device=ctx.device, progress=progress,
                         max_images=2 if ctx.smoke else None)
        done.append(run_dir)
    return done


def batch_grid(ctx: NotebookContext, **axes) -> dict[str, list]:
    """The sweep grid ``{NAME: [values]}``; with ``SMOKE`` each axis keeps its first value, except the
    first axis, which keeps two (so the sweep still has more than one point to compare)."""
    grid = {}
    for i, (name, values) in enumerate(axes.items()):
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise ConfigError(f"sweep axis {name} has no values")
        grid[name] = values[: (2 if i == 0 else 1)] if ctx.smoke else values
    return grid


# ---------------------------------------------------------------------------------- committed protocol
PROTOCOL_RESULTS = "benchmarks/results/sdg_protocol.json"  # written by `drsf protocol`


def protocol_table(ctx: NotebookContext, run_dirs, task: str):
    """``(table, caption)``: the demo's runs next to the committed protocol results, labelled as such
    (``evaluation.tables.protocol_comparison``); ``(None, one line)`` when no such file exists yet."""
    path = ctx.root / PROTOCOL_RESULTS
    if not path.is_file():
        return None, (f"No committed protocol results yet ({PROTOCOL_RESULTS}, written by "
                      "`drsf protocol`): the demo's runs are shown alone.")
    protocol = pd.DataFrame(read_rows_file(path))
    table = protocol_comparison(load_results(run_dirs), protocol, task)
    caption = (f"Table: {HEADLINE_METRIC[task]} (percent) on the source test split and mean over the real targets: "
               f"the demo's runs ({ctx.runs_dir.name}: fine-tuned on the demo schedule) next to the committed "
               f"protocol results ({PROTOCOL_RESULTS}: their own data build, schedule and seeds)")
    return table, caption
