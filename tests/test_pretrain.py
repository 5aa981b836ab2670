"""`drsf pretrain`: the cache key follows every setting (not the folder the project sits in), and only
source training images are read, by either objective."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from drsf_kit.models import build_model
from drsf_kit.train import pretrain as pt


@pytest.fixture(scope="module")
def weather_copy(tiny_weather, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain-data")
    shutil.copytree(tiny_weather, root, dirs_exist_ok=True)
    return root


def test_cache_key_same_settings_same_name_any_change_new_name(weather_copy, tmp_path):
    cfg = pt.PretrainConfig(task="det", data_root=str(weather_copy), steps=3, out=str(tmp_path))
    assert pt.weights_path(cfg) == pt.weights_path(pt.PretrainConfig(**dataclasses.asdict(cfg)))
    changes = dict(task="seg", steps=4, batch_size=16, lr=1e-3, temperature=0.5, crop_hw=(32, 64), crop_scale=(0.5, 1.0),
                   jitter=0.2, jitter_p=0.5, gray_p=0.0, blur_p=0.0, seed=1, split="test")
    names = {pt.weights_path(cfg).name}
    for key, value in changes.items():
        name = pt.weights_path(dataclasses.replace(cfg, **{key: value})).name
        assert name not in names, key
        names.add(name)
    # the same settings on another image list (one id less) is another warm start
    split = weather_copy / "daytime_clear" / "VOC2007" / "ImageSets" / "Main" / "train.txt"
    other = tmp_path / "other"
    shutil.copytree(weather_copy, other)
    ids = split.read_text().split()
    (other / "daytime_clear" / "VOC2007" / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:-1]) + "\n")
    assert pt.weights_path(dataclasses.replace(cfg, data_root=str(other))).name not in names
    # the cache folder is not part of the key
    assert pt.weights_path(dataclasses.replace(cfg, out=str(tmp_path / "x"))).name == pt.weights_path(cfg).name


def test_cache_key_does_not_depend_on_where_the_project_lives(weather_copy, tmp_path, monkeypatch):
    names = []
    for place in ("a", "b"):
        project = tmp_path / place
        shutil.copytree(weather_copy, project / "data" / "w")
        monkeypatch.chdir(project)
        names.append(pt.weights_path(pt.PretrainConfig(task="det", data_root="data/w", steps=3)).name)
    assert names[0] == names[1]
    assert names[0] != pt.weights_path(pt.PretrainConfig(task="det", data_root="data/w", steps=3, objective="simclr")).name


def test_simclr_reads_only_source_training_images_and_loads_as_backbone(weather_copy, tmp_path, monkeypatch):
    opened = []
    real = pt._load_images

    def spy(paths):
        opened.extend(paths)
        return real(paths)

    monkeypatch.setattr(pt, "_load_images", spy)
    import PIL.Image

    real_open = PIL.Image.open
    every = []
    monkeypatch.setattr(PIL.Image, "open", lambda fp, *a, **k: (every.append(str(fp)), real_open(fp, *a, **k))[1])
    cfg = pt.PretrainConfig(task="det", data_root=str(weather_copy), steps=2, batch_size=4, crop_hw=(32, 56),
                            objective="simclr", out=str(tmp_path))
    path = pt.pretrain(cfg, progress=False)
    train_ids = set((weather_copy / "daytime_clear/VOC2007/ImageSets/Main/train.txt").read_text().split())
    assert opened and {p.stem for p in opened} == train_ids
    assert every and all("/daytime_clear/VOC2007/JPEGImages/" in f and f.rsplit("/", 1)[1][:-4] in train_ids
                         for f in every)
    # the file is the body's state_dict: the detector loads it through pretrained_backbone
    model = build_model("det", "mini", "source_only", 2, pretrained_backbone=str(path))
    state = torch.load(path, weights_only=True)
    key = next(iter(state))
    assert torch.equal(model.state_dict()[f"backbone.body.{key}"] if f"backbone.body.{key}" in model.state_dict()
                       else dict(model.named_parameters())[[k for k in dict(model.named_parameters()) if k.endswith(key)][0]],
                       state[key])
    # cached: a second call trains nothing and returns the same file
    mtime = path.stat().st_mtime_ns
    assert pt.pretrain(cfg, progress=False) == path and path.stat().st_mtime_ns == mtime


def test_supervised_trains_on_source_split_scores_source_test_only_and_loads_as_backbone(weather_copy, tmp_path,
                                                                                         monkeypatch):
    import PIL.Image

    real_open = PIL.Image.open
    every = []
    monkeypatch.setattr(PIL.Image, "open", lambda fp, *a, **k: (every.append(str(fp)), real_open(fp, *a, **k))[1])
    cfg = pt.PretrainConfig(task="det", data_root=str(weather_copy), steps=3, batch_size=2, out=str(tmp_path))
    assert cfg.objective == "supervised"
    path = pt.pretrain(cfg, progress=False)
    voc = weather_copy / "daytime_clear" / "VOC2007"
    allowed = {f"train:{i}" for i in (voc / "ImageSets/Main/train.txt").read_text().split()}
    allowed |= {f"test:{i}" for i in (voc / "ImageSets/Main/test.txt").read_text().split()}
    seen = [f for f in every if f.endswith((".jpg", ".png"))]
    assert seen and all("/daytime_clear/" in f for f in seen), [f for f in seen if "/daytime_clear/" not in f][:3]
    stems = {f.rsplit("/", 1)[1].rsplit(".", 1)[0] for f in seen}
    assert stems <= {a.split(":", 1)[1] for a in allowed}
    assert stems & {a.split(":", 1)[1] for a in allowed if a.startswith("train:")}  # it trained on the split
    # the record names the run, its source-only scores and how the file loads: the whole model, every
    # variant's init_weights (DRSF's own blocks keep their initialisation)
    import json

    from drsf_kit.train.builders import init_from

    record = json.loads(path.with_suffix(".json").read_text())
    assert record["config"]["objective"] == "supervised" and record["load_as"] == "model.init_weights"
    assert pt.load_key(cfg) == "init_weights"
    assert record["source_test_scores"] and all(k.startswith("daytime_clear/") for k in record["source_test_scores"])
    state = torch.load(path, weights_only=True)
    for variant in ("source_only", "drsf"):
        model = build_model("det", "mini", variant, 2)
        assert init_from(model, path) == len(state)
        own = model.state_dict()
        assert all(torch.equal(own[k], v) for k, v in state.items())
    assert any(k.startswith("body.") for k in state) and any(not k.startswith("body.") for k in state)
    # cached: the second call trains nothing
    mtime = path.stat().st_mtime_ns
    assert pt.pretrain(cfg, progress=False) == path and path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("argv, expected", [
    (["pretrain", "--task", "det"], (2400, 4, 0.002)),  # supervised: the protocol's warm start
    (["pretrain", "--task", "seg"], (2400, 4, 0.006)),
    (["pretrain", "--task", "det", "--objective", "simclr"], (300, 32, 0.002)),  # SimCLR's own defaults
    (["pretrain", "--task", "seg", "--steps", "50", "--lr", "0.01"], (50, 4, 0.01)),  # given options win
])
def test_cli_defaults_follow_the_objective(argv, expected):
    from drsf_kit.cli import build_parser
    from drsf_kit.cli.pretrain import config_from_args

    cfg = config_from_args(build_parser().parse_args(argv))
    assert (cfg.steps, cfg.batch_size, cfg.lr) == expected
