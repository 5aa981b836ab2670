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


# Test tiers. `fast` (the default, `make test`): everything except the `slow` and `browser` tests, which
# are deselected (not skipped), so a green run means every selected test ran. `extra` (`make test-slow`):
# only the slow and browser tests. `all`: both. In `extra` and `all` a browser test fails, never skips,
# when Chromium or playwright is missing (tests/browser/conftest.py). DRSF_RUN_SLOW=1 means `all`.
TIERS = ("fast", "extra", "all")
EXTRA_MARKERS = ("slow", "browser")


def pytest_addoption(parser):
    default = os.environ.get("DRSF_TEST_TIER") or ("all" if os.environ.get("DRSF_RUN_SLOW") else "fast")
    parser.addoption("--tier", choices=TIERS, default=default,
                     help="fast: no slow/browser tests (default); extra: only them; all: everything "
                          "(env DRSF_TEST_TIER; DRSF_RUN_SLOW=1 means all)")


def _is_extra(item) -> bool:
    # markers only: item.keywords also holds folder names, and tests/browser/ holds plain tests too
    return any(item.get_closest_marker(name) is not None for name in EXTRA_MARKERS)


def pytest_collection_modifyitems(config, items):
    tier = config.getoption("--tier")
    if tier == "all":
        return
    keep = [item for item in items if _is_extra(item) == (tier == "extra")]
    dropped = [item for item in items if _is_extra(item) != (tier == "extra")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_report_header(config):
    tier = config.getoption("--tier")
    what = {"fast": "slow and browser tests deselected (make test-all runs them)",
            "extra": "only the slow and browser tests", "all": "every test"}[tier]
    return f"drsf_kit test tier: {tier} ({what})"


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("sdg_protocol")``: a fresh module object of ``benchmarks/<name>.py`` (the scripts
    are not a package, so tests load them by path)."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


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
