"""The papermill batch runner: stable hashing, one folder per point, skipping done points, failures."""

from __future__ import annotations

import hashlib
import json

import nbformat
import pytest

from drsf_kit import cli
from drsf_kit.workflows.sweep import (
    expand_grid,
    params_hash,
    parse_assignment,
    parse_grid,
    parse_value,
    point_dir,
    run_grid,
)
from drsf_kit.errors import ConfigError


def _write_notebook(path, fail_when: str = "X == 2"):
    """Three cells: parameters, a check that fails for some points, and a write into OUTPUT_DIR."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("X = 1\nNAME = 'a'\nOUTPUT_DIR = ''")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(f"if {fail_when}:\n    raise ValueError('bad point X=%r' % X)"),
        nbformat.v4.new_code_cell(
            "import json, os\n"
            "with open(os.path.join(OUTPUT_DIR, 'seen.json'), 'w') as fh:\n"
            "    json.dump({'X': X, 'NAME': NAME, 'type': type(X).__name__}, fh)"
        ),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_parse_values_and_grid():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5
    assert parse_value("true") is True and parse_value("False") is False and parse_value("null") is None
    assert parse_value("drsf") == "drsf" and parse_value("'7'") == "7" and parse_value("[1, 2]") == [1, 2]
    grid = parse_grid("VARIANT=source_only,naive_synth,drsf SEED=0,1,2")
    assert grid == {"VARIANT": ["source_only", "naive_synth", "drsf"], "SEED": [0, 1, 2]}
    assert parse_grid(["A=1", "B=x,y"]) == {"A": [1], "B": ["x", "y"]}
    points = expand_grid(grid)
    assert len(points) == 9 and points[0] == {"VARIANT": "source_only", "SEED": 0}
    assert parse_assignment("SMOKE=True") == ("SMOKE", True)
    for bad in ("VARIANT", "=1", "A=1 A=2", "2X=1"):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment("SMOKE")


def test_hash_is_stable_and_order_independent():
    a = params_hash({"VARIANT": "drsf", "SEED": 0})
    assert a == params_hash({"SEED": 0, "VARIANT": "drsf"})
    assert len(a) == 10 and all(ch in "0123456789abcdef" for ch in a)
    # the documented rule (SHA-1 of sorted, compact JSON): folder names must not drift between versions,
    # or sweeps stop resuming
    assert a == hashlib.sha1(b'{"SEED":0,"VARIANT":"drsf"}').hexdigest()[:10]
    assert a != params_hash({"VARIANT": "drsf", "SEED": 1})
    assert params_hash({"SEED": 1}) != params_hash({"SEED": "1"}) != params_hash({"SEED": True})
    assert params_hash({"SEED": 0, "OUTPUT_DIR": "/x"}) == params_hash({"SEED": 0})
    assert point_dir("out", "notebooks/04_train.ipynb", {"SEED": 0}).name == f"04_train-{params_hash({'SEED': 0})}"


def test_run_grid_runs_skips_and_continues_past_failure(tmp_path):
    notebook = _write_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "out"
    df = run_grid(notebook, {"X": [1, 2, 3]}, out_dir=out, base_parameters={"NAME": "b"}, progress=False)
    assert list(df["status"]) == ["done", "failed", "done"]
    assert list(df["X"]) == [1, 2, 3]
    for _, row in df.iterrows():
        folder = out / f"tiny-{params_hash({'NAME': 'b', 'X': row['X']})}"
        assert row["folder"] == str(folder)
        assert json.loads((folder / "parameters.json").read_text())["parameters"] == {"NAME": "b", "X": row["X"]}
        executed = nbformat.read(str(folder / "executed.ipynb"), as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
        if row["status"] == "done":
            assert (folder / "done").exists() and not (folder / "error.txt").exists()
            seen = json.loads((folder / "seen.json").read_text())
            assert seen == {"X": row["X"], "NAME": "b", "type": "int"}
        else:
            assert not (folder / "done").exists() and not (folder / "seen.json").exists()
            assert "bad point X=2" in (folder / "error.txt").read_text()
            assert "bad point X=2" in row["error"]
    assert not list(out.rglob("*.partial.ipynb"))

    # a second sweep skips what is done and retries only the failed point
    (out / f"tiny-{params_hash({'NAME': 'b', 'X': 1})}" / "seen.json").unlink()
    again = run_grid(notebook, {"X": [1, 2, 3]}, out_dir=out, base_parameters={"NAME": "b"}, progress=False)
    assert list(again["status"]) == ["skipped", "failed", "skipped"]
    assert not (out / f"tiny-{params_hash({'NAME': 'b', 'X': 1})}" / "seen.json").exists()  # not re-run


def test_cli_exit_code_and_summary(tmp_path, capsys):
    notebook = _write_notebook(tmp_path / "tiny.ipynb", fail_when="NAME == 'bad'")
    out = tmp_path / "runs"
    code = cli.main(["batch", str(notebook), "--grid", "X=5 NAME=ok", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "X=5 NAME=ok" in printed and "done" in printed and str(out) in printed
    code = cli.main(["batch", str(notebook), "--grid", "NAME=ok,bad", "-p", "X=5", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "skipped" in captured.out and "failed" in captured.out  # NAME=ok X=5 is the same point as above
    assert "error.txt" in captured.err
    assert cli.main(["batch", str(tmp_path / "missing.ipynb"), "--grid", "X=1", "--out", str(out)]) == 1
    assert "no such file" in capsys.readouterr().err


def test_undeclared_parameters_are_refused_before_anything_runs(tmp_path):
    notebook = _write_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "runs"
    with pytest.raises(ConfigError, match=r"tiny.ipynb: its parameters cell does not declare NAMES \(did you mean NAME\?\)"):
        run_grid(notebook, {"NAMES": ["a", "b"]}, out_dir=out, progress=False)
    with pytest.raises(ConfigError, match="does not declare SEED; it declares NAME, OUTPUT_DIR, X"):
        run_grid(notebook, {"X": [1]}, out_dir=out, base_parameters={"SEED": 0}, progress=False)
    bare = nbformat.v4.new_notebook()
    bare.cells = [nbformat.v4.new_code_cell("X = 1")]
    nbformat.write(bare, str(tmp_path / "bare.ipynb"))
    with pytest.raises(ConfigError, match="bare.ipynb: no cell tagged 'parameters'"):
        run_grid(tmp_path / "bare.ipynb", {"X": [1]}, out_dir=out, progress=False)
    assert not out.exists()  # refused up front: no point folder was made
