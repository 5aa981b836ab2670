"""What the notebooks call: parameter checks, where things go, and saving figures and tables.

Every notebook's ``parameters`` cell sets upper-case names (``SMOKE``, ``DATA_ROOT``, ``SYNTH_ROOT``,
``RUNS_DIR``, ``DEVICE``, ``VARIANT``, ``SEED`` ...; the training config's fields under the same names
where they overlap) and then calls::

    ctx = nbk.setup(SMOKE=SMOKE, DATA_ROOT=DATA_ROOT, ..., OUTPUT_DIR=OUTPUT_DIR)

``setup`` checks each known parameter (a bad value raises ``ConfigError`` naming it and the valid
choices), resolves relative paths against the project root (the folder holding ``pyproject.toml``, so a
notebook behaves the same whether Jupyter starts it in ``notebooks/`` or papermill in the root), and
decides where outputs go:

- ``OUTPUT_DIR`` set (``drsf batch`` sets it per grid point): everything the notebook writes goes below
  it (``figures/``, ``runs/``, and with ``SMOKE`` the tiny data too).
- ``SMOKE=True`` without ``OUTPUT_DIR``: below ``runs/smoke/``, so a quick check never overwrites the
  demo's data, runs or figures.
- otherwise: ``figures/`` of the project and the given data and runs folders.

With ``SMOKE=True`` the notebooks work on a tiny dataset rendered for the purpose (``DATA_ROOT`` and
``SYNTH_ROOT`` are then ignored) and train for a few steps: minutes become seconds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from drsf_kit.errors import ConfigError
from drsf_kit.utils.io import atomic_write_bytes, atomic_write_text

SMOKE_DIRNAME = "runs/smoke"
FIGURE_FORMATS = ("png", "pdf", "svg")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CURRENT: dict[str, "NotebookContext"] = {}


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) holding
    ``pyproject.toml`` next to a ``drsf_kit`` package; ``DRSF_PROJECT_ROOT`` overrides; else ``start``."""
    env = os.environ.get("DRSF_PROJECT_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "drsf_kit").is_dir():
            return folder
    return here


def resolve_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """``path`` itself when absolute, else ``root / path`` (``root`` defaults to ``project_root()``)."""
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else Path(root or project_root()) / path


# ------------------------------------------------------------------------------------------- parameters
def _variants() -> tuple[str, ...]:
    from drsf_kit.models.variants import VARIANTS

    return tuple(VARIANTS)


def _domains() -> tuple[str, ...]:
    from drsf_kit.data.classes import DWD_DOMAINS

    return DWD_DOMAINS


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ConfigError(f"parameter {name}={value!r}: expected True or False")
    return value


def _check_int(minimum):
    def check(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"parameter {name}={value!r}: expected an integer >= {minimum}")
        return value

    return check


def _check_positive_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"parameter {name}={value!r}: expected a positive number")
    return float(value)


def _check_path(name, value):
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"parameter {name}={value!r}: expected a path (a string)")
    return str(value)


def _check_choice(choices):
    def check(name, value):
        valid = choices() if callable(choices) else choices
        if value not in valid:
            raise ConfigError(f"parameter {name}={value!r}: valid values are {', '.join(map(str, valid))}")
        return value

    return check


