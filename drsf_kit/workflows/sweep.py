"""Run one notebook over a grid of parameters with papermill (what `drsf batch` calls).

Every grid point gets its own folder ``<out>/<notebook-stem>-<hash>/`` where ``hash`` is the first
10 hex digits of the SHA-1 of the point's parameters as canonical JSON, so the same parameters always
land in the same folder whatever order they were given in. A folder holds ``parameters.json``,
``executed.ipynb`` and, once the notebook ran to the end, a ``done`` marker; a failed point keeps its
executed notebook (with the failing cell) and an ``error.txt``. Points already done are skipped, so an
interrupted sweep resumes where it stopped (DomainBed's sweep habit). The notebook learns where to
write through the ``OUTPUT_DIR`` parameter.

Example::

    drsf batch notebooks/04_train_detector.ipynb --grid "VARIANTS=source_only,drsf SEED=0,1" -p SMOKE=True
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Mapping

from drsf_kit.errors import ConfigError, DataError
from drsf_kit.utils.io import atomic_write_json, atomic_write_text
from drsf_kit.utils.notebooks import kernelspec_problem

# The parameter through which a notebook learns its output folder; it is not part of the hash
# (it is derived from the hash).
OUTPUT_PARAMETER = "OUTPUT_DIR"
HASH_LENGTH = 10
SUMMARY_COLUMNS = ["point", "status", "seconds", "folder"]


def parse_value(text: str) -> Any:
    """Cast one command-line value: Python/JSON literals (ints, floats, booleans, None, quoted strings,
    lists) become those values; anything else stays a string (``drsf`` -> ``"drsf"``)."""
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_assignment(text: str) -> tuple[str, Any]:
    """Split ``KEY=VALUE`` into the key and the cast value; raises ConfigError when malformed."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ConfigError(f"parameter {text!r}: expected KEY=VALUE with KEY a Python identifier")
    return key, parse_value(value)


def parse_grid(specs: str | Iterable[str]) -> dict[str, list]:
    """Parse ``"VARIANT=source_only,drsf SEED=0,1"`` (one string or several) into ``{key: [values]}``.

    Values are comma-separated and cast with ``parse_value``; a key given twice is an error.
    """
    if isinstance(specs, str):
        specs = [specs]
    grid: dict[str, list] = {}
    for spec in specs:
        for token in spec.split():
            key, sep, values = token.partition("=")
            key = key.strip()
            if not sep or not key.isidentifier() or not values:
                raise ConfigError(f"grid entry {token!r}: expected KEY=V1,V2,... with KEY a Python identifier")
            if key in grid:
                raise ConfigError(f"grid entry {token!r}: {key} is given twice")
            grid[key] = [parse_value(v) for v in values.split(",") if v.strip()]
            if not grid[key]:
                raise ConfigError(f"grid entry {token!r}: no values for {key}")
    return grid


def expand_grid(grid: Mapping[str, Iterable]) -> list[dict]:
    """The cartesian product of the grid, one dict per point, in the grid's key order."""
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ConfigError(f"grid key {key!r}: expected a list of values, got {values!r}")
    keys = list(grid)
    value_lists = [list(grid[k]) for k in keys]
    for key, values in zip(keys, value_lists):
        if not values:
            raise ConfigError(f"grid key {key!r}: the list of values is empty")
    return [dict(zip(keys, combo)) for combo in itertools.product(*value_lists)]


