"""Shared pytest setup: offline hub, few threads, and a tiny mini-weather dataset."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


def pytest_configure(config):
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("DRSF_RUN_SLOW"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: set DRSF_RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def tiny_weather(tmp_path_factory):
    """A small mini-weather dataset (all five domains) shared by the whole test session.

    16 source train + 8 source test images, 8 images per target domain, at the native 180x320.
    """
    from drsf_kit.data.mini_weather import make_mini_weather

    root = tmp_path_factory.mktemp("mini-weather")
    make_mini_weather(root, seed=0, n_train=16, n_test=8, n_target=8, progress=False)
    return root


@pytest.fixture(scope="session")
def synth_root(tiny_weather, tmp_path_factory):
    """Procedural pseudo-domains of ``tiny_weather``, made once through the `drsf synth` command."""
    from drsf_kit.cli import main

    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--data", str(tiny_weather), "--backend", "procedural", "--out", str(out),
                 "--no-progress"]) == 0
    return out / "procedural"
