"""The Voilà app (`drsf app`): how it picks its results, and the dashboard in Chromium.

The browser test serves a folder of runs whose result rows have known values, then drives the page as
a person would (clicks on the DFDR toggle, the variant list and the domain list) and checks that the
table shows exactly the expected rows, columns and numbers and that the bar chart's picture changes.
"""

from __future__ import annotations

import json
import sys

import pytest

from drsf_kit.workflows.app import (
    PAGE,
    TEMPLATES,
    ResultsSource,
    load_rows_file,
    port_is_free,
    resolve_results,
    voila_command,
    voila_env,
)
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.utils.io import append_jsonl, atomic_write_text

VARIANTS = ("source_only", "naive_synth", "dfdr", "mdsf", "drsf")
DOMAINS = ("daytime_clear", "daytime_foggy", "dusk_rainy", "night_rainy", "night_sunny")
SHORT = {"daytime_clear": "DC", "daytime_foggy": "DF", "dusk_rainy": "DR", "night_rainy": "NR", "night_sunny": "NS"}
SEEDS = (0, 1)


def _value(variant: str, domain: str, seed: int) -> float:
    # whole percents per (variant, domain); seeds 0 and 2 points apart -> mean +1, std 1.4
    return 0.10 + 0.08 * VARIANTS.index(variant) + 0.03 * DOMAINS.index(domain) + 0.02 * seed


def _cell(variant: str, domain: str) -> str:
    values = [_value(variant, domain, s) for s in SEEDS]
    return f"{100 * sum(values) / len(values):.1f} ± 1.4"


def _write_runs(folder) -> None:
    """One run folder per (variant, seed) with det rows for every domain and two metrics."""
    for variant in VARIANTS:
        for seed in SEEDS:
            run = f"det-{variant}-{seed}"
            for domain in DOMAINS:
                for metric, offset in (("map50_voc07", 0.0), ("ap50_coco", 0.05)):
                    append_jsonl(folder / run / "results.jsonl", {
                        "task": "det", "variant": variant, "seed": seed, "domain": domain,
                        "split": "test" if domain == "daytime_clear" else "all", "protocol": "all_images",
                        "metric": metric, "value": _value(variant, domain, seed) + offset, "step": 2,
                        "run": run, "class": None,
                    })


# ------------------------------------------------------------------------------------- without a browser
def test_resolve_results_order(tmp_path):
    root = tmp_path / "project"
    with pytest.raises(ConfigError, match="no results found.*make them with `drsf demo`"):
        resolve_results(root=root)  # the app trains nothing of its own: it names the command
    assert not (root / "runs").exists()
    bench = root / "benchmarks" / "results" / "sdg_mini.json"
    row = {"task": "det", "variant": "drsf", "seed": 0, "domain": "daytime_clear", "metric": "map50_voc07", "value": 0.5}
    atomic_write_text(bench, json.dumps({"rows": [row]}))
    assert resolve_results(root=root) == ResultsSource("benchmark", bench.resolve())
    assert len(load_rows_file(bench)) == 1
    _write_runs(root / "runs" / "demo")
    assert resolve_results(root=root).kind == "demo"  # the demo's results win over the benchmark's
    _write_runs(tmp_path / "mine")
    chosen = resolve_results(tmp_path / "mine", root=root)
    assert chosen.kind == "runs" and chosen.path == (tmp_path / "mine").resolve()
    assert str(tmp_path / "mine") in chosen.note


