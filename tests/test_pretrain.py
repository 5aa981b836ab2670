"""`drsf pretrain`: the cache key follows every setting, and only source training images are read."""

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


def test_pretrain_reads_only_source_training_images_and_loads_as_backbone(weather_copy, tmp_path, monkeypatch):
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
                            out=str(tmp_path))
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
