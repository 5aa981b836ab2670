"""The packaging promises: environment.yml mirrors pyproject.toml, the CLI and module entry work."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_deps() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["project"]["dependencies"]


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pip_deps = [p for p in pip_section if not p.startswith("-e")]
    assert "-e ." in pip_section, "environment.yml must install the kit itself"
    assert sorted(pip_deps) == sorted(_pyproject_deps())


def test_requires_python_is_the_tested_version():
    """requires-python names the Python the environment installs (and these tests need: tomllib)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert data["project"]["requires-python"] == ">=" + python.split("=", 1)[1]


def test_declared_dependencies_are_used():
    """Every runtime dependency is imported somewhere in the kit (no dead weight in a fresh install)."""
    import re

    sources = "\n".join(p.read_text() for p in (ROOT / "drsf_kit").rglob("*.py"))
    import_names = {"pillow": "PIL", "pyyaml": "yaml", "scikit-learn": "sklearn", "opencv-python-headless": "cv2"}
    # used without an import of their own: servers and kernels the kit starts, and libraries that other
    # dependencies load at run time (diffusers' pipelines load transformers' text encoders; papermill
    # executes notebooks with nbclient and nbformat)
    not_imported = ("jupyterlab", "ipykernel", "jupyter_client", "tensorboard", "transformers", "nbformat", "nbclient")
    import_names.update(dict.fromkeys(not_imported))
    unused = []
    for dep in _pyproject_deps():
        name = re.split(r"[=<>!~\[; ]", dep, maxsplit=1)[0]
        module = import_names.get(name, name.replace("-", "_"))
        if module is None:  # a tool the kit runs (kernel, lab, board), not a module it imports
            continue
        if not re.search(rf"^\s*(import|from)\s+{re.escape(module)}\b", sources, re.MULTILINE):
            unused.append(name)
    assert not unused, f"declared in pyproject.toml but never imported: {', '.join(unused)}"


def test_torch_pins():
    deps = _pyproject_deps()
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def test_console_script_and_module_entry():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["scripts"]["drsf"] == "drsf_kit.cli:main"
    out = subprocess.run([sys.executable, "-m", "drsf_kit", "--help"], capture_output=True, text=True, check=True)
    assert "usage: drsf" in out.stdout
    for verb in ("data", "synth", "train", "eval", "gap", "batch"):
        assert verb in out.stdout, f"`drsf {verb}` is not registered"


def test_readme_quick_start_is_the_two_make_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test-all" in ci and "exit 1" in ci  # every tier runs; no Chromium is a failure


def test_docs_and_code_point_only_at_files_in_the_repository():
    """Every Markdown link and every ``docs/*.md`` / ``*.md`` name in docs, code, configs and notebooks exists here."""
    import re

    texts = [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "drsf_kit").rglob("*.py"),
             *(ROOT / "configs").rglob("*.yaml"), *(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "tests").rglob("*.py")]
    missing = []
    for path in texts:
        text = path.read_text(encoding="utf-8")
        links = [] if path.suffix == ".py" else [m for m in re.findall(r"\]\(([^)#\s]+)", text) if not re.match(r"[a-z]+:", m)]
        for link in links:
            if not (path.parent / link).resolve().is_relative_to(ROOT) or not (path.parent / link).exists():
                missing.append(f"{path.relative_to(ROOT)}: link {link}")
        for name in set(re.findall(r"\b((?:docs/)?[A-Z][A-Za-z_]*\.md|docs/[a-z_]+\.md)\b", text)):
            if not ((ROOT / name).exists() or (path.parent / name).exists()):
                missing.append(f"{path.relative_to(ROOT)}: names {name}")
    assert not missing, "pointers to files that are not in the repository:\n" + "\n".join(sorted(set(missing)))
