"""`drsf demo` (and `make demo`): the whole kit on the embedded mini-weather data.

Steps: render the embedded benchmark into ``data/mini-weather`` (skipped when already there),
check it, then execute the ordered notebooks ``notebooks/00_*`` to ``09_*`` with papermill on their
demo parameters, writing executed copies to ``runs/demo/notebooks/``. Figures land in ``figures/``
and the results table in ``runs/demo/``; the end of the output says where to look.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from drsf_kit.config import DEFAULT_DATA_ROOT, DEFAULT_RUNS_DIR

DEFAULT_DATA = Path(DEFAULT_DATA_ROOT)
# The demo trains 5 variants x 2 tasks; a short schedule keeps `make demo` within ~20 min on 2 cores.
# The full schedule (configs/mini_*.yaml) is what benchmarks/sdg_mini.py measures.
DEMO_MAX_STEPS = 100
DEMO_NOTEBOOKS = tuple(f"{i:02d}_" for i in range(10))  # 00 .. 09; 10 is the sweep notebook


def add_parser(subparsers) -> None:
    """Register `drsf demo`."""
    p = subparsers.add_parser("demo", help="build the embedded data and run notebooks 00-09 in order")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where the embedded data goes")
    p.add_argument("--seed", type=int, default=0, help="seed of the embedded benchmark")
    p.add_argument("--notebooks", type=Path, default=Path("notebooks"), help="notebook folder")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_RUNS_DIR), help="executed notebooks and results")
    p.add_argument("--smoke", action="store_true", help="run the notebooks with SMOKE=True (minutes less)")
    p.add_argument("--skip-notebooks", action="store_true", help="only build and check the data")
    p.add_argument("--only", nargs="*", default=None, help="notebook prefixes to run, e.g. 00 01")
    p.add_argument("--max-steps", type=int, default=DEMO_MAX_STEPS,
                   help="training steps per demo run (0: the configs' full schedule, as in benchmarks/sdg_mini.py)")
    p.set_defaults(func=run_demo)


def _build_data(root: Path, seed: int) -> int:
    from drsf_kit.data.check import check_dataset, format_report
    from drsf_kit.data.mini_weather import make_mini_weather

    t0 = time.perf_counter()
    make_mini_weather(root, seed=seed, progress=True)
    print(f"[demo] embedded data ready in {root} ({time.perf_counter() - t0:.1f} s)")
    report = check_dataset(root, format="dwd", progress=False)
    print(format_report(report))
    return 0 if report.ok else 1


def _notebooks(folder: Path, only: list[str] | None) -> list[Path]:
    books = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.name.startswith(DEMO_NOTEBOOKS))
    if only:
        books = [p for p in books if any(p.name.startswith(o) for o in only)]
    return books


def _run_notebooks(books: list[Path], out: Path, data_root: Path, smoke: bool, max_steps: int) -> list[tuple[str, str, float]]:
    import papermill

    from drsf_kit.batch import execute_notebook

    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for book in books:
        target = out / "notebooks" / book.name
        target.parent.mkdir(parents=True, exist_ok=True)
        params = {"SMOKE": smoke, "DATA_ROOT": str(data_root.resolve()), "MAX_STEPS": max_steps}
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


def run_demo(args: argparse.Namespace) -> int:
    """Build and check the embedded data, then run the demo notebooks; returns the exit code."""
    t_start = time.perf_counter()
    code = _build_data(args.data, args.seed)
    if code:
        print("[demo] the embedded data has problems (see above); stopping", file=sys.stderr)
        return code
    if args.skip_notebooks:
        return 0
    books = _notebooks(args.notebooks, args.only)
    if not books:
        print(f"[demo] no notebooks found in {args.notebooks}; data step done")
        return 0
    summary = _run_notebooks(books, args.out, args.data, args.smoke, args.max_steps)
    print("\n| notebook | status | seconds |\n|---|---|---|")
    for name, status, secs in summary:
        print(f"| {name} | {status} | {secs:.0f} |")
    print(f"\n[demo] finished in {(time.perf_counter() - t_start) / 60:.1f} min")
    print(f"[demo] executed notebooks: {args.out / 'notebooks'}")
    print("[demo] figures: figures/   results tables: runs/demo/")
    return 0 if all(s == "ok" for _, s, _ in summary) else 1
