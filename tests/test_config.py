"""Run configs: YAML + dotted overrides parsed by field type, clear errors, the shipped configs load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from drsf_kit.config import (
    RunConfig,
    check_paths,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
    with_overrides,
)
import drsf_kit.config as config_module
from drsf_kit.errors import ConfigError
from drsf_kit.models import get_variant
from drsf_kit.models.hparams import DEFAULT_METHOD, LEGACY_METHOD
from drsf_kit.train.builders import build_model_for
from drsf_kit.train.evaluate import read_run_config
from drsf_kit.train.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides_are_parsed_by_field_type(tmp_path):
    cfg = load_config(None, ["variant=drsf", "seed=1", f"data.root={tmp_path}", "train.max_steps=7",
                             f"output_dir={tmp_path / 'runs'}", "train.lr=2e-3", "train.amp=false",
                             "model.min_size=null", "model.max_size=400", "data.synth_domains=dusk_rainy,night_sunny",
                             "eval.domains=[daytime_clear, dusk_rainy]", "run_name=007", "model.hparams.w_adv=0.25"])
    assert isinstance(cfg, RunConfig)
    assert (cfg.variant, cfg.seed, cfg.train.max_steps) == ("drsf", 1, 7)
    assert cfg.data.root == str(tmp_path) and cfg.output_dir == str(tmp_path / "runs")
    assert cfg.train.lr == pytest.approx(0.002) and cfg.train.amp is False
    assert cfg.model.min_size is None and cfg.model.max_size == 400
    assert cfg.data.synth_domains == ("dusk_rainy", "night_sunny")
    assert cfg.eval.domains == ("daytime_clear", "dusk_rainy")
    assert cfg.run_name == "007" and cfg.run_dir == tmp_path / "runs" / "007"
    assert cfg.model.hparams == {"w_adv": 0.25}
    # the frozen config cannot be changed in place; with_overrides makes a new one
    with pytest.raises(AttributeError):
        cfg.seed = 3
    assert with_overrides(cfg, ["seed=3"]).seed == 3 and cfg.seed == 1


def test_yaml_file_then_overrides_and_round_trip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: seg\nvariant: mdsf\ntrain:\n  max_steps: 40\n  lr_steps: [10, 20]\n"
                    "  schedule: step\nmodel:\n  hparams:\n    alpha: 0.4\n")
    cfg = load_config(path, ["train.max_steps=50", "model.hparams.p_mix=0.7"])
    assert (cfg.task, cfg.variant, cfg.train.max_steps, cfg.train.lr_steps) == ("seg", "mdsf", 50, (10, 20))
    assert cfg.model.hparams == {"alpha": 0.4, "p_mix": 0.7}
    assert cfg.name == "seg-mdsf-0"
    saved = config_to_dict(cfg)
    again = config_from_dict(saved)
    # the saved form names the DRSF design the model is built with; it round-trips unchanged
    assert saved["model"]["hparams"] == {"alpha": 0.4, "p_mix": 0.7, "method": DEFAULT_METHOD}
    assert again == dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hparams=saved["model"]["hparams"]))
    assert config_to_dict(again) == saved


def test_saved_config_pins_the_method_and_an_old_folder_reads_as_v2(tmp_path):
    """A run folder records its DRSF design; one saved before the kit did so reads as the old default."""
    cfg = config_from_dict({"variant": "drsf", "output_dir": str(tmp_path), "run_name": "r"})
    assert config_to_dict(cfg)["model"]["hparams"] == {"method": DEFAULT_METHOD}
    assert config_to_dict(with_overrides(cfg, ["variant=naive_synth"]))["model"]["hparams"] == {}
    assert config_to_dict(config_from_dict({"variant": "drsf", "model": {"hparams": {"method": "v1"}}}))["model"]["hparams"] == {"method": "v1"}
    run = RunDir(cfg.run_dir)
    old = config_to_dict(cfg)
    old["model"]["hparams"] = {}
    run.path.mkdir(parents=True)
    run.write_config(old)
    assert run.read_config()["model"]["hparams"] == {"method": LEGACY_METHOD} != {"method": DEFAULT_METHOD}
    assert read_run_config(run.path).model.hparams == {"method": "v2"}
    plain = config_to_dict(config_from_dict({"variant": "naive_synth"}))
    run.write_config(plain)
    assert run.read_config()["model"]["hparams"] == {}


def test_config_resolves_variant_and_hparams_once(monkeypatch):
    """The config carries the resolved variant: building, checking and reading it resolves the hparams
    once, and the resolved mapping is read-only, unsaved and equal to what the model is built with."""
    calls = []
    real = config_module.resolve_hparams
    monkeypatch.setattr(config_module, "resolve_hparams", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = config_from_dict({"variant": "drsf", "task": "seg", "model": {"hparams": {"rho": 0.25}}})
    for _ in range(3):
        assert cfg.hparams["rho"] == 0.25 and cfg.hparams["method"] == DEFAULT_METHOD
        assert cfg.spec is cfg.spec and cfg.spec == get_variant("drsf")
    assert len(calls) == 1
    with pytest.raises(TypeError):
        cfg.hparams["rho"] = 0.5
    assert "hparams" not in dataclasses.asdict(cfg) and config_to_dict(cfg)["model"]["hparams"] == {"rho": 0.25, "method": DEFAULT_METHOD}
    model = build_model_for(cfg, load_pretrained=False)
    assert model.hparams == dict(cfg.hparams)
    # a copy with another variant resolves its own spec (the saved method does not follow onto a variant without blocks)
    plain = with_overrides(config_from_dict({"variant": "drsf"}), ["variant=naive_synth"])
    assert plain.spec == get_variant("naive_synth") and dict(plain.hparams) == {"twins_per_source": 1}


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_step'.*valid keys of train: max_steps"):
        load_config(None, ["train.max_step=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'variantt'.*valid keys of top level: task, variant"):
        load_config(None, ["variantt=drsf"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'"):
        load_config(None, ["trian.max_steps=3"])
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  rooot: x\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'data.rooot'.*valid keys of data: root"):
        load_config(path)


def test_bad_values_and_names_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown variant 'drfs'; valid: source_only, naive_synth, dfdr, mdsf, drsf"):
        load_config(None, ["variant=drfs"])
    with pytest.raises(ConfigError, match=r"'train.max_steps' expects an integer, got 'ten'"):
        load_config(None, ["train.max_steps=ten"])
    with pytest.raises(ConfigError, match=r"'train.max_steps' expects an integer, got '2.5'"):
        load_config(None, ["train.max_steps=2.5"])
    with pytest.raises(ConfigError, match=r"'train.amp' expects true/false"):
        load_config(None, ["train.amp=maybe"])
    with pytest.raises(ConfigError, match=r"unknown train.schedule 'linear'; valid: step, cosine, onecycle"):
        load_config(None, ["train.schedule=linear"])
    with pytest.raises(ConfigError, match=r"unknown data.protocol"):
        load_config(None, ["data.protocol=everything"])
    with pytest.raises(ConfigError, match=r"not of the form key=value"):
        parse_overrides(["train.max_steps"])
    with pytest.raises(ConfigError, match=r"hparam 'w_adv' does not apply to variant 'source_only'"):
        load_config(None, ["variant=source_only", "model.hparams.w_adv=0.1"])
    with pytest.raises(ConfigError, match=r"train.max_steps must be at least 1"):
        load_config(None, ["train.max_steps=0"])
    with pytest.raises(ConfigError, match=r"config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: a config must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_missing_data_and_synth_folders_are_named(tmp_path):
    cfg = load_config(None, [f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match=r"data.root '.*nowhere' does not exist; build the embedded data"):
        check_paths(cfg)
    (tmp_path / "data").mkdir()
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", f"data.synth_root={tmp_path / 'synth'}"])
    with pytest.raises(ConfigError, match=r"data.synth_root '.*synth' does not exist; variant 'drsf' trains on"):
        check_paths(cfg)
    # no synthetic data needed: the next thing checked is that the source domain has a folder
    with pytest.raises(ConfigError, match=r"data.source_domain names domain 'daytime_clear', which has no folder"):
        check_paths(with_overrides(cfg, ["variant=source_only"]))
    (tmp_path / "synth" / "daytime_foggy").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no folder for pseudo-domain\(s\) dusk_rainy, night_sunny, night_rainy"):
        check_paths(cfg)


def test_missing_data_folder_stops_fit_before_anything_is_written(tmp_path):
    from drsf_kit.train import fit

    cfg = load_config(None, [f"data.root={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError, match="does not exist"):
        fit(cfg)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name, ["seed=2"])
    assert cfg.seed == 2 and cfg.train.max_steps > 0
    if name.startswith("paper_det"):
        # the recipe of the authors' public code: 60k steps, lr 0.0025 x0.1 at 30k/40k, warm-up 500, 800 px
        t = cfg.train
        assert (t.max_steps, t.lr, t.lr_steps, t.warmup_steps, cfg.model.min_size) == (60000, 0.0025, (30000, 40000), 500, 800)
        assert cfg.train.batch_source == 1 and cfg.model.profile == "frcnn_r101_fpn"


def test_cli_overrides_may_follow_options(capsys):
    """`drsf train --config C --resume k=v`: overrides after an option still apply; a stray flag is refused."""
    from drsf_kit.cli import main

    config = str(ROOT / "configs" / "mini_det.yaml")
    assert main(["train", "--config", config, "seed=3", "--print-config", "model.hparams.w_adv=0.05", "train.lr=0.01"]) == 0
    printed = capsys.readouterr().out
    assert "seed: 3" in printed and "w_adv: 0.05" in printed and "lr: 0.01" in printed
    with pytest.raises(SystemExit) as stop:
        main(["train", "--config", config, "--print-config", "--no-such-flag"])
    assert stop.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
