"""Training-domain validation: selection reads source val images and their twins, never a target image."""

from __future__ import annotations

import shutil

import pytest

from drsf_kit.errors import ConfigError
from drsf_kit.train.selection import select, validate_model, validation_score


@pytest.fixture(scope="module")
def val_data(tiny_weather, tmp_path_factory):
    from drsf_kit.data.mini_weather import holdout_split
    from drsf_kit.synth import SynthConfig
    from drsf_kit.synth.runner import run_synth

    root = tmp_path_factory.mktemp("selection-data")
    shutil.copytree(tiny_weather, root, dirs_exist_ok=True)
    holdout_split(root, 4)
    out = tmp_path_factory.mktemp("selection-synth")
    run_synth(SynthConfig(data=str(root), out=str(out), domains=("daytime_foggy", "night_sunny"), progress=False))
    return root, out / "procedural"


def test_validation_never_opens_a_target_image(val_data, monkeypatch):
    from drsf_kit.config import config_from_dict
    from drsf_kit.data import voc
    from drsf_kit.models import build_model

    root, synth = val_data
    cfg = config_from_dict({"task": "det", "variant": "source_only", "data": {
        "root": str(root), "synth_root": str(synth), "source_split": "fit",
        "synth_domains": ["daytime_foggy", "night_sunny"]}})
    opened = []
    real = voc.load_rgb
    monkeypatch.setattr(voc, "load_rgb", lambda p: (opened.append(str(p)), real(p))[1])
    model = build_model("det", "mini", "source_only", 3)
    rows = validate_model(model, cfg)
    val_ids = set((root / "daytime_clear/VOC2007/ImageSets/Main/val.txt").read_text().split())
    assert opened
    for path in opened:
        in_source = path.startswith(str(root / "daytime_clear"))
        in_synth = path.startswith(str(synth))
        assert in_source or in_synth, path
        assert path.rsplit("/", 1)[1].split(".")[0] in val_ids, path  # twins are named after their source id
    assert {r["domain"] for r in rows} == {"daytime_clear", "daytime_foggy", "night_sunny"}
    assert {r["split"] for r in rows} == {"val"}


def test_select_follows_validation_rows_and_ignores_target_scores():
    def rows(val, target):
        return [{"split": "val", "metric": "map50_voc07", "value": val, "class": None, "domain": "daytime_clear"},
                {"split": "all", "metric": "map50_voc07", "value": target, "class": None, "domain": "night_rainy"}]

    cands = {"a": rows(0.6, 0.1), "b": rows(0.5, 0.9)}
    assert select(cands, "det") == "a"
    assert validation_score(cands["b"], "det") == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        validation_score([r for r in cands["a"] if r["split"] != "val"], "det")