def canonical_json(params: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no whitespace: equal parameters give equal text."""
    try:
        return json.dumps(dict(params), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except TypeError as exc:
        raise ConfigError(f"parameters {params!r} are not JSON-serialisable ({exc})") from None


def params_hash(params: Mapping[str, Any]) -> str:
    """First 10 hex digits of the SHA-1 of the canonical JSON of ``params`` (order-independent)."""
    clean = {k: v for k, v in params.items() if k != OUTPUT_PARAMETER}
    return hashlib.sha1(canonical_json(clean).encode("utf-8")).hexdigest()[:HASH_LENGTH]


def point_dir(out_dir: str | os.PathLike, notebook: str | os.PathLike, params: Mapping[str, Any]) -> Path:
    """The folder of one grid point: ``<out_dir>/<notebook-stem>-<params_hash>``."""
    return Path(out_dir) / f"{Path(notebook).stem}-{params_hash(params)}"


def point_label(point: Mapping[str, Any]) -> str:
    """A short human label of a grid point: ``VARIANT=drsf SEED=0``."""
    return " ".join(f"{k}={v}" for k, v in point.items()) or "(defaults)"


def _this_interpreter_kernel_manager():
    """A kernel manager class that always starts an IPython kernel on ``sys.executable``.

    Kernelspecs are looked up in the user's folders before the venv's, so a stale ``python3`` spec
    elsewhere on the machine could start the wrong Python; this class sidesteps the lookup.
    """
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class ThisInterpreterKernelManager(AsyncKernelManager):
        """Starts ``sys.executable -m ipykernel_launcher`` whatever kernel name the notebook names."""

        # local IPC sockets where the OS has them: no open TCP ports (and no kernel warning about them)
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc" if os.name == "posix" else "tcp")

        @property
        def kernel_spec(self):
            """The kernelspec of the running interpreter (built once, no lookup)."""
            if self._kernel_spec is None:
                self._kernel_spec = KernelSpec(
                    argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    display_name=f"Python ({sys.executable})",
                    language="python",
                )
            return self._kernel_spec

    return ThisInterpreterKernelManager


def execute_notebook(
    notebook: str | os.PathLike,
    output_path: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    kernel_name: str | None = None,
    timeout: float | None = None,
    cwd: str | os.PathLike | None = None,
) -> None:
    """Execute ``notebook`` with papermill into ``output_path`` (written by a final rename).

    Args:
        notebook: the source ``.ipynb``.
        output_path: where the executed notebook goes, also when a cell fails.
        parameters: values injected after the cell tagged ``parameters``.
        kernel_name: a Jupyter kernelspec name; None runs the current interpreter's IPython kernel.
        timeout: seconds allowed per cell (None: no limit).
        cwd: working directory of the kernel (default: the notebook's folder, as in Jupyter).
    Raises whatever papermill raises (``PapermillExecutionError`` when a cell fails).
    """
    import papermill

    notebook = Path(notebook)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    # papermill saves after every cell; those saves go to a side file that is renamed at the end,
    # so the final name only ever holds a whole notebook.
    partial = output_path.with_name(f".{output_path.stem}.partial.ipynb")
    engine_kwargs: dict[str, Any] = {}
    if kernel_name is None:
        engine_kwargs["kernel_manager_class"] = _this_interpreter_kernel_manager()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(partial),
            parameters=dict(parameters or {}),
            kernel_name=kernel_name,
            progress_bar=False,
            log_output=False,
            cwd=str(cwd if cwd is not None else notebook.resolve().parent),
            execution_timeout=timeout,
            **engine_kwargs,
        )
    finally:
        if partial.exists():
            os.replace(partial, output_path)


def run_point(
    notebook: str | os.PathLike,
    params: Mapping[str, Any],
    out_dir: str | os.PathLike,
    kernel_name: str | None = None,
    timeout: float | None = None,
) -> dict:
    """Run one grid point (or skip it when its folder is done); returns a summary row.

    The row has ``point`` (label), ``status`` (``done``, ``skipped`` or ``failed``), ``seconds``,
    ``folder`` and ``error`` (None unless failed). Failures are recorded, never raised.
    """
    folder = point_dir(out_dir, notebook, params)
    label = point_label(params)
    done = folder / "done"
    if done.exists():
        try:
            seconds = float(json.loads(done.read_text()).get("seconds", 0.0))
        except (ValueError, AttributeError):
            seconds = 0.0
        return {"point": label, "status": "skipped", "seconds": seconds, "folder": str(folder), "error": None}
    folder.mkdir(parents=True, exist_ok=True)
    stale_error = folder / "error.txt"
    if stale_error.exists():
        stale_error.unlink()  # a re-run starts clean; a new failure writes it again
    atomic_write_json(folder / "parameters.json", {"notebook": str(notebook), "parameters": dict(params)})
    injected = {**params, OUTPUT_PARAMETER: str(folder.resolve())}
    start = time.perf_counter()
    try:
        execute_notebook(notebook, folder / "executed.ipynb", injected, kernel_name=kernel_name, timeout=timeout)
    except Exception as exc:  # any failure of one point is recorded and the sweep goes on
        seconds = time.perf_counter() - start
        message = f"{type(exc).__name__}: {exc}"
        atomic_write_text(folder / "error.txt", message + "\n\n" + traceback.format_exc())
        return {"point": label, "status": "failed", "seconds": seconds, "folder": str(folder), "error": message}
    seconds = time.perf_counter() - start
    atomic_write_json(done, {"seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return {"point": label, "status": "done", "seconds": seconds, "folder": str(folder), "error": None}


def check_notebook_file(notebook: str | os.PathLike) -> None:
    """``DataError`` naming the file unless ``notebook`` is a JSON notebook (papermill would answer a
    damaged file with a long traceback)."""
    path = Path(notebook)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not a notebook: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise DataError(path, "not a notebook: the JSON holds no 'cells' list")

    problem = kernelspec_problem(data)
    if problem:  # papermill needs the kernel's name and language to read the parameters cell
        raise DataError(path, problem)


def check_parameters(notebook: str | os.PathLike, names: Iterable[str]) -> None:
    """Refuse parameters that ``notebook``'s ``parameters`` cell does not declare.

    papermill would inject them anyway and the notebook would silently run on its own defaults (for
    example ``VARIANT=drsf`` given to a notebook that reads ``VARIANTS``).
    """
    import difflib

    import papermill

    declared = set(papermill.inspect_notebook(str(notebook)))
    if not declared:
        raise ConfigError(f"notebook {notebook}: no cell tagged 'parameters', so nothing can be set per point")
    unknown = [n for n in names if n not in declared and n != OUTPUT_PARAMETER]
    if unknown:
        hints = [f"{n} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(n, declared, n=1)) else n
                 for n in unknown]
        raise ConfigError(f"notebook {notebook}: its parameters cell does not declare {', '.join(hints)}; "
                          f"it declares {', '.join(sorted(declared))}")


def run_grid(
    notebook: str | os.PathLike,
    grid: Mapping[str, Iterable],
    out_dir: str | os.PathLike = "runs/batch",
    base_parameters: Mapping[str, Any] | None = None,
    kernel_name: str | None = None,
    timeout: float | None = None,
    progress: bool = True,
):
    """Execute ``notebook`` once per point of ``grid`` with papermill; returns a pandas DataFrame.

    Args:
        notebook: path of the ``.ipynb`` (it should have a cell tagged ``parameters``).
        grid: ``{PARAMETER: [values]}``; the points are the cartesian product.
        out_dir: where the point folders go.
        base_parameters: values shared by every point (a grid value wins over a base value).
        kernel_name: Jupyter kernelspec; None uses the current interpreter.
        timeout: seconds allowed per cell.
        progress: show a tqdm bar over the points.
    Returns:
        One row per point: the point's parameters, ``point``, ``status``, ``seconds``, ``folder``, ``error``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    notebook = Path(notebook)
    if not notebook.is_file():
        raise ConfigError(f"notebook {notebook}: no such file")
    if notebook.suffix != ".ipynb":
        raise ConfigError(f"notebook {notebook}: expected a .ipynb file")
    check_notebook_file(notebook)
    base = dict(base_parameters or {})
    if OUTPUT_PARAMETER in base or OUTPUT_PARAMETER in grid:
        raise ConfigError(f"{OUTPUT_PARAMETER} is set by the batch runner (one folder per point); use --out")
    check_parameters(notebook, [*base, *grid])
    points = [{**base, **point} for point in expand_grid(grid)]
    rows = []
    bar = tqdm(points, desc=f"batch {notebook.stem}", unit="point", disable=not progress)
    for params in bar:
        row = run_point(notebook, params, out_dir, kernel_name=kernel_name, timeout=timeout)
        # the label shows only what varies across the grid; base values are in parameters.json
        row["point"] = point_label({k: params[k] for k in grid})
        rows.append({**{k: params[k] for k in grid}, **row})
        bar.set_postfix_str(f"{row['point']}: {row['status']}")
    return pd.DataFrame(rows, columns=list(grid) + SUMMARY_COLUMNS + ["error"])


def format_summary(df) -> str:
    """The summary table printed after a sweep: point, status, seconds, folder."""
    if len(df) == 0:
        return "(no points)"
    table = df[SUMMARY_COLUMNS].copy()
    table["seconds"] = table["seconds"].map(lambda s: f"{s:.1f}")
    return table.to_string(index=False)
