"""MDSF: lambda sampling, mixing, soft labels, gradient reversal, discriminator and fusion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from drsf_kit.errors import ConfigError
from drsf_kit.models.mdsf import (
    MDSF,
    DomainDiscriminator,
    GradientReversal,
    MDSFHparams,
    grad_reverse,
    grl_coefficient,
    mix_features,
    sample_lambda,
    soft_cross_entropy,
    soft_domain_labels,
)


def test_gradient_reversal_flips_and_scales_numerically():
    torch.manual_seed(0)
    w = torch.randn(5)
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)

    def h(v):
        return (w.double() * v**3).sum()

    coeff = 0.37
    y = h(GradientReversal.apply(x, coeff))
    assert y.item() == pytest.approx(h(x).item())  # forward is the identity
    (grad,) = torch.autograd.grad(y, x)
    eps = 1e-6
    numeric = torch.zeros(5, dtype=torch.float64)
    for i in range(5):
        step = torch.zeros(5, dtype=torch.float64)
        step[i] = eps
        numeric[i] = (h(x.detach() + step) - h(x.detach() - step)) / (2 * eps)
    assert torch.allclose(grad, -coeff * numeric, atol=1e-6)
    (grad0,) = torch.autograd.grad(h(grad_reverse(x, 0.0)), x)
    assert torch.all(grad0 == 0)


def test_grl_ramp():
    assert grl_coefficient(0.0, 1.0) == 0.0
    assert grl_coefficient(1.0, 0.5) == pytest.approx(0.5, abs=1e-4)
    values = [grl_coefficient(p / 10, 2.0) for p in range(11)]
    assert all(b > a for a, b in zip(values, values[1:]))
    assert grl_coefficient(0.5, 1.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert grl_coefficient(-1.0) == 0.0 and grl_coefficient(7.0, 1.0) == grl_coefficient(1.0, 1.0)


def test_soft_labels_sum_to_one():
    d_a = torch.tensor([0, 0, 2])
    d_b = torch.tensor([1, 3, 4])
    lam = torch.tensor([1.0, 0.25, 0.6])
    y = soft_domain_labels(d_a, d_b, lam, num_domains=5)
    assert y.shape == (3, 5)
    assert torch.allclose(y.sum(1), torch.ones(3))
    assert torch.equal(y[0], torch.tensor([1.0, 0, 0, 0, 0]))
    assert torch.allclose(y[1], torch.tensor([0.25, 0, 0, 0.75, 0]))


def test_mix_features_ends_and_per_sample_lambda():
    torch.manual_seed(0)
    a, b = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    assert torch.equal(mix_features(a, b, 1.0), a)
    assert torch.equal(mix_features(a, b, 0.0), b)
    lam = torch.tensor([1.0, 0.0, 0.5])
    m = mix_features(a, b, lam)
    assert torch.equal(m[0], a[0]) and torch.equal(m[1], b[1])
    assert torch.allclose(m[2], 0.5 * (a[2] + b[2]))
    with pytest.raises(ConfigError):
        mix_features(a, b[:2], 0.5)


def test_sample_lambda_is_beta_and_deterministic():
    from scipy import stats

    g = torch.Generator().manual_seed(123)
    lam = sample_lambda(20000, 0.4, g)
    assert lam.dtype == torch.float32 and bool(((lam >= 0) & (lam <= 1)).all())
    assert lam.mean().item() == pytest.approx(0.5, abs=0.01)
    assert lam.var().item() == pytest.approx(1 / (4 * (2 * 0.4 + 1)), rel=0.03)
    assert stats.kstest(lam.double().numpy(), stats.beta(0.4, 0.4).cdf).pvalue > 1e-3
    lam2 = sample_lambda(20000, 2.5, torch.Generator().manual_seed(1))
    assert stats.kstest(lam2.double().numpy(), stats.beta(2.5, 2.5).cdf).pvalue > 1e-3
    again = sample_lambda(20000, 0.4, torch.Generator().manual_seed(123))
    assert torch.equal(lam, again)
    assert not torch.equal(lam[:10], sample_lambda(10, 0.4, torch.Generator().manual_seed(124)))
    with pytest.raises(ConfigError):
        sample_lambda(3, 0.0)


def test_discriminator_averages_position_logits():
    torch.manual_seed(0)
    disc = DomainDiscriminator(8, num_domains=4, hidden=6, input_norm="none")
    x = torch.randn(2, 8, 5, 7)
    logits = disc(x)
    assert logits.shape == (2, 4)
    per_position = disc.classifier(F.relu(disc.conv(x)))
    assert torch.allclose(logits, per_position.mean(dim=(2, 3)), atol=1e-6)
    with pytest.raises(ConfigError):
        DomainDiscriminator(8, 4, input_norm="batch")


def test_rms_input_norm_ignores_feature_scale():
    torch.manual_seed(0)
    disc = DomainDiscriminator(8, num_domains=3, hidden=6, input_norm="rms")
    x = torch.randn(2, 8, 5, 7)
    assert torch.allclose(disc(x), disc(7.0 * x), atol=1e-5)
    # so the reversed gradient has no component that inflates the features (it is orthogonal to x)
    x.requires_grad_(True)
    loss = soft_cross_entropy(disc(grad_reverse(x, 1.0)), torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5]]))
    (grad,) = torch.autograd.grad(loss, x)
    cos = (grad * x).sum(dim=(1, 2, 3)) / (grad.flatten(1).norm(dim=1) * x.flatten(1).norm(dim=1))
    assert cos.abs().max() < 1e-4


def _maps():
    torch.manual_seed(0)
    return {"0": torch.randn(4, 6, 8, 8), "1": torch.randn(4, 6, 4, 4)}


def test_fuse_replaces_twins_in_place_with_one_lambda():
    mdsf = MDSF(6, num_domains=3, hparams=MDSFHparams(p_mix=1.0))
    maps = _maps()
    domains = torch.tensor([0, 0, 1, 2])
    pairs = torch.tensor([[0, 2], [1, 3]])
    new, info = mdsf.fuse(maps, domains, pairs, torch.Generator().manual_seed(0))
    assert info.rows.tolist() == [2, 3] and info.partners.tolist() == [0, 1]
    for key, z in maps.items():
        assert torch.equal(new[key][:2], z[:2])  # sources untouched
        for row, partner, lam in zip(info.rows, info.partners, info.lam):
            assert torch.allclose(new[key][row], lam * z[partner] + (1 - lam) * z[row], atol=1e-6)
    assert torch.allclose(info.soft_labels.sum(1), torch.ones(2))
    assert info.soft_labels[0, 0].item() == pytest.approx(info.lam[0].item())
    again, info2 = mdsf.fuse(maps, domains, pairs, torch.Generator().manual_seed(0))
    assert torch.equal(info.lam, info2.lam) and torch.equal(again["0"], new["0"])


def test_fuse_skips_when_disabled_or_same_domain():
    maps = _maps()
    pairs = torch.tensor([[0, 2], [1, 3]])
    never = MDSF(6, 3, MDSFHparams(p_mix=0.0))
    new, info = never.fuse(maps, torch.tensor([0, 0, 1, 2]), pairs, torch.Generator().manual_seed(0))
    assert info.rows.numel() == 0 and new["0"] is maps["0"]
    always = MDSF(6, 3, MDSFHparams(p_mix=1.0))
    _, info = always.fuse(maps, torch.tensor([0, 0, 0, 2]), pairs, torch.Generator().manual_seed(0))
    assert info.rows.tolist() == [3]  # the pair (0, 2) shares domain 0: nothing to fuse


def test_fuse_mixes_about_p_mix_of_pairs():
    mdsf = MDSF(6, 3, MDSFHparams(p_mix=0.5))
    maps = {"0": torch.zeros(400, 1, 1, 1)}
    domains = torch.tensor([0] * 200 + [1] * 200)
    pairs = torch.stack([torch.arange(200), torch.arange(200, 400)], dim=1)
    _, info = mdsf.fuse(maps, domains, pairs, torch.Generator().manual_seed(3))
    assert 70 <= info.rows.numel() <= 130


def test_adversarial_loss_soft_ce_and_reversed_feature_gradient():
    torch.manual_seed(0)
    mdsf = MDSF(6, num_domains=3, hparams=MDSFHparams(method="v1"))  # v1: the conv discriminator
    unmixed = torch.randn(3, 6, 4, 4, requires_grad=True)
    mixed = torch.randn(1, 6, 4, 4, requires_grad=True)
    domains = torch.tensor([0, 1, 2])
    soft = torch.tensor([[0.3, 0.7, 0.0]])
    loss, logits = mdsf.adversarial_loss(unmixed, domains, mixed, soft, coeff=0.5)
    targets = torch.cat([F.one_hot(domains, 3).float(), soft])
    all_logits = mdsf.discriminator(torch.cat([unmixed, mixed]))
    assert loss.item() == pytest.approx(soft_cross_entropy(all_logits, targets).item(), rel=1e-6)
    assert torch.allclose(logits, all_logits[:3])
    (g_rev,) = torch.autograd.grad(loss, unmixed, retain_graph=True)
    plain = soft_cross_entropy(mdsf.discriminator(torch.cat([unmixed, mixed])), targets)
    (g_plain,) = torch.autograd.grad(plain, unmixed)
    assert torch.allclose(g_rev, -0.5 * g_plain, atol=1e-7)
    # the discriminator itself still descends the loss
    loss.backward()
    assert mdsf.discriminator.conv.weight.grad.abs().sum() > 0


def test_domain_probs_rows_sum_to_one():
    mdsf = MDSF(6, 4)
    p = mdsf.domain_probs(torch.randn(5, 6, 3, 3))
    assert p.shape == (5, 4) and torch.allclose(p.sum(1), torch.ones(5))


@pytest.mark.parametrize(
    "kwargs", [dict(alpha=0), dict(p_mix=1.5), dict(eta_max=-1), dict(disc_hidden=0), dict(disc_input_norm="bn")]
)
def test_bad_hparams_raise(kwargs):
    with pytest.raises(ConfigError):
        MDSFHparams(**kwargs)
