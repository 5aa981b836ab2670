"""Notebook 08 (MDSF interpolation) in JupyterLab, driven in Chromium as a person would.

A copy of ``notebooks/08_explore_mdsf_interpolation.ipynb`` with SMOKE parameters (segmentation: a
3-step run on a tiny rendered dataset, made first by ``drsf_kit.workflows``, since notebook 08 only
reads runs) is opened in a fresh JupyterLab; Run -> Run
All Cells; then the lambda slider is moved with the keyboard (ArrowRight,
End) and by dragging its handle. After each move the mixed feature map, the discriminator's
probabilities and the prediction overlay must all show a new picture (bytes and screen pixels).
The run carries v3's optional adversary (``model.hparams.w_adv``): the default design has none, and its
explorer then shows a fixed "no adversary" panel (tests/test_mdsf_slider.py, tests/test_widgets.py).
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
import urllib.request
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "08_explore_mdsf_interpolation.ipynb"
EXPLORER = ".drsf-mdsf-explorer"
PICTURES = {name: f"{EXPLORER} img.drsf-{name}" for name in ("features", "probs", "prediction")}
PARAMS = {"SMOKE": True, "TASK": "seg", "VARIANT": "drsf", "N_IMAGES": 2}
ADVERSARY = ("model.hparams.w_adv=0.1",)  # a discriminator whose probabilities the middle panel draws
# no news or update checks: nothing may leave the machine, and no toast may cover the page
QUIET_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                                        "checkForUpdates": False}}


def _prepare(tmp: Path) -> Path:
    """A copy of the notebook with the SMOKE parameters injected as papermill injects them, and the
    3-step run it reads (notebook 08 trains nothing: the training notebooks' path makes it)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from drsf_kit.workflows import notebook as nbk

    params = dict(PARAMS, OUTPUT_DIR=str(tmp / "work"))
    ctx = nbk.setup(SMOKE=True, OUTPUT_DIR=params["OUTPUT_DIR"])
    nbk.ensure_run(ctx, PARAMS["TASK"], PARAMS["VARIANT"], overrides=ADVERSARY, progress=False)
    nb = parameterize_notebook(load_notebook_node(str(NOTEBOOK)), params)
    target = tmp / "lab" / "mdsf.ipynb"
    target.parent.mkdir(parents=True)
    nbformat.write(nb, target)
    return target


def _lab_command(port: int, token: str, tmp: Path, root_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
        f"--LabApp.workspaces_dir={tmp / 'workspaces'}", f"--LabApp.user_settings_dir={tmp / 'settings'}",
    ]


def _write_settings(folder: Path) -> None:
    from drsf_kit.utils.io import atomic_write_json

    for name, values in QUIET_SETTINGS.items():
        plugin, file = name.rsplit("/", 1)
        atomic_write_json(folder / plugin / file, values)


def _wait_http(url: str, server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {server.proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"JupyterLab did not answer {url} within {timeout:.0f} s:\n{server.log_tail()}")


def _kernel_idle(page) -> bool:
    return page.eval_on_selector(
        ".jp-Notebook-ExecutionIndicator", "el => el.getAttribute('data-status')") == "idle"


def _readout(page) -> str:
    return page.inner_text(f"{EXPLORER} .drsf-lam .widget-readout").strip()


def _cells_started(page) -> bool:
    """True once any code cell shows an execution prompt ([*] or [n])."""
    prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").all_inner_texts()
    return any("*" in p or any(ch.isdigit() for ch in p) for p in prompts)


@pytest.mark.browser
def test_lab_mdsf_slider_moves_features_probabilities_and_prediction(tmp_path, start_server, page, shoot, bt):
    notebook = _prepare(tmp_path)
    _write_settings(tmp_path / "settings")
    port, token = bt.free_port(), secrets.token_hex(16)
    env = bt.server_env(tmp_path)
    env["DRSF_PROJECT_ROOT"] = str(tmp_path)  # the copy's outputs stay in the temporary folder
    server = start_server(_lab_command(port, token, tmp_path, notebook.parent), notebook.parent, env)
    base = f"http://127.0.0.1:{port}"
    _wait_http(f"{base}/api/status?token={token}", server, timeout=60)

    page.goto(f"{base}/lab/tree/{notebook.name}?token={token}", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    bt.wait_until(lambda: _kernel_idle(page), 60, "the notebook's kernel to start")
    # Run -> Run All Cells, through the menu bar. On a busy machine the first click can land before the
    # notebook panel is wired to its kernel and do nothing, so try again until a cell starts running.
    for _attempt in range(4):
        page.click(".jp-Notebook .jp-Cell >> nth=0")  # the notebook panel has the focus
        page.click(".lm-MenuBar-item:has-text('Run')")
        page.click(".lm-Menu-item[data-command='runmenu:run-all']")
        try:
            bt.wait_until(lambda: _cells_started(page), 30, "a cell to start running")
            break
        except pytest.fail.Exception:
            page.keyboard.press("Escape")
    # generous limits: they only matter when something is wrong, and CI machines can be busy
    page.wait_for_selector(f"{PICTURES['probs']}", state="visible", timeout=240_000)
    bt.wait_until(lambda: _kernel_idle(page), 120, "the kernel to finish running every cell")
    server.remember_children()
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] .jp-RenderedText pre"
                          ":has-text('Error')")
    assert errors.count() == 0, errors.first.inner_text()
    page.locator(EXPLORER).scroll_into_view_if_needed()
    shoot(page, "0-ran-all")

    def state():
        return {name: bt.image_digest(page, sel) for name, sel in PICTURES.items()}

    def settled(previous: dict):
        """The new state once every picture differs from ``previous`` and the status line names the
        slider's lambda (the explorer writes it after the three pictures)."""
        def check():
            seen["idle"], seen["readout"] = _kernel_idle(page), _readout(page)
            seen["status"] = page.inner_text(f"{EXPLORER} .drsf-status")
            if not seen["idle"] or not seen["status"].startswith(f"λ = {seen['readout']}:"):
                return None
            now = state()
            seen["unchanged"] = [k for k in now if now[k] == previous[k]]
            return None if seen["unchanged"] else now
        return check

    seen: dict = {}

    states = [state()]
    pixels = [{name: bt.element_pixels(page, sel) for name, sel in PICTURES.items()}]
    readouts = [_readout(page)]
    handle = page.locator(f"{EXPLORER} .drsf-lam .noUi-handle")

    def record(name: str, what: str) -> None:
        states.append(bt.wait_until(settled(states[-1]), 90, what, last=lambda: seen))
        pixels.append({k: bt.element_pixels(page, sel) for k, sel in PICTURES.items()})
        readouts.append(_readout(page))
        for key in PICTURES:  # on screen too, not only in the bytes
            # tolerance 0: after a few smoke steps the features and the discriminator barely depend on
            # the twin (the feature colours move by 1-3 levels between lambda 0.5 and 0.7)
            changed = bt.pixels_changed(pixels[-2][key], pixels[-1][key], tolerance=0)
            assert changed >= 10, f"{key}: only {changed} pixels changed on screen ({name})"
        shoot(page, name, EXPLORER)

    # keyboard: focus the handle, four steps right (0.50 -> 0.70), then End (-> 1.00)
    handle.focus()
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    record("1-arrow-right", "the pictures to follow ArrowRight x4")
    assert readouts[-1] == "0.70"
    page.keyboard.press("End")
    record("2-end", "the pictures to follow End")
    assert readouts[-1] == "1.00"

    # mouse: drag the handle most of the way left along the track
    track = page.locator(f"{EXPLORER} .drsf-lam .noUi-target").bounding_box()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(track["x"] + 0.2 * track["width"], y, steps=8)
    page.mouse.up()
    record("3-dragged", "the pictures to follow the drag")
    assert float(readouts[-1]) < 0.5
    assert readouts == ["0.50", "0.70", "1.00", readouts[-1]]
    status = page.inner_text(f"{EXPLORER} .drsf-status")
    assert "discriminator's top domain" in status and "no adversary" not in status, status
    legend = page.inner_text(f"{EXPLORER} .drsf-prediction-legend")  # the overlay's colours are named
    assert re.search(r"[a-z]+ \d+%", legend), legend
    assert page.outside_requests == []
    assert json.loads(notebook.read_text())["cells"]  # the notebook file is still there and readable
