"""`drsf app` is safe by default: a token in the printed address, a Host-header check, a cap on live
page kernels, idle kernels culled, and no tracebacks sent to the visitor."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from drsf_kit.workflows.app import free_port, voila_command


def _flag(cmd: list[str], name: str) -> str:
    return next(c.split("=", 1)[1] for c in cmd if c.startswith(f"--{name}="))


def test_voila_command_secures_the_server(tmp_path):
    cmd = voila_command(tmp_path / "page.ipynb", 8123, token="abc", idle_timeout=120, max_kernels=3)
    assert _flag(cmd, "Voila.auto_token") == "True" and not any("abc" in c for c in cmd)  # token_env carries it
    settings = eval(_flag(cmd, "Voila.tornado_settings"))  # noqa: S307 (the literal traitlets parses)
    assert settings["allow_remote_access"] is False and settings["local_hostnames"] == ["localhost"]
    assert _flag(cmd, "VoilaConfiguration.show_tracebacks") == "False"
    assert _flag(cmd, "VoilaConfiguration.multi_kernel_manager_class") == "drsf_kit.workflows.app_kernels.CappedKernelManager"
    assert _flag(cmd, "CappedKernelManager.max_kernels") == "3"
    assert _flag(cmd, "MappingKernelManager.cull_idle_timeout") == "120"
    assert _flag(cmd, "MappingKernelManager.cull_connected") == "True"


def test_kernel_cap_refuses_with_503():
    pytest.importorskip("jupyter_server")
    from tornado.web import HTTPError

    from drsf_kit.workflows.app_kernels import CappedKernelManager

    manager = CappedKernelManager(max_kernels=2)
    manager.list_kernel_ids = lambda: ["a", "b"]
    with pytest.raises(HTTPError) as info:
        asyncio.run(manager.start_kernel())
    assert info.value.status_code == 503 and "at most 2 pages" in info.value.log_message


def _get(url: str, host: str | None = None) -> tuple[int, str]:
    """Status and body of one GET, redirects not followed (a redirect to the login page is a refusal)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                     headers={"Host": host} if host else {})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


@pytest.mark.slow
def test_served_app_needs_its_token_checks_host_caps_and_culls_kernels(tmp_path):
    pytest.importorskip("voila")
    page = tmp_path / "page.ipynb"
    page.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "raise ValueError('secret-detail-of-the-server')"}]}))
    rows = tmp_path / "rows.json"
    rows.write_text("[]")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "drsf_kit", "app", "--runs", str(rows), "--port", str(port),
                             "--notebook", str(page), "--max-kernels", "1", "--idle-timeout", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        url = None
        for line in proc.stdout:
            found = re.search(r"serving (http://127\.0\.0\.1:\d+/\?token=(\w+))", line)
            if found:
                url, token = found.group(1), found.group(2)
                break
        assert url and len(token) >= 32
        base = f"http://127.0.0.1:{port}/"
        assert _get(base)[0] in (302, 403)  # no token: sent to the login page, no kernel
        assert _get(url, host=f"evil.example:{port}")[0] == 403  # DNS rebinding: refused
        status, body = _get(url)
        assert status == 200 and "secret-detail" not in body and "Traceback" not in body
        status, body = _get(url)  # the first page's kernel is alive: the cap of 1 is reached
        assert status == 503 and "Too many open pages" in body and "Traceback" not in body
        deadline = time.monotonic() + 60
        while status == 503 and time.monotonic() < deadline:  # culled once idle: a new view is served
            time.sleep(1)
            status = _get(url)[0]
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_no_token_is_explicit_and_says_so(tmp_path, monkeypatch, capsys):
    import drsf_kit.workflows.app as app
    from drsf_kit.cli import main

    started, envs = [], []

    class FakeServer:
        def __init__(self, cmd, **kwargs):
            started.append(cmd)
            envs.append(kwargs.get("env") or {})

        def wait(self):
            return 0

    monkeypatch.setattr(app.subprocess, "Popen", FakeServer)
    monkeypatch.setattr(app, "wait_for_port", lambda *a, **k: None)
    monkeypatch.setattr(app, "_stop", lambda process: None)
    page = tmp_path / "page.ipynb"
    page.write_text("{}")
    rows = tmp_path / "rows.json"
    rows.write_text("[]")
    assert main(["app", "--runs", str(rows), "--notebook", str(page), "--no-token"]) == 0
    out = capsys.readouterr().out
    assert "--no-token: no token is asked" in out and "trusted single-user machine" in out
    assert re.search(r"serving http://127\.0\.0\.1:\d+/  ", out) and _flag(started[0], "Voila.token") == ""
    assert main(["app", "--runs", str(rows), "--notebook", str(page)]) == 0  # the default: a token
    assert re.search(r"serving http://127\.0\.0\.1:\d+/\?token=\w{48}", capsys.readouterr().out)
    assert len(envs[1]["JUPYTER_TOKEN"]) == 48 and "JUPYTER_TOKEN" not in envs[0]  # in the environment, not argv
    assert not any(envs[1]["JUPYTER_TOKEN"] in part for part in started[1])
