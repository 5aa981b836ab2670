"""Real-browser tests: headless Chromium (Debian's ``chromium``) driven by Python ``playwright``.

Every test starts its own server (Voilà or JupyterLab) on a free loopback port in a subprocess and
stops it, with every process below it, when it ends; ``no_leftover_processes`` fails a test that
leaves one behind. They run in the ``extra`` and ``all`` test tiers (``make test-all``) and there they
fail, with a one-line reason, when Chromium or playwright is missing (``apt-get install -y chromium``;
playwright is in the kit's ``[app]`` extra; never ``playwright install``): a missing browser must not
turn the tier green. Screenshots of each state go to ``test-artifacts/browser/`` (printed at the end).
"""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("DRSF_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOOPBACK = ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "about:")
_SHOTS: list[Path] = []


def _missing() -> str | None:
    """Why browser tests cannot run here (None when they can)."""
    if not os.path.exists(CHROMIUM):
        return f"browser test: {CHROMIUM} not found (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "browser test: the playwright package is missing (pip install -e '.[app]')"
    return None


@pytest.fixture(autouse=True)
def browser_available(request):
    """Fail (not skip) a browser test when this machine cannot run it."""
    if request.node.get_closest_marker("browser") is not None:
        reason = _missing()
        if reason is not None:
            pytest.fail(reason, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.call_failed = report.failed  # read by the page fixture: a failing test leaves a screenshot


def pytest_terminal_summary(terminalreporter):
    if _SHOTS:
        terminalreporter.write_line(f"browser screenshots ({len(_SHOTS)}): {ARTIFACTS}")


# --------------------------------------------------------------------------------------------- servers
class Server:
    """A server subprocess in its own session; ``stop()`` ends it and everything it started."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict, log: Path):
        self.log_path = log
        self._log = open(log, "wb")
        self.lines: queue.Queue[str] = queue.Queue()
        # own session: a kill of its group cannot reach pytest; kernels get their own sessions, so stop()
        # also walks the process tree
        self.proc = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=self._log,
                                     start_new_session=True)
        self.family: set[int] = {self.proc.pid}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            self._log.write(raw)
            self._log.flush()
            self.lines.put(raw.decode("utf-8", "replace"))

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match:
        """The first stdout line matching ``pattern``; fails with the log when the server exits or stalls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    pytest.fail(f"server exited with code {self.proc.returncode}:\n{self.log_tail()}")
                continue
            match = re.search(pattern, line)
            if match:
                return match
        pytest.fail(f"no line matching {pattern!r} within {timeout:.0f} s:\n{self.log_tail()}")

    def remember_children(self) -> None:
        """Record every process below the server (kernels), so ``stop`` can end them."""
        import psutil

        try:
            self.family.update(p.pid for p in psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass

    def log_tail(self, n: int = 4000) -> str:
        """The end of the server's output (stdout and stderr)."""
        self._log.flush()
        return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")

    def stop(self) -> None:
        """SIGTERM the server (it shuts its kernels down), then SIGKILL whatever is left of its tree."""
        import psutil

        self.remember_children()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        procs = []
        for pid in self.family:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        self.proc.wait(timeout=10)
        self._log.close()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    from drsf_kit.workflows.app import free_port as pick

    return pick()


def server_env(tmp: Path) -> dict:
    """Environment for a test server: offline, Jupyter config and runtime folders in ``tmp``."""
    env = dict(os.environ)
    for key in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        folder = tmp / key.lower()
        folder.mkdir(parents=True, exist_ok=True)
        env[key] = str(folder)
    env.pop("MPLBACKEND", None)  # kernels pick their inline backend, as in a plain `jupyter lab`
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    bindir = str(Path(sys.executable).parent)  # jupyter finds the venv's kernels and tools
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture()
def start_server(tmp_path):
    """``start_server(cmd, cwd, env) -> Server``; every server is stopped at the end of the test."""
    servers: list[Server] = []

    def start(cmd: list[str], cwd: Path, env: dict) -> Server:
        server = Server(cmd, cwd, env, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Fail the test when a process it started (server, kernel, browser) is still running after it."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 10
    while True:
        left = [p for p in me.children(recursive=True) if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left, "processes left running: " + ", ".join(f"{p.pid} {' '.join(p.cmdline()[:3])}" for p in left)


# --------------------------------------------------------------------------------------------- browser
@pytest.fixture()
def page(request):
    """A fresh headless Chromium page (1400x1000); records requests that leave the machine; a failing
    test leaves ``<test>-FAILED.png`` in the screenshot folder."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.outside_requests = []
            page.on("request", lambda r: None if r.url.startswith(LOOPBACK) else page.outside_requests.append(r.url))
            yield page
            if getattr(request.node, "call_failed", False):
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_]+', '_', request.node.name)}-FAILED.png"
                page.screenshot(path=str(path))
                _SHOTS.append(path)
            context.close()
        finally:
            browser.close()


def image_digest(page, selector: str) -> str:
    """SHA-256 of the bytes behind the ``<img>`` at ``selector`` (widgets serve them as blob: URLs, whose
    address changes on every update even when the picture does not, so the bytes are what count)."""
    return page.eval_on_selector(
        selector,
        """async (img) => {
            const data = await (await fetch(img.src)).arrayBuffer();
            const hash = await crypto.subtle.digest('SHA-256', data);
            return Array.from(new Uint8Array(hash)).map(b => b.toString(16).padStart(2, '0')).join('');
        }""",
    )


def element_pixels(page, selector: str):
    """The element's on-screen pixels (RGB uint8 array) from a screenshot of it."""
    import numpy as np
    from PIL import Image

    element = page.locator(selector).first
    # an <img> whose src just changed may not be decoded and painted yet: wait for it
    element.evaluate("el => el.tagName === 'IMG' ? el.decode().catch(() => null) : null")
    png = element.screenshot(animations="disabled")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def pixels_changed(a, b, tolerance: int = 4) -> int:
    """How many pixels of two screenshots differ by more than ``tolerance`` levels in some channel
    (every pixel counts when their sizes differ). Chromium draws identical content identically."""
    import numpy as np

    if a.shape != b.shape:
        return int(max(a.shape[0] * a.shape[1], b.shape[0] * b.shape[1]))
    return int((np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1) > tolerance).sum())


def wait_until(predicate, timeout: float, what: str, interval: float = 0.25, last=None):
    """Poll ``predicate()`` until it returns a truthy value; fail naming ``what`` (and ``last()``, what
    was seen last, when given) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    seen = f"; last seen: {last()}" if last is not None else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{seen}")


@pytest.fixture()
def shoot(request):
    """``shoot(page, name, selector=None)``: save a screenshot to test-artifacts/browser/<test>-<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)

    def shot(page, name: str, selector: str | None = None) -> Path:
        from drsf_kit.utils.io import atomic_write_bytes

        if selector:
            png = page.locator(selector).first.screenshot()
        else:  # the pages scroll inside an element, not the document: grow the window to the content
            size = page.viewport_size
            tall = page.evaluate("Math.max(...Array.from(document.querySelectorAll('*')).map(e => e.scrollHeight))")
            page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(tall) + 40, 5000))})
            page.wait_for_timeout(300)  # one layout pass
            png = page.screenshot()
            page.set_viewport_size(size)
        path = atomic_write_bytes(ARTIFACTS / f"{test}-{name}.png", png)
        _SHOTS.append(path)
        return path

    return shot


@pytest.fixture()
def bt():
    """Browser-test helpers: ``image_digest``, ``element_pixels``, ``pixels_changed``, ``wait_until``,
    ``free_port``, ``server_env``."""
    from types import SimpleNamespace

    return SimpleNamespace(image_digest=image_digest, element_pixels=element_pixels, pixels_changed=pixels_changed,
                           wait_until=wait_until, free_port=free_port, server_env=server_env, root=ROOT)
