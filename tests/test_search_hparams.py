"""benchmarks/search_hparams.py: trials score on held-out source and pseudo-domain images, never targets."""

from __future__ import annotations

import pytest

from drsf_kit.models.hparams import HPARAM_RANGES
from drsf_kit.utils.io import read_jsonl

def test_block_keys_and_split(load_benchmark):
    search = load_benchmark("search_hparams")
    mdsf_keys = search.block_keys("drsf", "mdsf")
    assert "alpha" in mdsf_keys and "tau" not in mdsf_keys and "method" not in mdsf_keys
    assert set(search.block_keys("drsf", "all")) <= set(HPARAM_RANGES)
    assert search.split_sources(16, 0.25) == (12, 4)
    with pytest.raises(SystemExit):
        search.split_sources(2, 0.9)


def test_search_writes_tidy_rows_on_validation_domains_only(tiny_weather, synth_root, tmp_path, load_benchmark):
    search = load_benchmark("search_hparams")
    out = tmp_path / "rows.jsonl"
    assert search.main(["--task", "seg", "--variant", "drsf", "--block", "dfdr", "--trials", "1", "--steps", "1",
                        "--val-frac", "0.125", "--out", str(out), f"data.root={tiny_weather}",
                        f"data.synth_root={synth_root}", "train.crop_size=[64,64]"]) == 0
    rows = read_jsonl(out)
    domains = {r["domain"] for r in rows}
    assert domains == {"source", "mean", "pseudo:daytime_foggy", "pseudo:dusk_rainy", "pseudo:night_sunny",
                       "pseudo:night_rainy"}
    assert all(r["trial"] == 0 and r["metric"] == "miou" and r["val_images"] == 2 and r["train_images"] == 14
               for r in rows)
    assert all(r["value"] is None or 0.0 <= r["value"] <= 1.0 for r in rows)


def test_protocol_trials_start_from_the_defaults_and_draw_one_block(load_benchmark):
    from drsf_kit.models.hparams import default_hparams

    search = load_benchmark("search_hparams")
    trials = search.protocol_trials("drsf", "det", "dfdr", 0, 3, "v2")
    assert [name for name, _ in trials] == ["default", "dfdr-t0", "dfdr-t1", "dfdr-t2"]
    defaults = default_hparams("drsf", "det", "v2")  # the trials of a v2 search start from v2's defaults
    assert trials[0][1] == defaults
    dfdr_keys = set(search.block_keys("drsf", "dfdr"))
    for _, hp in trials[1:]:
        changed = {k for k in hp if hp[k] != defaults[k]}
        assert changed and changed <= dfdr_keys and hp["method"] == "v2"
    assert search.protocol_trials("drsf", "det", "dfdr", 0, 3, "v2") == trials  # seeded: the same draws again