def _check_subset(choices):
    def check(name, value):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"parameter {name}={value!r}: expected a non-empty list")
        valid = choices() if callable(choices) else choices
        bad = [v for v in value if v not in valid]
        if bad:
            raise ConfigError(f"parameter {name}: unknown value(s) {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
        return list(value)

    return check


def _check_device(name, value):
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ConfigError(f"parameter {name}={value!r}: valid values are auto, cpu, cuda, cuda:N, mps")
    return value


# Known parameter names -> checker. Names shared with the run config mean the same thing there
# (VARIANT = variant, SEED = seed, DEVICE = device, TASK = task, MAX_STEPS = train.max_steps, ...).
PARAMETER_CHECKS = {
    "SMOKE": _check_bool,
    "SEED": _check_int(0),
    "DEVICE": _check_device,
    "TASK": _check_choice(("det", "seg")),
    "VARIANT": _check_choice(_variants),
    "VARIANTS": _check_subset(_variants),
    "SEEDS": lambda name, value: [_check_int(0)(name, v) for v in (value if isinstance(value, (list, tuple)) else [value])],
    "DOMAINS": _check_subset(_domains),
    "SYNTH_DOMAINS": _check_subset(_domains),
    "EVAL_DOMAINS": _check_subset(_domains),
    "DATA_ROOT": _check_path,
    "SYNTH_ROOT": _check_path,
    "RUNS_DIR": _check_path,
    "OUTPUT_DIR": lambda name, value: "" if value in (None, "") else _check_path(name, value),
    "MAX_STEPS": _check_int(1),
    "BATCH_SOURCE": _check_int(1),
    "N_IMAGES": _check_int(1),
    "LR": _check_positive_number,
}


def check_parameters(**params: Any) -> dict[str, Any]:
    """Check every known parameter (see ``PARAMETER_CHECKS``); names must be upper case.

    Returns the parameters with normalised values (e.g. a comma string for a list parameter becomes a
    list). Raises ``ConfigError`` naming the parameter, its value and the valid values.
    """
    out = {}
    for name, value in params.items():
        if name != name.upper() or not name.isidentifier():
            raise ConfigError(f"parameter {name!r}: notebook parameters are UPPER_CASE identifiers")
        check = PARAMETER_CHECKS.get(name)
        out[name] = check(name, value) if check else value
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
        data_root = resolve_path(params.get("DATA_ROOT", "data/mini-weather"), root)
        synth_root = resolve_path(params.get("SYNTH_ROOT", "data/synth/procedural"), root)
        runs_dir = resolve_path(params.get("RUNS_DIR", "runs/demo"), root)
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
    """Save a matplotlib figure atomically as ``<figures>/<name>.<fmt>`` and return the path."""
    import io

    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"figure format {fmt!r}: valid formats are {', '.join(FIGURE_FORMATS)}")
    if not hasattr(fig, "savefig"):
        raise ConfigError(f"save_figure expects a matplotlib Figure, got {type(fig).__name__}")
    path = figures_dir(out_dir) / f"{_checked_name(name)}.{fmt}"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


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
    """A plain Markdown table of a DataFrame (index included) without optional dependencies."""
    index_name = df.index.name or ""
    header = [str(index_name)] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in df.iterrows():
        cells = [str(idx)] + ["" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ environment
ENVIRONMENT_PACKAGES = (
    "torch", "torchvision", "numpy", "pandas", "matplotlib", "scikit-learn", "diffusers", "transformers",
    "captum", "torchmetrics", "pycocotools", "papermill", "ipywidgets", "nbclient",
)


def environment_table(ctx: NotebookContext | None = None):
    """One row per check (Python, package versions, device, threads, data folders): item, value, status.

    ``status`` is ``ok``, ``missing`` (a package or folder that is needed and absent) or ``note``
    (something to know, e.g. a folder that a later notebook will create).
    """
    import platform
    import sys
    from importlib import metadata

    import pandas as pd

    from drsf_kit import __version__
    from drsf_kit.utils.runtime import default_num_threads

    rows = [("python", f"{platform.python_version()} ({sys.executable})", "ok"), ("drsf_kit", __version__, "ok")]
    for package in ENVIRONMENT_PACKAGES:
        try:
            rows.append((package, metadata.version(package), "ok"))
        except metadata.PackageNotFoundError:
            rows.append((package, "not installed", "missing"))
    try:
        import torch

        cuda = torch.cuda.is_available()
        rows.append(("cuda", torch.cuda.get_device_name(0) if cuda else "not available (CPU run)", "ok" if cuda else "note"))
        rows.append(("torch threads", str(torch.get_num_threads()), "ok"))
    except ImportError:
        rows.append(("cuda", "torch missing", "missing"))
    rows.append(("usable cores", str(default_num_threads()), "ok"))
    rows.append(("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "unset"), "ok" if os.environ.get("HF_HUB_OFFLINE") else "note"))
    if ctx is not None:
        from drsf_kit.utils.runtime import resolve_device

        rows.append(("device", f"{ctx.device} -> {resolve_device(ctx.device)}", "ok"))
        for label, folder in (("data", ctx.data_root), ("synthetic data", ctx.synth_root), ("runs", ctx.runs_dir)):
            exists = Path(folder).is_dir()
            rows.append((f"{label} folder", str(folder), "ok" if exists else "note"))
    return pd.DataFrame(rows, columns=["item", "value", "status"]).set_index("item")