def test_resolve_results_bad_input_names_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        resolve_results(tmp_path / "nowhere", root=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no results.jsonl"):
        resolve_results(tmp_path / "empty", root=tmp_path)
    bad = tmp_path / "rows.json"
    atomic_write_text(bad, "{not json")
    with pytest.raises(DataError, match="rows.json: not valid JSON"):
        resolve_results(bad, root=tmp_path)
    atomic_write_text(bad, json.dumps({"rows": 3}))
    with pytest.raises(DataError, match="expected a JSON list of result rows"):
        load_rows_file(bad)


def test_voila_command_and_env(tmp_path):
    source = ResultsSource("runs", tmp_path)
    cmd = voila_command(tmp_path / "page.ipynb", 8123)
    assert cmd[:3] == [sys.executable, "-m", "voila"]
    assert "--port=8123" in cmd and "--Voila.ip=127.0.0.1" in cmd and "--no-browser" in cmd and "--template=drsf" in cmd
    env = voila_env(source, base={"JUPYTER_PATH": "/elsewhere"})
    assert env["DRSF_APP_RESULTS"] == str(tmp_path) and env["DRSF_APP_KIND"] == "runs"
    assert env["JUPYTER_PATH"].split(":") == [str(TEMPLATES), "/elsewhere"]
    assert (TEMPLATES / "voila" / "templates" / "drsf" / "index.html.j2").is_file() and PAGE.is_file()
    assert env["HF_HUB_OFFLINE"] == "1"


def test_page_parts_headless(tmp_path):
    """What the page's cells build, without a browser: the dashboard over the runs, the explorer on an
    untrained model when no drsf/mdsf run has a checkpoint, on rendered scenes and procedural twins."""
    from drsf_kit.workflows.app import demo_scenes, explorer_model, page_dashboard, page_explorer

    _write_runs(tmp_path / "runs")
    source = ResultsSource("runs", tmp_path / "runs")
    page = page_dashboard(source)
    dash = page.children[1]
    assert "results of" in page.children[0].value and list(dash.table_df.index) == list(VARIANTS)
    scenes = demo_scenes(2, height=64, width=96)
    assert list(scenes) == ["scene 0", "scene 1"]
    assert list(scenes["scene 0"]) == ["daytime_clear", "daytime_foggy", "dusk_rainy", "night_sunny", "night_rainy"]
    assert all(tuple(img.shape) == (3, 64, 96) for img in scenes["scene 1"].values())
    assert not _torch_equal(scenes["scene 0"]["daytime_clear"], scenes["scene 0"]["daytime_foggy"])
    model, names, note = explorer_model(source)
    assert "untrained" in note and names[0] == "daytime_clear" and len(names) == 5
    explorer = page_explorer(source, n_scenes=1).children[1]
    before = explorer.feature_png
    explorer.controls["lam"].value = 1.0
    # the default design (v3) builds no adversary: the features move with lambda, the posterior panel says why it is empty
    assert explorer.feature_png != before and explorer.domain_probs is None
    assert "no adversary" in explorer.status.value


def _torch_equal(a, b) -> bool:
    """Whether two tensors hold the same values."""
    import torch

    return bool(torch.equal(a, b))


@pytest.mark.slow
def test_explorer_uses_a_run_made_by_workflows(tmp_path):
    """The app reads runs the one orchestration path made: a 3-step drsf segmenter feeds the explorer."""
    from drsf_kit.workflows import notebook as nbk
    from drsf_kit.workflows.app import explorer_model

    ctx = nbk.setup(SMOKE=True, OUTPUT_DIR=str(tmp_path))
    run_dir = nbk.ensure_run(ctx, "seg", "drsf", progress=False)
    source = resolve_results(ctx.runs_dir, root=tmp_path)
    assert source.kind == "runs"
    model, names, note = explorer_model(source)
    assert "trained run" in note and str(run_dir) in note and model.trained_steps == 3


def test_port_in_use_is_refused():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert not port_is_free(s.getsockname()[1])


# ------------------------------------------------------------------------------------------ in Chromium
TABLE_JS = """(root) => {
    const table = root.querySelector('table');
    if (!table) return null;
    const head = Array.from(table.querySelectorAll('thead tr:first-child th')).slice(1).map(th => th.innerText.trim());
    const rows = Array.from(table.querySelectorAll('tbody tr')).map(tr => [
        tr.querySelector('th').innerText.trim(), Array.from(tr.querySelectorAll('td')).map(td => td.innerText.trim())]);
    return {head, rows, caption: (table.querySelector('caption') || {innerText: ''}).innerText};
}"""


def _table(page):
    return page.eval_on_selector(".drsf-table-html", TABLE_JS)


@pytest.mark.browser
def test_voila_dashboard_controls_change_table_and_chart(tmp_path, start_server, page, shoot, bt):
    import voila  # noqa: F401  (the [app] extra; a missing one fails this test, as a missing browser does)
    runs = tmp_path / "runs"
    _write_runs(runs)
    port = bt.free_port()
    server = start_server([sys.executable, "-m", "drsf_kit", "app", "--runs", str(runs), "--port", str(port)],
                          bt.root, bt.server_env(tmp_path))
    url = server.wait_for_line(r"serving (http://127\.0\.0\.1:\d+/\?token=\w+)", timeout=180).group(1)
    assert url.startswith(f"http://127.0.0.1:{port}/?token=")  # the page asks for the printed token

    page.goto(url, wait_until="commit")
    page.wait_for_selector(".drsf-ablation-dashboard .drsf-chart", state="visible", timeout=180_000)
    page.wait_for_selector(".drsf-mdsf-explorer .drsf-features", state="visible", timeout=120_000)
    server.remember_children()  # the page's kernel, so the end of the test can stop it too
    assert str(runs) in page.inner_text(".drsf-results-source")
    shoot(page, "0-loaded")
    shoot(page, "0-chart", ".drsf-chart")

    # initial state: every variant, every domain, default metric
    table = _table(page)
    assert "mAP@0.5" in table["caption"] and "all_images" in table["caption"]
    assert [r[0] for r in table["rows"]] == list(VARIANTS)
    assert table["head"] == [f"{d} ({SHORT[d]})" for d in DOMAINS] + ["target_mean", "seeds"]
    assert table["rows"][VARIANTS.index("drsf")][1][0] == _cell("drsf", "daytime_clear")
    chart = [bt.image_digest(page, ".drsf-chart")]
    pixels = [bt.element_pixels(page, ".drsf-chart")]

    def chart_changed():
        digest = bt.image_digest(page, ".drsf-chart")
        return digest if digest != chart[-1] else None

    # the DFDR block toggle: only the variant carrying exactly DFDR stays
    page.click(".drsf-dfdr input[type=checkbox]")
    chart.append(bt.wait_until(chart_changed, 30, "the chart to change after ticking DFDR"))
    bt.wait_until(lambda: [r[0] for r in _table(page)["rows"]] == ["dfdr"], 30, "the table to show only dfdr")
    assert _table(page)["rows"][0][1][:5] == [_cell("dfdr", d) for d in DOMAINS]
    selected = page.eval_on_selector(".drsf-variants select", "s => Array.from(s.selectedOptions).map(o => o.value)")
    assert selected == ["dfdr"]
    pixels.append(bt.element_pixels(page, ".drsf-chart"))
    assert bt.pixels_changed(pixels[0], pixels[1]) > 100
    shoot(page, "1-dfdr-ticked")
    shoot(page, "1-chart", ".drsf-chart")

    # the variant list: a click on source_only selects it alone, ctrl+click adds drsf
    page.locator(".drsf-variants select option", has_text="source_only").click()
    chart.append(bt.wait_until(chart_changed, 30, "the chart to change after picking source_only"))
    assert not page.is_checked(".drsf-dfdr input[type=checkbox]")  # a hand-picked set is no block filter
    page.locator(".drsf-variants select option", has_text="drsf").click(modifiers=["Control"])
    chart.append(bt.wait_until(chart_changed, 30, "the chart to change after adding drsf"))
    bt.wait_until(lambda: [r[0] for r in _table(page)["rows"]] == ["source_only", "drsf"], 30,
                  "the table to show source_only and drsf")
    pixels.append(bt.element_pixels(page, ".drsf-chart"))
    assert bt.pixels_changed(pixels[1], pixels[2]) > 100
    shoot(page, "2-variants-picked")

    # the domain list: night_rainy alone, then the source added back
    page.locator(".drsf-domains select option", has_text="night_rainy").click()
    chart.append(bt.wait_until(chart_changed, 30, "the chart to change after picking night_rainy"))
    bt.wait_until(lambda: _table(page)["head"][0] == "night_rainy (NR)", 30, "the table to show night_rainy only")
    table = _table(page)
    assert table["head"] == ["night_rainy (NR)", "target_mean", "seeds"]
    assert [r[1][0] for r in table["rows"]] == [_cell("source_only", "night_rainy"), _cell("drsf", "night_rainy")]
    page.locator(".drsf-domains select option", has_text="daytime_clear").click(modifiers=["Control"])
    chart.append(bt.wait_until(chart_changed, 30, "the chart to change after adding daytime_clear"))
    bt.wait_until(lambda: _table(page)["head"][:2] == ["daytime_clear (DC)", "night_rainy (NR)"], 30,
                  "the table to show daytime_clear and night_rainy")
    table = _table(page)
    assert [r[1][:2] for r in table["rows"]] == [[_cell(v, "daytime_clear"), _cell(v, "night_rainy")]
                                                 for v in ("source_only", "drsf")]
    pixels.append(bt.element_pixels(page, ".drsf-chart"))
    assert bt.pixels_changed(pixels[2], pixels[3]) > 100
    assert len(set(chart)) == len(chart)  # every step drew a new picture
    shoot(page, "3-domains-picked")
    shoot(page, "3-chart", ".drsf-chart")
    assert page.outside_requests == []  # the page loads nothing from outside this machine
