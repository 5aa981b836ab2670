"""`drsf demo` (and `make demo`): the whole kit on the embedded mini-weather data.

Steps: render the embedded benchmark into ``data/mini-weather`` (``runs.ensure_data``; skipped
when already there), check it, then execute the ordered notebooks ``notebooks/00_*`` to ``09_*`` with
papermill on their demo parameters, writing executed copies to ``runs/demo/notebooks/``. The training
notebooks (04, 05) fine-tune every variant from the warm starts shipped in ``data/warm_start/``
(``configs/demo_*.yaml``), one run per CPU core side by side (``runs.ensure_runs``), so the
dashboard that closes the demo shows trained models; notebooks 06-09 only read those runs. Figures land in ``figures/`` and the results table in ``runs/demo/``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from drsf_kit.config import DEFAULT_DATA_ROOT, DEFAULT_RUNS_DIR
from drsf_kit.data.check import check_dataset, format_report
from drsf_kit.errors import ConfigError
from drsf_kit.workflows import runs
from drsf_kit.workflows.sweep import execute_notebook

DEFAULT_DATA = Path(DEFAULT_DATA_ROOT)
# The demo trains 5 variants x 2 tasks from the shipped warm starts, on the schedule of
# configs/demo_*.yaml (chosen so that `make demo` stays within 20 min on a quiet 2-core machine).
DEMO_NOTEBOOKS = tuple(f"{i:02d}_" for i in range(10))  # 00 .. 09; 10 is the sweep notebook


def _build_data(root: Path, seed: int) -> int:
    t0 = time.perf_counter()
    runs.ensure_data(root, sizes={}, seed=seed, progress=True)  # the default build, made or found
    print(f"[demo] embedded data ready in {root} ({time.perf_counter() - t0:.1f} s)")
    report = check_dataset(root, format="dwd", progress=False)
    print(format_report(report))
    return 0 if report.ok else 1


def _missing_warm_starts() -> str:
    """A line naming the demo configs' warm-start files that are absent (empty when all are there)."""
    root = runs.project_root()
    gone = []
    for task in ("det", "seg"):
        try:
            weights = runs.run_config(task, "source_only", root=root).model.init_weights
        except ConfigError as exc:
            return str(exc)
        if weights and not runs.resolve_path(weights, root).is_file():
            gone.append(f"{weights} (drsf warm-start --task {task}; data/README.md)")
    return f"the demo's warm start is missing: {', '.join(gone)}" if gone else ""


def _notebooks(folder: Path, only: list[str] | None) -> list[Path]:
    books = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.name.startswith(DEMO_NOTEBOOKS))
    if only:
        books = [p for p in books if any(p.name.startswith(o) for o in only)]
    return books


def _run_notebooks(books: list[Path], out: Path, data_root: Path, smoke: bool, max_steps: int) -> list[tuple[str, str, float]]:
    import papermill  # optional heavy dependency: only the notebook steps need it

    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for book in books:
        target = out / "notebooks" / book.name
        target.parent.mkdir(parents=True, exist_ok=True)
        params = {"SMOKE": smoke, "DATA_ROOT": str(data_root.resolve())}
        if max_steps:
            params["MAX_STEPS"] = max_steps
        declared = set(papermill.inspect_notebook(str(book)))
        params = {k: v for k, v in params.items() if k in declared}  # only what the notebook declares
        print(f"[demo] running {book.name} ...", flush=True)
        t0 = time.perf_counter()
        status = "ok"
        try:
            execute_notebook(book, target, parameters=params, kernel_name=os.environ.get("DRSF_KERNEL"),
                             cwd=book.parent.resolve())
        except Exception as exc:  # keep going so one broken notebook does not hide the others
            status = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        summary.append((book.name, status, time.perf_counter() - t0))
        print(f"[demo] {book.name}: {status} ({summary[-1][2]:.0f} s)", flush=True)
    return summary


def run_demo(data: Path = DEFAULT_DATA, seed: int = 0, notebooks: Path = Path("notebooks"),
             out: Path = Path(DEFAULT_RUNS_DIR), smoke: bool = False, skip_notebooks: bool = False,
             only: list[str] | None = None, max_steps: int = 0) -> int:
    """Build and check the embedded data, then run the demo notebooks; returns the exit code."""
    t_start = time.perf_counter()
    code = _build_data(data, seed)
    if code:
        print("[demo] the embedded data has problems (see above); stopping", file=sys.stderr)
        return code
    if skip_notebooks:
        return 0
    missing = _missing_warm_starts()
    if missing:
        print(f"[demo] {missing}; stopping", file=sys.stderr)
        return 1
    books = _notebooks(notebooks, only)
    if not books:
        print(f"[demo] no notebooks found in {notebooks}; data step done")
        return 0
    summary = _run_notebooks(books, out, data, smoke, max_steps)
    print("\n| notebook | status | seconds |\n|---|---|---|")
    for name, status, secs in summary:
        print(f"| {name} | {status} | {secs:.0f} |")
    print(f"\n[demo] finished in {(time.perf_counter() - t_start) / 60:.1f} min")
    print(f"[demo] executed notebooks: {out / 'notebooks'}")
    print("[demo] figures: figures/   results tables: runs/demo/")
    return 0 if all(s == "ok" for _, s, _ in summary) else 1
