"""Variants, hparams and the model builders: every variant x task trains and evaluates on tiny data."""

from __future__ import annotations

import math

import pytest
import torch

from drsf_kit.errors import ConfigError, DataError
from drsf_kit.models import HPARAM_RANGES, VARIANTS, build_model, default_hparams, get_variant, random_hparams
from drsf_kit.models.hparams import resolve_hparams

H, W = 96, 160
DET_KEYS = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def _mini(task, variant, num_domains=3, **kw):
    if task == "det":
        kw = {"min_size": H, "max_size": W, **kw}  # keep the tiny images at their own size
    torch.manual_seed(0)
    return build_model(task, "mini", variant, num_domains, **kw)


def _batch(task, seed=0):
    """Two source images and their twins (domains 1, 2) with shared labels."""
    g = torch.Generator().manual_seed(seed)
    src = torch.rand(2, 3, H, W, generator=g)
    images = torch.cat([src, (0.6 * src + 0.3 * torch.rand(2, 3, 1, 1, generator=g)).clamp(0, 1)])
    domains = torch.tensor([0, 0, 1, 2])
    pairs = torch.tensor([[0, 2], [1, 3]])
    if task == "det":
        t0 = {"boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0], [90.0, 30.0, 150.0, 80.0]]), "labels": torch.tensor([3, 1])}
        t1 = {"boxes": torch.tensor([[5.0, 5.0, 20.0, 30.0]]), "labels": torch.tensor([5])}
        return list(images), [t0, t1, t0, t1], domains, pairs
    mask = torch.randint(0, 19, (2, H, W), generator=g)
    mask[:, :4] = 255
    return images, torch.cat([mask, mask]), domains, pairs


def _train_steps(model, task, steps=2, **fwd):
    images, targets, domains, pairs = _batch(task)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        losses = model(images, targets, domains=domains, pairs=pairs, progress=step / steps, generator=gen, **fwd)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    return losses


def test_get_variant_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        get_variant("nope")
    for name in VARIANTS:
        assert name in str(err.value)
    assert set(VARIANTS) == {"source_only", "naive_synth", "dfdr", "mdsf", "drsf", "naive_consistency"}
    assert get_variant("naive_consistency").use_consistency and not get_variant("naive_consistency").use_mdsf
    assert not get_variant("source_only").use_synth and get_variant("naive_synth").use_synth
    assert get_variant("drsf").use_dfdr and get_variant("drsf").use_mdsf
    assert get_variant("dfdr").use_dfdr and not get_variant("dfdr").use_mdsf


def test_default_hparams_and_ranges():
    assert default_hparams("source_only", "det") == {}
    # every variant without MDSF that trains on twins draws one per source unless told otherwise
    for variant in ("naive_synth", "naive_consistency", "dfdr"):
        assert default_hparams(variant, "seg")["twins_per_source"] == 1
    assert default_hparams("naive_synth", "det") == {"twins_per_source": 1}
    assert default_hparams("mdsf", "det")["twins_per_source"] == 2 == default_hparams("drsf", "seg")["twins_per_source"]
    with pytest.raises(ConfigError, match="does not apply to variant 'source_only'"):
        resolve_hparams("source_only", "det", {"twins_per_source": 2})
    v1 = default_hparams("drsf", "det", method="v1")  # the first reading's defaults, as shipped
    assert (v1["w_align"], v1["w_rea"], v1["w_adv"], v1["alpha"], v1["p_mix"], v1["gamma_init"]) == (1.0, 0.1, 0.1, 0.4, 0.5, 0.1)
    assert resolve_hparams("drsf", "det", {"method": "v1"}) == v1
    hp = default_hparams("drsf", "det")  # the default design, v3: fusion in place at layer1, no adversary
    assert hp["method"] == "v3" and hp["alpha"] >= 1.0 and hp["twins_per_source"] >= 2
    assert (hp["fuse_stage"], hp["fuse_head"], hp["w_adv"]) == ("layer1", False, 0.0)
    v2 = default_hparams("drsf", "det", method="v2")
    assert v2["method"] == "v2" and v2["w_adv"] > 0 and v2["fuse_head"] and resolve_hparams("drsf", "det", {"method": "v2"}) == v2
    assert default_hparams("naive_consistency", "det") == {"w_cons": 1.0, "twins_per_source": 1}
    assert "alpha" not in default_hparams("dfdr", "det") and "tau" not in default_hparams("mdsf", "seg")
    assert set(HPARAM_RANGES) >= set(hp)
    drawn = random_hparams("drsf", "seg", seed=1)
    assert drawn == random_hparams("drsf", "seg", seed=1) and drawn != random_hparams("drsf", "seg", seed=2)
    for key, value in drawn.items():
        kind, *args = HPARAM_RANGES[key]
        assert value in args[0] if kind == "choice" else args[0] <= value <= args[1]
    with pytest.raises(ConfigError, match="valid keys"):
        resolve_hparams("dfdr", "det", {"alpha": 0.3})
    with pytest.raises(ConfigError, match="valid tasks"):
        default_hparams("drsf", "classification")


@pytest.mark.parametrize("task", ["det", "seg"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_and_evaluates(task, variant):
    model = _mini(task, variant)
    spec = VARIANTS[variant]
    losses = _train_steps(model, task)
    expected = set(DET_KEYS if task == "det" else {"loss_task"})
    if spec.use_dfdr:  # v3 defaults (v2's DFDR): top-k split (no collapse guard), domain-posterior score
        expected |= {"loss_align", "loss_rea", "loss_posterior", "loss_commit"}
        assert {"gate_mean", "gate_saturation", "entropy_spread", "gamma_mean"} <= set(model.last_stats)
    if spec.use_mdsf:  # v3 fuses in place and builds no adversary: no loss, no discriminator statistics
        assert model.mdsf.discriminator is None and not any(k.startswith("disc_") for k in model.last_stats)
    if spec.use_consistency:
        expected |= {"loss_cons"}
    assert set(losses) == expected
    for key, value in losses.items():
        assert value.dim() == 0 and value.dtype == torch.float32 and math.isfinite(value.item()), key
    assert all(isinstance(v, float) and math.isfinite(v) for v in model.last_stats.values())
    images, *_ = _batch(task, seed=1)
    model.eval()
    with torch.no_grad():
        out = model(images)
    if task == "det":
        assert isinstance(out, list) and len(out) == 4
        for det in out:
            assert set(det) == {"boxes", "scores", "labels"}
            assert det["boxes"].shape[1] == 4 and det["scores"].shape == det["labels"].shape
            if det["boxes"].numel():
                assert det["boxes"][:, 2].max() <= W and det["boxes"][:, 3].max() <= H
                assert det["labels"].min() >= 1 and det["labels"].max() <= 7
    else:
        assert out.shape == (4, 19, H, W) and torch.isfinite(out).all()


@pytest.mark.parametrize("task", ["det", "seg"])
def test_drsf_parameter_overhead_at_most_two_percent(task):
    base = build_model(task, "mini", "source_only", 5).trainable_parameter_count()
    full = build_model(task, "mini", "drsf", 5).trainable_parameter_count()
    assert 0 < (full - base) / base <= 0.02


@pytest.mark.parametrize("task", ["det", "seg"])
@pytest.mark.parametrize("method", ["v1", "v2"])
def test_swap_posterior_and_body_stage_mdsf(task, method):
    hp = {"reassembly": "swap", "entropy_mode": "domain_posterior", "p_mix": 1.0, "method": method}
    model = _mini(task, "drsf", hparams=hp, mdsf_stage="layer3", dfdr_stage="layer1")
    losses = _train_steps(model, task, steps=1)
    assert "loss_posterior" in losses and all(math.isfinite(v.item()) for v in losses.values())
    if method == "v1":
        assert model.last_stats["mix_fraction"] == 1.0
    else:  # one fused sample per source added at layer1 (4 real rows + 2 fused); none after the head
        assert model.last_stats["fused_fraction"] == pytest.approx(2 / 6)
    assert 0 < model.last_stats["lambda_mean"] < 1
    assert model.dfdr.channels == model.body.channels["layer1"]


def test_blocks_receive_gradients_and_mixing_is_seeded():
    losses = []
    for _ in range(2):
        model = _mini("seg", "drsf", hparams={"p_mix": 1.0, "w_adv": 0.1})  # v3 with its optional adversary
        images, targets, domains, pairs = _batch("seg")
        model.train()
        out = model(images, targets, domains=domains, pairs=pairs, progress=0.5, generator=torch.Generator().manual_seed(7))
        sum(out.values()).backward()
        losses.append({k: v.item() for k, v in out.items()})
    assert losses[0] == losses[1]
    assert model.dfdr.gate_bias.grad.abs().sum() > 0  # v2 gate
    assert "loss_adv" in losses[0]
    disc = [m for m in model.mdsf.discriminator.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.weight.grad.abs().sum() > 0 for m in disc)  # the body-stage cell discriminator learns


@pytest.mark.parametrize("task", ["det", "seg"])
def test_analysis_interface(task):
    model = _mini(task, "drsf", hparams={"w_adv": 0.1})  # v3 with an adversary, so domain_probs answers
    images, *_ = _batch(task)
    model.extract_features(images, ["layer1"])
    assert model.training  # analysis calls run in eval mode and restore the caller's mode
    model.eval()
    names = model.stage_names()
    assert {"layer2", "dfdr", "dfdr.shared", "dfdr.private"} <= set(names)
    with torch.no_grad():
        feats = model.extract_features(images, names)
        assert all(v.dim() == 4 and v.shape[0] == 4 for v in feats.values())
        assert torch.allclose(feats["dfdr.shared"] + feats["dfdr.private"], feats[model.dfdr_stage], atol=1e-5)
        dfdr = model.dfdr_outputs(images)
        assert dfdr.gate.shape == (4, model.dfdr.channels)
        probs = model.domain_probs(images)
        assert probs.shape == (4, 3) and torch.allclose(probs.sum(1), torch.ones(4))
        a, b = images[0], images[2]
        own = model([a])[0] if task == "det" else model(a[None])[0]
        same = model.predict_mixed(a, b, 1.0)
        half = model.predict_mixed(a, b, 0.5)
    assert model.training is False
    if task == "det":
        assert torch.allclose(same["prediction"]["boxes"], own["boxes"], atol=1e-4)
        assert torch.allclose(same["prediction"]["scores"], own["scores"], atol=1e-5)
    else:
        assert torch.allclose(same["prediction"], own, atol=1e-5)
    # v3 mixes styles at fuse_stage; "features" is then the map its adversary reads, image_a's content
    key = "dfdr" if model.dfdr_stage == model.mdsf.hparams.adv_stage else model.mdsf.hparams.adv_stage  # it reads DFDR's output
    pair = model.extract_features([a, b] if task == "det" else torch.stack([a, b]), [key])[key]
    assert torch.allclose(same["features"], pair[0], atol=1e-5)
    assert not torch.allclose(half["features"], pair[0], atol=1e-3)
    assert half["domain_probs"].shape == (3,) and torch.isclose(half["domain_probs"].sum(), torch.tensor(1.0))
    with pytest.raises(ConfigError, match="valid"):
        model.extract_features(images, ["nope"])


def test_analysis_without_blocks():
    model = _mini("seg", "naive_synth")
    images, *_ = _batch("seg")
    assert model.dfdr_outputs(images) is None and model.domain_probs(images) is None
    result = model.predict_mixed(images[0], images[1], 0.3)
    assert result["domain_probs"] is None and result["prediction"].shape == (19, H, W)


def test_bad_inputs_raise_clear_errors():
    model = _mini("det", "drsf")
    images, targets, domains, pairs = _batch("det")
    model.train()
    with pytest.raises(ConfigError, match="domain ids"):
        model(images, targets, domains=torch.tensor([0, 0, 1, 5]), pairs=pairs)
    with pytest.raises(ConfigError, match="pairs"):
        model(images, targets, domains=domains, pairs=torch.tensor([[0, 9]]))
    bad = [dict(t) for t in targets]
    bad[1] = {"boxes": torch.tensor([[30.0, 30.0, 10.0, 40.0]]), "labels": torch.tensor([2]), "image_id": "img7"}
    with pytest.raises(DataError, match="img7.*degenerate"):
        model(images, bad, domains=domains, pairs=pairs)
    with pytest.raises(ConfigError, match="layer2"):
        build_model("det", "mini", "dfdr", 3, dfdr_stage="layer9")
    with pytest.raises(ConfigError, match="frcnn_r50_fpn"):
        build_model("det", "resnet", "dfdr", 3)
    with pytest.raises(ConfigError, match="num_domains"):
        build_model("seg", "mini", "mdsf", 1)


def test_build_config_rebuilds_the_architecture():
    model = _mini("det", "drsf", hparams={"alpha": 0.3})
    rebuilt = build_model(**model.build_config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.hparams["alpha"] == 0.3 and rebuilt.transform.min_size == (H,)


def test_torchvision_profiles_build_with_explicit_sizes():
    det = build_model("det", "frcnn_r50_fpn", "drsf", 5)
    assert det.transform.min_size == (800,) and det.transform.max_size == 1333
    assert det.dfdr.channels == 256  # v3: DFDR at layer1, the shallowest map the FPN reads
    assert build_model("det", "frcnn_r50_fpn", "drsf", 5, hparams={"method": "v2"}).dfdr.channels == 512  # v2: layer2
    small = build_model("det", "frcnn_r50_fpn", "source_only", 5, min_size=64, max_size=96)
    small.eval()
    with torch.no_grad():
        out = small([torch.rand(3, 64, 96)])
    assert set(out[0]) == {"boxes", "scores", "labels"}
    seg = build_model("seg", "deeplabv3_r50", "drsf", 5, hparams={"method": "v2"})
    assert seg.mdsf.discriminator.fc1.in_features == 2 * 2048 and seg.num_classes == 19


def test_local_backbone_weights(tmp_path):
    from torchvision.models import resnet18, resnet50

    with pytest.raises(DataError, match="not found"):
        build_model("det", "frcnn_r50_fpn", "source_only", 2, pretrained_backbone=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(DataError, match="does not match"):
        build_model("det", "frcnn_r50_fpn", "source_only", 2, pretrained_backbone=str(wrong))
    torch.manual_seed(1)
    net = resnet50(weights=None)
    good = tmp_path / "r50.pth"
    torch.save({"state_dict": net.state_dict()}, good)
    model = build_model("det", "frcnn_r50_fpn", "source_only", 2, pretrained_backbone=str(good))
    assert torch.equal(model.body.stages["layer3"][0].conv1.weight, net.layer3[0].conv1.weight)
    assert not any(p.requires_grad for p in model.body.stages["stem"].parameters())
    assert model.build_config["frozen_bn"] is True and model.build_config["pretrained_backbone"] is None


def test_autocast_losses_are_float32():
    model = _mini("seg", "drsf")
    images, targets, domains, pairs = _batch("seg")
    images, targets = images[..., :48, :64], targets[..., :48, :64]  # bfloat16 convs are slow on CPU
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets, domains=domains, pairs=pairs, progress=0.5)
    assert all(v.dtype == torch.float32 and math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("task", ["det", "seg"])
def test_cuda_training_step(task):
    model = _mini(task, "drsf").cuda()
    images, targets, domains, pairs = _batch(task)
    if task == "det":
        images = [im.cuda() for im in images]
        targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    else:
        images, targets = images.cuda(), targets.cuda()
    model.train()
    losses = model(images, targets, domains=domains.cuda(), pairs=pairs.cuda(), progress=0.5,
                   generator=torch.Generator().manual_seed(0))
    sum(losses.values()).backward()
    assert all(math.isfinite(v.item()) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert (out[0]["boxes"] if task == "det" else out).is_cuda
