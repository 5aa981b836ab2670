"""MDSF v3: soft fusion in place in feature-statistics space, the cell discriminator, DFDR on every path."""

from __future__ import annotations

import pytest
import torch

from drsf_kit.models import build_model
from drsf_kit.models.mdsf import CellStatsDiscriminator, MDSF, MDSFHparams, fuse_styles, interpolate_styles, twin_partners

# two sources (rows 0, 1), each with twins of two different pseudo-domains
DOMAINS = torch.tensor([0, 0, 1, 2, 3, 1])
PAIRS = torch.tensor([[0, 2], [0, 3], [1, 4], [1, 5]])


def _stats(x):
    return x.mean(dim=(1, 2)), x.var(dim=(1, 2), unbiased=False).add(1e-5).sqrt()


def test_twin_partners_pick_a_twin_of_the_same_source_from_another_domain():
    partners = twin_partners(DOMAINS, PAIRS)
    assert partners.tolist() == [1, 0, 3, 2]
    # a source whose two twins share a domain has no partner; a lone twin neither
    domains = torch.tensor([0, 0, 1, 1, 2])
    pairs = torch.tensor([[0, 2], [0, 3], [1, 4]])
    assert twin_partners(domains, pairs).tolist() == [-1, -1, -1]


def test_fusion_keeps_rows_and_sources_and_mixes_the_pair_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, 7, generator=g) * (0.5 + 3 * torch.rand(6, 4, 1, 1, generator=g)) + torch.randn(6, 4, 1, 1, generator=g)
    out, info = fuse_styles(x, DOMAINS, PAIRS, alpha=2.0, p_mix=1.0, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape  # no row added
    assert torch.equal(out[:2], x[:2])  # the sources are never touched
    assert info.active.all()
    for r, q, lam in zip(info.rows.tolist(), info.partners.tolist(), info.lam.tolist()):
        mu, sd = _stats(out[r])
        mu_r, sd_r = _stats(x[r])
        mu_q, sd_q = _stats(x[q])
        assert torch.allclose(mu, lam * mu_r + (1 - lam) * mu_q, atol=1e-4)
        assert torch.allclose(sd, lam * sd_r + (1 - lam) * sd_q, atol=1e-3)
        # the content (the normalised map) is the twin's own
        z = (out[r] - mu[:, None, None]) / sd[:, None, None]
        z_r = (x[r] - mu_r[:, None, None]) / sd_r[:, None, None]
        assert torch.allclose(z, z_r, atol=1e-3)


def test_fusion_is_seeded_respects_p_mix_and_lets_gradients_through():
    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    a, ia = fuse_styles(x, DOMAINS, PAIRS, 2.0, 0.5, generator=torch.Generator().manual_seed(3))
    b, ib = fuse_styles(x, DOMAINS, PAIRS, 2.0, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(ia.active, ib.active)
    off, info = fuse_styles(x, DOMAINS, PAIRS, 2.0, 0.0, generator=torch.Generator().manual_seed(3))
    assert not info.active.any() and torch.equal(off, x)
    a.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_extrapolation_leaves_the_segment_between_the_pair():
    lams = []
    for seed in range(20):
        _, info = fuse_styles(torch.randn(6, 2, 3, 3), DOMAINS, PAIRS, 1.0, 1.0, extrapolate=0.5,
                              generator=torch.Generator().manual_seed(seed))
        lams += info.lam.tolist()
    assert min(lams) < 0.0 and max(lams) > 1.0 and -0.5 <= min(lams) and max(lams) <= 1.5


def test_interpolate_styles_ends():
    a, b = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4) * 2 + 1
    assert torch.allclose(interpolate_styles(a, b, 1.0), a, atol=1e-4)
    mid = interpolate_styles(a, b, 0.0)
    assert torch.allclose(mid.mean(dim=(2, 3)), b.mean(dim=(2, 3)), atol=1e-4)


def test_cell_discriminator_scores_each_cell_and_learns_a_style_shift():
    torch.manual_seed(0)
    disc = CellStatsDiscriminator(8, 3, hidden=16, cells=2)
    assert disc(torch.randn(5, 8, 6, 6)).shape == (20, 3) and disc.rows_per_image() == 4
    assert disc(torch.randn(2, 8, 1, 1)).shape == (8, 3)  # a map smaller than the grid still answers per cell
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    for step in range(150):  # domain d shifts channel d's mean: readable from the statistics
        labels = torch.arange(3).repeat(4)
        x = torch.randn(12, 8, 6, 6)
        x[torch.arange(12), labels] += 1.5
        loss = torch.nn.functional.cross_entropy(disc(x), labels.repeat_interleave(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    disc.eval()
    labels = torch.arange(3).repeat(10)
    x = torch.randn(30, 8, 6, 6)
    x[torch.arange(30), labels] += 1.5
    acc = (disc(x).argmax(1) == labels.repeat_interleave(4)).float().mean()
    assert acc > 0.8, acc


def test_v3_without_adversary_has_no_discriminator_and_with_it_records_health():
    assert MDSF(8, 3, MDSFHparams(method="v3", w_adv=0.0)).discriminator is None
    model = build_model("seg", "mini", "drsf", 5, hparams={"method": "v3", "w_adv": 1.0})
    assert model.mdsf.discriminator is not None and model.health_summary() is None
    images = torch.rand(6, 3, 32, 48)
    masks = torch.randint(0, 19, (6, 32, 48))
    for progress in (0.0, 0.5):  # warm-up, then the backbone's part
        losses = model(images, masks, domains=DOMAINS, pairs=PAIRS, progress=progress,
                       generator=torch.Generator().manual_seed(0))
        sum(losses.values()).backward()
    assert "loss_adv" in losses and model.mdsf.warmup_acc is not None
    assert model.health_summary()["state"] in ("never_learned", "learned_then_confused", "still_reads_domains")
    assert model.domain_probs(images).shape == (6, 5)


@pytest.mark.parametrize("task", ["det", "seg"])
def test_v3_forwards_no_more_rows_than_the_data_matched_baseline(task):
    """The rows the head sees equal those of naive training on the same images (v2 appended fused rows)."""
    kw = {"min_size": 32, "max_size": 48} if task == "det" else {}
    model = build_model(task, "mini", "drsf", 5, hparams={"method": "v3"}, **kw)
    seen = []
    model.body.stages["layer3"].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    images = torch.rand(6, 3, 32, 48)
    if task == "det":
        box = {"boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]]), "labels": torch.tensor([1])}
        model(list(images), [box] * 6, domains=DOMAINS, pairs=PAIRS, progress=0.5, generator=torch.Generator())
    else:
        model(images, torch.randint(0, 19, (6, 32, 48)), domains=DOMAINS, pairs=PAIRS, progress=0.5,
              generator=torch.Generator())
    assert seen == [6]


def test_v3_puts_dfdr_on_every_path_to_the_head():
    seg = build_model("seg", "mini", "drsf", 5, hparams={"method": "v3"})
    assert seg.dfdr_stage == "layer1" and seg.head_sources["low"] == "layer1"  # the skip reads DFDR's output
    assert build_model("seg", "mini", "drsf", 5).dfdr_stage == "layer1"  # v3 is the default design
    assert build_model("seg", "mini", "drsf", 5, hparams={"method": "v2"}).dfdr_stage == "layer2"  # v2 kept where it was
    det = build_model("det", "mini", "drsf", 5, hparams={"method": "v3"}, min_size=32, max_size=48)
    assert det.dfdr_stage == "layer2"  # the FPN's shallowest level is layer2 already


@pytest.mark.parametrize("task", ["det", "seg"])
def test_the_slider_moves_what_v3_training_fuses(task):
    """predict_mixed under v3 restyles image_a at fuse_stage: lam = 1 is image_a's own prediction."""
    kw = {"min_size": 32, "max_size": 48} if task == "det" else {}
    torch.manual_seed(0)
    model = build_model(task, "mini", "drsf", 5, hparams={"method": "v3"}, **kw).eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 32, 48, generator=g), torch.rand(3, 32, 48, generator=g) * 0.3
    own = model.predict_mixed(a, b, 1.0)
    with torch.no_grad():
        alone = model(a[None]) if task == "seg" else model([a])
    if task == "seg":
        assert torch.allclose(own["prediction"], alone[0], atol=1e-4)
        moved = (model.predict_mixed(a, b, 0.0)["prediction"] - alone[0]).abs().max()
        assert moved > 1e-5  # b's statistics change the prediction (an untrained model: a small change)
    assert own["domain_probs"] is None  # v3 without an adversary has no discriminator
    fused = model.predict_mixed(a, b, 0.3)["features"]
    stage = model.body.stage_names().index("layer1")
    assert fused.shape[0] == model.body.channels[model.body.stage_names()[stage]]
