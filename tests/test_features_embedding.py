"""Feature extraction (hooks, kit stages, disk cache), image collection, PCA / t-SNE and their plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from drsf_kit.analysis.embedding import pca_embed, tsne_embed
from drsf_kit.analysis.features import (
    available_stages,
    collect_domain_images,
    default_backbone,
    extract_features,
    features_by_group,
    load_image,
    resolve_module,
)
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.viz.plots import plot_embedding


class Counting(nn.Module):
    """A tiny conv net that counts its forward calls (to see whether the cache answered)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU())
        self.block = nn.Conv2d(4, 6, 3, 2, 1)
        self.head = nn.Linear(6, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.head(self.block(self.stem(x)).mean(dim=(2, 3)))


def _images(n=5, seed=0, size=(24, 32)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *size, generator=g)


def test_pooled_and_spatial_features_by_module_name():
    model = Counting()
    images = _images()
    feats = extract_features(model, images, "block", spatial=True, batch_size=2, size=None, progress=False)
    assert feats.pooled.shape == (5, 6) and feats.spatial.shape == (5, 6, 6, 8)
    np.testing.assert_allclose(feats.pooled, feats.spatial.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    # The hook stops the forward pass at the stage: the head never ran, and train mode is restored.
    model.train()
    with torch.no_grad():
        direct = model.block(model.stem(images[:2])).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(feats.pooled[:2], direct, rtol=1e-5, atol=1e-6)
    extract_features(model, images, "stem.0", progress=False, size=None)
    assert model.training


def test_missing_stage_lists_the_stages():
    model = Counting()
    with pytest.raises(ConfigError) as info:
        extract_features(model, _images(), "layer9", progress=False)
    msg = str(info.value)
    assert "layer9" in msg and "stem" in msg and "block" in msg and "head" in msg
    assert available_stages(model)[:2] == ["stem", "stem.0"]
    assert resolve_module(model, "0") is model.stem[0]  # unique dotted suffix


def test_cache_hit_returns_identical_features_without_recomputing(tmp_path):
    model = Counting()
    images = _images(6)
    first = extract_features(model, images, "block", cache_dir=tmp_path, size=None, batch_size=4, progress=False)
    calls = model.calls
    assert not first.from_cache and first.cache_path.exists() and calls == 2
    second = extract_features(model, images, "block", cache_dir=tmp_path, size=None, batch_size=4, progress=False)
    assert second.from_cache and model.calls == calls
    np.testing.assert_array_equal(first.pooled, second.pooled)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    # Other images, or other weights, are other cache entries.
    third = extract_features(model, _images(6, seed=1), "block", cache_dir=tmp_path, size=None, progress=False)
    assert not third.from_cache
    with torch.no_grad():
        model.block.weight.mul_(2.0)
    fourth = extract_features(model, images, "block", cache_dir=tmp_path, size=None, progress=False)
    assert not fourth.from_cache
    np.testing.assert_allclose(fourth.pooled, 2 * first.pooled - model.block.bias.detach().numpy(), rtol=1e-4,
                               atol=1e-5)


def test_cache_key_names_the_run(tmp_path):
    model = Counting()
    a = extract_features(model, _images(), "block", cache_dir=tmp_path, cache_key="run-a", size=None, progress=False)
    b = extract_features(model, _images(), "block", cache_dir=tmp_path, cache_key="run-b", size=None, progress=False)
    assert a.cache_path != b.cache_path and not b.from_cache and b.meta["model"] == "run-b"


def test_kit_model_stages_go_through_its_own_extract_features():
    model = default_backbone("det")
    images = _images(2, size=(180, 320))
    feats = extract_features(model, images, "layer2", spatial=True, progress=False)
    width = model.body.channels["layer2"]
    assert feats.pooled.shape == (2, width) and feats.spatial.shape[:2] == (2, width)
    with torch.no_grad():
        expected = model.extract_features(images, ["layer2"])["layer2"].numpy()
    np.testing.assert_allclose(feats.spatial, expected, rtol=1e-5, atol=1e-6)
    assert extract_features(model, images, "head.0", progress=False).pooled.shape == (2, model.head_channels["0"])


def test_load_image_inputs(tmp_path):
    arr = (np.arange(10 * 12 * 3) % 255).astype(np.uint8).reshape(10, 12, 3)
    Image.fromarray(arr).save(tmp_path / "a.png")
    from_path = load_image(tmp_path / "a.png", size=None)
    np.testing.assert_allclose(from_path.permute(1, 2, 0).numpy(), arr / 255.0, atol=1e-6)
    assert load_image(arr, size=(20, 24)).shape == (3, 20, 24)
    assert torch.equal(load_image(Image.fromarray(arr), size=None), from_path)
    with pytest.raises(DataError, match="cannot read image"):
        (tmp_path / "bad.jpg").write_bytes(b"not an image")
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(DataError, match="HxWx3"):
        load_image(np.zeros((4, 4)))


def _dwd(root, domains, n=4, test_split=False):
    for d in domains:
        voc = root / d / "VOC2007"
        (voc / "JPEGImages").mkdir(parents=True)
        (voc / "ImageSets" / "Main").mkdir(parents=True)
        ids = [f"{d}_{i}" for i in range(n)]
        for k, i in enumerate(ids):
            Image.new("RGB", (16, 12), (40 * k, 10, 10)).save(voc / "JPEGImages" / f"{i}.jpg")
        (voc / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[: n - 1]) + "\n")
        if test_split:
            (voc / "ImageSets" / "Main" / "test.txt").write_text(ids[-1] + "\n")


def test_collect_domain_images(tmp_path):
    _dwd(tmp_path / "dwd", ["daytime_clear", "night_sunny"], n=8, test_split=True)
    synth = tmp_path / "synth" / "gen" / "night_sunny"
    synth.mkdir(parents=True)
    rows = []
    for i in reversed(range(7)):  # manifest order differs from the split order
        Image.new("RGB", (16, 12)).save(synth / f"daytime_clear_{i}.jpg")
        rows.append(dict(source_id=f"daytime_clear_{i}", source_domain="daytime_clear", domain="night_sunny",
                         path=f"daytime_clear_{i}.jpg", generator="gen", prompt="night", seed=i))
    (synth / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = collect_domain_images(tmp_path / "dwd", tmp_path / "synth")
    groups = [r.group for r in recs]
    # Source: its train split (7 images); target: all of its images (train + test = 8).
    assert groups.count("daytime_clear") == 7 and groups.count("night_sunny") == 8
    assert groups.count("synth:night_sunny") == 7
    assert {r.kind for r in recs if r.group.startswith("synth:")} == {"synthetic"}
    twins = [r for r in recs if r.kind == "synthetic"]
    assert twins[0].source_id == "daytime_clear_6" and twins[0].path.endswith("daytime_clear_6.jpg")
    limited = collect_domain_images(tmp_path / "dwd", tmp_path / "synth", limit=2, seed=1)
    assert len(limited) == 6
    # The sampled pseudo-domain holds the twins of the sampled source images.
    sources = {r.source_id for r in limited if r.group == "daytime_clear"}
    assert {r.source_id for r in limited if r.kind == "synthetic"} == sources
    feats = features_by_group(np.arange(len(recs))[:, None].astype(float), recs)
    assert feats["synth:night_sunny"].ravel().tolist() == list(range(15, 22))  # rows 15..21, in record order


def test_collect_domain_images_errors_and_plain_folders(tmp_path):
    with pytest.raises(DataError, match="data root not found"):
        collect_domain_images(tmp_path / "nowhere")
    _dwd(tmp_path / "dwd", ["daytime_clear"], n=3)
    (tmp_path / "dwd/daytime_clear/VOC2007/JPEGImages/daytime_clear_1.jpg").unlink()
    with pytest.raises(DataError, match="daytime_clear_1.jpg.*missing"):
        collect_domain_images(tmp_path / "dwd")
    plain = tmp_path / "mine" / "dusk_rainy"
    plain.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(plain / "x.png")
    recs = collect_domain_images(None, tmp_path / "mine")
    assert [(r.group, r.kind) for r in recs] == [("synth:dusk_rainy", "synthetic")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest.jsonl"):
        collect_domain_images(None, tmp_path / "empty")


def test_tsne_fixed_seed_is_reproducible():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(size=(20, 20)), rng.normal(size=(20, 20)) + 5]
    a, b = tsne_embed(x, seed=3, perplexity=5, max_iter=500), tsne_embed(x, seed=3, perplexity=5, max_iter=500)
    assert a.shape == (40, 2)
    np.testing.assert_array_equal(a, b)
    # The two clusters stay apart in the picture: every point's nearest neighbour is from its own cluster.
    d = np.linalg.norm(a[:, None] - a[None], axis=-1) + np.eye(40) * 1e9
    assert ((d.argmin(1) < 20) == (np.arange(40) < 20)).all()
    assert tsne_embed(x[:6], max_iter=250).shape == (6, 2)  # perplexity lowered for tiny samples
    with pytest.raises(ConfigError, match="at least 4"):
        tsne_embed(x[:3])


def test_pca_embed_separates_shifted_clusters():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(size=(20, 8)), rng.normal(size=(20, 8)) + 6]
    emb, ratio = pca_embed(x, return_variance=True)
    assert emb.shape == (40, 2) and ratio[0] > 0.5 and ratio[0] >= ratio[1]
    first, second = emb[:20, 0], emb[20:, 0]
    assert first.max() < second.min() or second.max() < first.min()
    with pytest.raises(DataError, match="NaN"):
        pca_embed(np.full((4, 3), np.nan))


def test_plot_embedding_legend_names_domains_and_kinds():
    import matplotlib.pyplot as plt

    groups = ["daytime_clear"] * 3 + ["night_sunny"] * 3 + ["synth:night_sunny"] * 3
    fig = plot_embedding(np.random.default_rng(0).normal(size=(9, 2)), groups, title="t-SNE")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["daytime clear (real, n=3)", "night sunny (real, n=3)", "night sunny (synthetic, n=3)"]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title() == "t-SNE"
    colours = [tuple(c.get_facecolor()[0][:3]) for c in ax.collections]
    assert colours[1] == colours[2] and colours[0] != colours[1]  # one colour per domain, any kind
    plt.close(fig)


def test_uint8_and_resized_tensor_batches():
    model = Counting()
    images = (_images(3) * 255).round().to(torch.uint8)
    as_uint8 = extract_features(model, images, "block", size=None, progress=False).pooled
    as_float = extract_features(model, images.float() / 255.0, "block", size=None, progress=False).pooled
    np.testing.assert_allclose(as_uint8, as_float, rtol=1e-6, atol=1e-7)
    big = extract_features(model, images, "block", size=(48, 64), spatial=True, progress=False)
    assert big.spatial.shape == (3, 6, 12, 16)  # resized to 48x64 before the model
