"""`drsf app`: the ablation dashboard and the MDSF explorer as one standalone page (Voilà) on 127.0.0.1.

Usage::

    drsf app
    drsf app --runs runs/sweep   # results of any folder of runs
    drsf app --port 8866
    drsf app --no-token          # trusted single-user machines only

Security (docs/runs.md): the server listens on 127.0.0.1 and asks for a random token, printed in the
address as JupyterLab does; requests whose ``Host`` header is not a loopback name are refused (against
DNS rebinding); each page view starts a kernel, so idle kernels are culled after ``--idle-timeout``
seconds and at most ``--max-kernels`` run at once; errors reach the visitor without a traceback.

Which results the dashboard shows (the first that exists):

1. ``--runs DIR``: every ``results.jsonl`` below DIR (a results file or a JSON rows file also works);
2. ``runs/demo``: the results ``drsf demo`` leaves;
3. ``benchmarks/results/sdg_mini.json``: the benchmark's rows (a JSON list of tidy result rows, or an
   object holding them under ``"rows"``);
4. otherwise nothing: the app trains no runs of its own (``drsf_kit.workflows`` makes runs, through
   ``drsf demo``, the notebooks or ``drsf train``); it stops with a line naming the command.

The MDSF explorer uses the first ``drsf``/``mdsf`` run with a checkpoint in the chosen folder, else an
untrained mini segmenter (the page says which). The launcher hands its choices to the page's kernel in
environment variables (``DRSF_APP_*``); the page is ``app/drsf_dashboard.ipynb``.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drsf_kit.config import DEFAULT_RUNS_DIR
from drsf_kit.data.classes import SOURCE_DOMAIN
from drsf_kit.data.mini_weather.scene import render_scene
from drsf_kit.data.mini_weather.weather import render_domain
from drsf_kit.errors import ConfigError, DataError, DrsfError
from drsf_kit.evaluation.results import read_rows_file
from drsf_kit.models import build_model
from drsf_kit.synth.base import DEFAULT_SYNTH_DOMAINS
from drsf_kit.synth.procedural import apply_domain
from drsf_kit.train.evaluate import load_run
from drsf_kit.train.rundir import has_results, runs_with_checkpoint
from drsf_kit.workflows.runs import project_root

HOST = "127.0.0.1"
DEMO_RUNS = Path(DEFAULT_RUNS_DIR)
BENCHMARK_ROWS = Path("benchmarks/results/sdg_mini.json")
# the page and its Voilà template live next to the package in the source tree (app/), not in the wheel
APP_DIR = Path(__file__).resolve().parents[2] / "app"
PAGE = APP_DIR / "drsf_dashboard.ipynb"
TEMPLATES = APP_DIR / "jupyter"  # a Jupyter data folder holding the page's Voilà template ("drsf")
ENV_PATH, ENV_KIND = "DRSF_APP_RESULTS", "DRSF_APP_KIND"
MIXING_VARIANTS = ("drsf", "mdsf")  # variants whose model carries MDSF's discriminator
KIND_NOTES = {
    "runs": "results of {path}",
    "demo": "the demo's results ({path})",
    "benchmark": "the benchmark's results ({path})",
}
# the commands that make results when there are none (named in the refusal)
MAKE_RESULTS = "`drsf demo` (the demo's runs in runs/demo) or `python benchmarks/sdg_mini.py`"


@dataclass(frozen=True)
class ResultsSource:
    """Where the dashboard's rows come from: ``kind`` (runs, demo, benchmark) and ``path``."""

    kind: str
    path: Path

    @property
    def note(self) -> str:
        """One line for the page saying where the numbers come from."""
        return KIND_NOTES[self.kind].format(path=self.path)


# ---------------------------------------------------------------------------------------------- results
def load_rows_file(path: str | os.PathLike):
    """Tidy result rows from a JSON file (``drsf_kit.evaluation.results.read_rows_file``) as a DataFrame."""
    import pandas as pd

    return pd.DataFrame(read_rows_file(path))


def resolve_results(runs: str | os.PathLike | None = None, root: str | os.PathLike | None = None) -> ResultsSource:
    """Choose the dashboard's results: ``runs``, else the demo's, else the benchmark's.

    Trains nothing. Raises ``DataError`` when ``runs`` is given but holds no results, ``ConfigError``
    naming the commands that make results when none are found.
    """
    root = Path(root) if root is not None else project_root()
    if runs is not None:
        path = Path(runs).expanduser().resolve()  # as typed: relative to the working folder
        if path.is_file() and path.suffix == ".json":
            load_rows_file(path)  # fail now, in the terminal, rather than on the page
            return ResultsSource("runs", path)
        if path.is_file() or has_results(path):
            return ResultsSource("runs", path)
        problem = "does not exist" if not path.exists() else "holds no results.jsonl (train or evaluate a run first)"
        raise DataError(path, problem)
    if has_results(root / DEMO_RUNS):
        return ResultsSource("demo", (root / DEMO_RUNS).resolve())
    if (root / BENCHMARK_ROWS).is_file():
        return ResultsSource("benchmark", (root / BENCHMARK_ROWS).resolve())
    raise ConfigError(f"no results found: none in {root / DEMO_RUNS}, no {root / BENCHMARK_ROWS}; "
                      f"make them with {MAKE_RESULTS}, or pass --runs DIR")


