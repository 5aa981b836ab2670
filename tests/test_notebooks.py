"""The notebooks: structure rules, and every notebook runs top to bottom with SMOKE=True (papermill).

Structure: opens with a Markdown cell stating its question, exactly one cell tagged ``parameters``
(with ``SMOKE``), imports from drsf_kit, no ``def``/``class``/``lambda``, committed without outputs,
ends by saving a figure or table through ``drsf_kit.workflows.notebook``.

Execution: the notebooks share one smoke workspace (``OUTPUT_DIR``) in the order they are numbered, as
``make demo`` runs them; each still builds what it needs when it is missing. Nothing is skipped: a
kit module that a notebook imports and that is missing (say, after a rename) fails its test.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = (
    "00_check_environment", "01_explore_domains", "02_generate_pseudo_domains", "03_measure_domain_gap",
    "04_train_detector", "05_train_segmenter", "06_evaluate_targets", "07_entropy_and_attribution",
    "08_explore_mdsf_interpolation", "09_ablation_dashboard", "10_batch_sweeps",
)
SAVE_CALL = re.compile(r"\bnbk\.save_(figure|table|png)\(")


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _read(path: Path):
    return nbformat.read(str(path), as_version=4)


def _code(cell) -> str:
    # IPython magics and shell escapes are not Python; blank them before parsing
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines())


def _imports(nb) -> list[tuple[str, str | None]]:
    """(module, name) for every ``from drsf_kit... import name`` and (module, None) for ``import drsf_kit...``."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(_code(cell))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("drsf_kit"):
                found.extend((node.module, alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                found.extend((a.name, None) for a in node.names if a.name.startswith("drsf_kit"))
    return found


def _import_all(nb) -> None:
    """Import every drsf_kit module and name the notebook imports; a missing one raises here, by name."""
    for module, attr in _imports(nb):
        mod = importlib.import_module(module)
        if attr is not None and not hasattr(mod, attr):
            importlib.import_module(f"{module}.{attr}")  # a sub-module imported by name


def test_the_expected_notebooks_exist():
    assert [p.stem for p in _notebooks()] == list(EXPECTED)


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_structure(path):
    nb = _read(path)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("#"), "open with a Markdown title"
    assert "?" in first.source.split("\n\n")[0] + first.source, "the first cell states the question it answers"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    params = tagged[0]
    assert params.cell_type == "code"
    assigned = {t.id for node in ast.parse(params.source).body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert {"SMOKE", "OUTPUT_DIR"} <= assigned
    assert all(isinstance(node, ast.Assign) for node in ast.parse(params.source).body), "parameters: assignments only"
    import papermill

    # papermill must read every parameter (an "=" inside a comment hides it from `papermill --help-notebook`)
    assert set(papermill.inspect_notebook(str(path))) == assigned
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert not cell.get("outputs") and cell.get("execution_count") is None, "commit notebooks without outputs"
        for node in ast.walk(ast.parse(_code(cell))):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), (
                f"{path.name}: notebooks define no functions, classes or lambdas (move it into the package)"
            )
    assert ("drsf_kit.workflows", "notebook") in _imports(nb), "use the package helpers: from drsf_kit.workflows import notebook as nbk"
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert SAVE_CALL.search(code_cells[-1].source), "the last code cell saves a figure or a table"
    assert nb.metadata.get("kernelspec", {}).get("language") == "python"


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebook-smoke")


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, smoke_dir):
    from drsf_kit.workflows.sweep import execute_notebook

    nb = _read(path)
    _import_all(nb)
    executed = smoke_dir / "executed" / path.name
    execute_notebook(path, executed, {"SMOKE": True, "OUTPUT_DIR": str(smoke_dir)}, timeout=600)
    out = _read(executed)
    errors = [o for c in out.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    saved = sorted(p.name for p in (smoke_dir / "figures").glob("*"))
    assert any(p.startswith(path.stem[:2]) for p in saved), f"{path.name} saved nothing under figures/: {saved}"


# ----------------------------------------------------------------------------------- the package helpers
def test_setup_resolves_paths_and_checks_parameters(tmp_path, monkeypatch):
    from drsf_kit.workflows import notebook as nbk
    from drsf_kit.errors import ConfigError

    monkeypatch.chdir(ROOT / "notebooks")  # Jupyter starts kernels in the notebook's folder
    ctx = nbk.setup(SMOKE=False, DATA_ROOT="data/mini-weather", RUNS_DIR="runs/x", SEED=3, DEVICE="cpu",
                    VARIANT="drsf", OUTPUT_DIR="")
    assert ctx.root == ROOT and ctx.data_root == ROOT / "data" / "mini-weather"
    assert ctx.runs_dir == ROOT / "runs" / "x" and ctx.figures_dir == ROOT / "figures" and ctx.seed == 3
    smoke = nbk.setup(SMOKE=True, DATA_ROOT="/elsewhere", OUTPUT_DIR=str(tmp_path))
    assert smoke.data_root.is_relative_to(tmp_path) and smoke.runs_dir.is_relative_to(tmp_path)
    assert smoke.figures_dir == tmp_path / "figures"
    assert nbk.setup(SMOKE=True).output_dir == ROOT / "runs" / "smoke"  # never the demo's folders
    monkeypatch.chdir(tmp_path)  # a notebook copied out of the checkout still finds the project
    assert nbk.project_root() == ROOT and nbk.resolve_path("configs") == ROOT / "configs"
    monkeypatch.setenv("DRSF_PROJECT_ROOT", str(tmp_path))
    assert nbk.project_root() == tmp_path
    assert nbk.check_parameters(VARIANTS="drsf,dfdr")["VARIANTS"] == ["drsf", "dfdr"]
    assert nbk.check_parameters(SEEDS="0,2")["SEEDS"] == [0, 2]
    # parameters that are run-config keys get config.py's own message, prefixed with the parameter
    for bad, match in (({"VARIANT": "best"}, "VARIANT='best': unknown variant 'best'; valid: source_only"),
                       ({"SEED": -1}, "SEED=-1: seed must be 0 or more"), ({"SMOKE": "yes"}, "SMOKE"),
                       ({"DEVICE": "gpu"}, "DEVICE='gpu': unknown device"), ({"DOMAINS": ["fog"]}, "fog"),
                       ({"VARIANTS": ["drsf", "best"]}, "VARIANTS='best': unknown variant"),
                       ({"MAX_STEPS": "many"}, "MAX_STEPS='many': config key 'train.max_steps' expects an integer"),
                       ({"seed": 1}, "UPPER_CASE")):
        with pytest.raises(ConfigError, match=match):
            nbk.setup(**bad)


def test_save_figure_and_table(tmp_path):
    import pandas as pd
    from matplotlib.figure import Figure

    from drsf_kit.workflows import notebook as nbk
    from drsf_kit.errors import ConfigError

    ctx = nbk.setup(SMOKE=True, OUTPUT_DIR=str(tmp_path))
    fig = Figure()
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    path = nbk.save_figure(fig, "00_line")
    assert path == ctx.figures_dir / "00_line.png" and path.read_bytes().startswith(b"\x89PNG")
    table = pd.DataFrame({"value": [0.5, 1.0]}, index=pd.Index(["a", "b"], name="item"))
    md = nbk.save_table(table, "00_table", caption="Table: test, %")
    text = md.read_text()
    assert text.startswith("Table: test, %") and "| item | value |" in text and "| b | 1 |" in text
    assert (ctx.figures_dir / "00_table.csv").read_text().splitlines()[0] == "item,value"
    with pytest.raises(ConfigError, match="name"):
        nbk.save_figure(fig, "../escape")
    assert not list(ctx.figures_dir.glob("*.tmp"))


def test_environment_table(tmp_path):
    from drsf_kit.workflows import notebook as nbk

    ctx = nbk.setup(SMOKE=True, OUTPUT_DIR=str(tmp_path), DEVICE="cpu")
    table = nbk.environment_table(ctx)
    assert table.loc["torch", "status"] == "ok" and table.loc["papermill", "status"] == "ok"
    assert table.loc["device", "value"] == "cpu -> cpu"


def test_fidelity_scenes_show_each_level_of_a_twin_next_to_a_real_image(tiny_weather, tmp_path):
    import numpy as np

    from drsf_kit.workflows import notebook as nbk
    from drsf_kit.viz import overview

    ctx = nbk.setup(SMOKE=False, DATA_ROOT=str(tiny_weather), OUTPUT_DIR=str(tmp_path))
    scenes = nbk.fidelity_scenes(ctx, "night_sunny", n=2)
    assert len(scenes) == 2
    scene = next(iter(scenes.values()))
    assert list(scene) == ["daytime_clear", "night_sunny twin, clean", "night_sunny twin, ldm",
                           "night_sunny twin, ldm_gap", "real night_sunny (another scene)"]
    assert len({a.shape for a in scene.values()}) == 1
    clean, gap = scene["night_sunny twin, clean"], scene["night_sunny twin, ldm_gap"]
    assert gap.mean() > clean.mean() + 10  # a generator's night: lighter than the recipe's
    assert overview.twins_figure(scenes) is not None


def test_the_training_notebooks_share_their_code_through_one_workflow_call():
    """04 and 05 differ in their task, names and prose only: the steps are ``nbk.train_variants``."""
    codes = {}
    for stem, task in (("04_train_detector", "det"), ("05_train_segmenter", "seg")):
        nb = _read(ROOT / "notebooks" / f"{stem}.ipynb")
        cells = [c.source for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
        assert sum(f'nbk.train_variants(ctx, "{task}"' in c for c in cells) == 1
        codes[task] = [c.replace(f'"{task}"', '"TASK"').replace(stem[:2], "NN") for c in cells]
    seg = [c.replace("miou", "map50_voc07").replace("_seg_", "_det_") for c in codes["seg"]]
    assert codes["det"] == seg