# ----------------------------------------------------------------------------------------- page content
def demo_scenes(n: int = 3, height: int = 180, width: int = 320, seed: int = 0, domains=None) -> dict:
    """``{scene: {domain: image [3,H,W] in [0,1]}}``: rendered clear-day scenes and their pseudo-domain
    twins made by the procedural generator. The explorer fuses two of a scene's pseudo-domain twins, as
    MDSF does in training; the clear-day image is kept for reference and never offered for fusion."""
    def tensor(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 255.0

    scenes = {}
    for i in range(n):
        clear = render_domain(render_scene(seed + i, height, width), SOURCE_DOMAIN, seed + i)
        twins = {SOURCE_DOMAIN: tensor(clear)}
        for domain in domains or DEFAULT_SYNTH_DOMAINS:
            twins[domain] = tensor(apply_domain(clear, domain, seed + i)[0])
        scenes[f"scene {i}"] = twins
    return scenes


def explorer_model(source: ResultsSource | None):
    """``(model, domain_names, note)``: a trained ``drsf``/``mdsf`` run of ``source`` when one has a
    checkpoint, else an untrained mini segmenter with both blocks."""
    folder = source.path if source is not None and source.path.is_dir() else None
    for run_dir in runs_with_checkpoint(folder) if folder is not None else []:
        run = run_dir.path
        try:
            config = run_dir.read_config() or {}
        except (OSError, DataError):
            continue  # not a run folder we can rebuild; look further
        if config.get("variant") in MIXING_VARIANTS:
            try:
                model, cfg = load_run(run)
            except DrsfError as exc:  # an old or foreign checkpoint: say so in the terminal, try the next
                print(f"[app] skipping {run} for the explorer: {exc}", file=sys.stderr)
                continue
            names = [cfg.data.source_domain, *cfg.data.synth_domains]
            return model, names, f"trained run {run} ({model.trained_steps} steps)"
    model = build_model(task="seg", profile="mini", variant="drsf", num_domains=1 + len(DEFAULT_SYNTH_DOMAINS)).eval()
    note = ("an untrained mini segmenter (no drsf/mdsf run with a checkpoint among the results): "
            "mixing works, predictions are noise")
    return model, [SOURCE_DOMAIN, *DEFAULT_SYNTH_DOMAINS], note


def page_results() -> ResultsSource:
    """The results the launcher chose (``DRSF_APP_*`` variables), else ``resolve_results()``."""
    path = os.environ.get(ENV_PATH)
    if path:
        return ResultsSource(os.environ.get(ENV_KIND, "runs"), Path(path))
    return resolve_results()


def _rows(source: ResultsSource):
    if source.path.is_file() and source.path.suffix == ".json":
        return load_rows_file(source.path)
    return source.path


def page_dashboard(source: ResultsSource | None = None):
    """The ablation dashboard over ``source`` (default ``page_results()``), under a line naming it."""
    import html

    # the widget stack (ipywidgets, IPython) is the app's optional dependency: `drsf` loads without it
    import ipywidgets as widgets

    from drsf_kit.viz.widgets import ablation_dashboard

    source = source or page_results()
    note = widgets.HTML(f"<p><b>Results:</b> {html.escape(source.note)}.</p>")
    note.add_class("drsf-results-source")
    dash = ablation_dashboard(_rows(source))
    return widgets.VBox([note, dash])


def page_explorer(source: ResultsSource | None = None, n_scenes: int = 3):
    """The MDSF explorer on rendered scenes: two procedural pseudo-domain twins of one scene, fused as the
    model's MDSF method fuses in training (``viz.widgets.MdsfExplorer``)."""
    import html

    # the widget stack (ipywidgets, IPython) is the app's optional dependency: `drsf` loads without it
    import ipywidgets as widgets

    from drsf_kit.viz.widgets import mdsf_explorer

    model, names, note = explorer_model(source if source is not None else page_results())
    line = widgets.HTML(f"<p><b>Model:</b> {html.escape(note)}.</p>")
    line.add_class("drsf-model-source")
    return widgets.VBox([line, mdsf_explorer(model, demo_scenes(n_scenes), domain_names=names)])


# -------------------------------------------------------------------------------------------- launcher
def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether ``host:port`` can be bound now (Voilà would otherwise fail, or another server answer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


IDLE_TIMEOUT = 900  # seconds without activity before a page's kernel is shut down
MAX_KERNELS = 4  # live page kernels at most (about 850 MB each)


def voila_command(notebook: str | os.PathLike, port: int, host: str = HOST, token: str = "",
                  idle_timeout: int = IDLE_TIMEOUT, max_kernels: int = MAX_KERNELS) -> list[str]:
    """The command that serves ``notebook`` with Voilà on ``host:port`` (no browser, light theme, the
    kit's ``drsf`` template: found through ``voila_env``'s ``JUPYTER_PATH``).

    Args:
        token: the token every request must carry (empty: none, for trusted loopback use); it is not put
            on the command line: pass it in the server's environment with ``token_env``.
        idle_timeout: seconds before an idle kernel (connected or not) is culled; 0 never.
        max_kernels: live kernels at most (``drsf_kit.workflows.app_kernels.CappedKernelManager``).
    """
    # Voilà turns the Host-header check off by default; the server only listens on loopback, and the
    # check stops a web page from reaching it under another name (DNS rebinding)
    tornado = {"allow_remote_access": False, "local_hostnames": ["localhost"]}
    return [sys.executable, "-m", "voila", str(notebook), f"--port={port}", f"--Voila.ip={host}",
            "--Voila.port_retries=0", "--no-browser", "--theme=light", "--template=drsf",
            # a token travels in the server's environment (TOKEN_ENV, see token_env), never on its command line
            "--Voila.auto_token=True" if token else "--Voila.token=", f"--Voila.tornado_settings={tornado!r}",
            "--VoilaConfiguration.show_tracebacks=False",
            "--VoilaConfiguration.multi_kernel_manager_class=drsf_kit.workflows.app_kernels.CappedKernelManager",
            f"--CappedKernelManager.max_kernels={int(max_kernels)}",
            f"--MappingKernelManager.cull_idle_timeout={int(idle_timeout)}",
            f"--MappingKernelManager.cull_interval={max(1, min(60, int(idle_timeout) or 60))}",
            "--MappingKernelManager.cull_connected=True"]


TOKEN_ENV = "JUPYTER_TOKEN"  # where Jupyter's server reads its token when none is configured


def token_env(env: dict, token: str) -> dict:
    """``env`` with the server's token in ``TOKEN_ENV`` (readable by this user only, unlike a command
    line, which every user sees in ``ps``); without a token, any inherited one is removed."""
    env = {k: v for k, v in env.items() if k not in (TOKEN_ENV, f"{TOKEN_ENV}_FILE")}
    if token:
        env[TOKEN_ENV] = token
    return env


def voila_env(source: ResultsSource, base: dict | None = None) -> dict:
    """Environment for the server and the page's kernel: the chosen results, offline hub, headless
    matplotlib, and the kit's template folder first on ``JUPYTER_PATH``."""
    env = dict(os.environ if base is None else base)
    env[ENV_PATH], env[ENV_KIND] = str(source.path), source.kind
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("MPLBACKEND", "Agg")
    paths = [str(TEMPLATES), *filter(None, env.get("JUPYTER_PATH", "").split(os.pathsep))]
    env["JUPYTER_PATH"] = os.pathsep.join(paths)
    return env


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 120.0, host: str = HOST) -> None:
    """Return once ``host:port`` accepts connections; ``ConfigError`` if ``process`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"the Voilà server exited with code {process.returncode} before serving on port {port}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                pass
            time.sleep(0.2)  # the answer must come from this server, not one that was there before
            if process.poll() is None:
                return
        except OSError:
            time.sleep(0.2)
    raise ConfigError(f"the Voilà server did not answer on {host}:{port} within {timeout:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server and every process below it (kernels run in their own sessions), then SIGKILL."""
    import psutil  # optional dependency of the app (pip install .[app])

    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for proc in family:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve(runs=None, port: int = 0, notebook: str | os.PathLike | None = None,
          token: bool = True, idle_timeout: int = IDLE_TIMEOUT, max_kernels: int = MAX_KERNELS) -> int:
    """Resolve the results, start Voilà on 127.0.0.1, print the address, wait until interrupted.

    ``token=False`` serves without a token (anyone who can reach 127.0.0.1 may use the page).
    """
    page = Path(notebook).resolve() if notebook else PAGE
    if not page.is_file():
        raise DataError(page, "the app's notebook is missing (the app runs from a source checkout of the kit)")
    source = resolve_results(runs, project_root())
    port = int(port) or free_port()
    if not port_is_free(port):
        raise ConfigError(f"port {port} on {HOST} is in use; pick another with --port, or leave it out for a free one")
    if max_kernels < 1 or idle_timeout < 0:
        raise ConfigError("--max-kernels must be at least 1 and --idle-timeout at least 0")
    secret = secrets.token_hex(24) if token else ""
    command = voila_command(page, port, token=secret, idle_timeout=idle_timeout, max_kernels=max_kernels)
    process = subprocess.Popen(command, cwd=str(page.parent), env=token_env(voila_env(source), secret))
    # SIGTERM (e.g. from a service manager) stops the server the same way Ctrl+C does
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        wait_for_port(port, process)
        print(f"[app] results: {source.note}", flush=True)
        if not token:
            print("[app] --no-token: no token is asked; every user and program on this machine can use the "
                  "page and start kernels. Use it only on a trusted single-user machine.", flush=True)
        query = f"?token={secret}" if secret else ""
        print(f"[app] serving http://{HOST}:{port}/{query}  (Ctrl+C stops it)", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(process)
