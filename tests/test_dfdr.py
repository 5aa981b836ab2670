"""DFDR: entropy, gate, decoupling, reassembly and its losses on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from drsf_kit.errors import ConfigError
from drsf_kit.models.dfdr import (
    DFDR,
    DFDRHparams,
    DFDROutput,
    align_loss,
    channel_entropy,
    dfdr_losses,
    posterior_loss,
    reassembly_loss,
    swap_reassembly,
)

# The first reading (method v1): these tests pin its gate, split and losses; tests/test_drsf_v2.py covers v2.
V1 = dict(method="v1", entropy_mode="spatial", split="soft", w_align=1.0)


def test_uniform_map_has_entropy_one_and_spike_zero():
    f = torch.zeros(2, 3, 8, 8)
    f[:, 1] = 5.0  # constant but non-zero: still uniform over positions
    ent = channel_entropy(f)
    assert ent.shape == (2, 3)
    assert torch.allclose(ent, torch.ones(2, 3), atol=1e-6)
    spike = torch.zeros(1, 2, 8, 8)
    spike[0, :, 3, 4] = 60.0  # softmax puts all mass on one position
    assert torch.allclose(channel_entropy(spike), torch.zeros(1, 2), atol=1e-4)


def test_entropy_between_extremes_and_temperature():
    f = torch.zeros(1, 1, 4, 4)
    f[0, 0, :2, :2] = 50.0  # mass spread evenly over 4 of 16 positions: H = log 4 / log 16 = 0.5
    assert channel_entropy(f).item() == pytest.approx(0.5, abs=1e-4)
    g = torch.randn(3, 5, 6, 7)
    ent = channel_entropy(g)
    assert bool(((ent >= 0) & (ent <= 1)).all())
    # a hotter softmax spreads the mass: entropy goes up
    assert bool((channel_entropy(g, tau=10.0) > channel_entropy(g, tau=0.1)).all())
    assert torch.equal(channel_entropy(torch.randn(2, 4, 1, 1)), torch.ones(2, 4))
    with pytest.raises(ConfigError):
        channel_entropy(torch.randn(4, 4))


def test_gate_in_open_interval_and_parts_sum_to_input():
    torch.manual_seed(0)
    block = DFDR(32, num_domains=3, hparams=DFDRHparams(**V1))
    f = torch.randn(4, 32, 6, 10) * 3
    out = block(f)
    assert isinstance(out, DFDROutput)
    assert out.gate.shape == (4, 32) and out.entropy.shape == (4, 32)
    assert bool(((out.gate > 0) & (out.gate < 1)).all())
    assert torch.allclose(out.shared + out.private, f, atol=1e-6)
    assert torch.allclose(out.shared, out.gate[:, :, None, None] * f, atol=1e-6)
    assert torch.allclose(out.private, (1 - out.gate[:, :, None, None]) * f, atol=1e-5)
    gamma = block.gamma
    assert torch.allclose(gamma, torch.full((32,), 0.1), atol=1e-6)
    assert torch.allclose(out.features, out.shared + gamma[None, :, None, None] * out.private, atol=1e-6)
    assert out.private_logits.shape == (4, 3)


def test_gamma_stays_in_unit_interval():
    block = DFDR(16, num_domains=2)
    with torch.no_grad():
        block.gamma_logit[:8] = 80.0
        block.gamma_logit[8:] = -80.0
    assert bool(((block.gamma >= 0) & (block.gamma <= 1)).all())
    assert block.gamma[0].item() == pytest.approx(1.0) and block.gamma[-1].item() == pytest.approx(0.0)


def _handmade_output(shared_values, gate_value, c=2):
    shared = torch.stack([torch.full((c, 3, 3), float(v)) for v in shared_values])
    gate = torch.full((len(shared_values), c), gate_value)
    zeros = torch.zeros_like(shared)
    return DFDROutput(shared, shared, zeros, gate, torch.ones_like(gate))


def test_align_loss_by_hand():
    out = _handmade_output([1.0, 3.0, 1.0], gate_value=0.7)
    terms = align_loss(out, torch.tensor([[0, 1]]), rho=0.5)
    # GAP difference (-2, -2): squared norm 8, divided by C = 2
    assert terms.align.item() == pytest.approx(4.0)
    assert terms.collapse.item() == pytest.approx(0.04)
    # identical twins agree perfectly; the mean is over pairs
    assert align_loss(out, torch.tensor([[0, 2]])).align.item() == pytest.approx(0.0)
    assert align_loss(out, torch.tensor([[0, 1], [0, 2]])).align.item() == pytest.approx(2.0)
    empty = align_loss(out, torch.zeros(0, 2, dtype=torch.long))
    assert empty.align.item() == 0.0
    with pytest.raises(ConfigError):
        align_loss(out, torch.tensor([[0, 7]]))


def test_align_loss_trains_the_gate():
    torch.manual_seed(0)
    block = DFDR(16, num_domains=2, hparams=DFDRHparams(**V1))
    f = torch.randn(2, 16, 5, 5)
    terms = align_loss(block(f), torch.tensor([[0, 1]]))
    (terms.align + terms.collapse).backward()
    assert block.gate_fc1.weight.grad is not None and block.gate_fc1.weight.grad.abs().sum() > 0


def test_reassembly_loss_is_domain_cross_entropy_and_learns():
    torch.manual_seed(0)
    block = DFDR(8, num_domains=3)
    domains = torch.tensor([0, 1, 2, 0, 1, 2])
    # each domain adds its own constant offset to every channel: a "style" the private part can carry
    base = torch.randn(6, 8, 4, 4)
    f = base + domains[:, None, None, None].float() * 2.0
    out = block(f)
    expected = F.cross_entropy(out.private_logits, domains)
    assert reassembly_loss(out, domains).item() == pytest.approx(expected.item())
    opt = torch.optim.Adam(block.parameters(), lr=0.05)
    first = None
    for _ in range(40):
        loss = reassembly_loss(block(f), domains)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_swap_reassembly():
    torch.manual_seed(0)
    block = DFDR(8, num_domains=3)
    out = block(torch.randn(4, 8, 3, 3))
    pairs = torch.tensor([[0, 2], [1, 3]])
    swapped = block.swap(out, pairs)
    g = block.gamma[None, :, None, None]
    assert swapped.shape == (2, 8, 3, 3)
    assert torch.allclose(swapped[0], (out.shared[0] + g * out.private[2])[0])
    assert torch.allclose(swapped, swap_reassembly(out, pairs, block.gamma))


def test_domain_posterior_mode():
    torch.manual_seed(0)
    hp = DFDRHparams(**{**V1, "entropy_mode": "domain_posterior"})
    block = DFDR(8, num_domains=3, hparams=hp)
    domains = torch.tensor([0, 1, 2, 0])
    out = block(torch.randn(4, 8, 5, 5))
    assert out.posterior_logits.shape == (4, 8, 3)
    assert bool(((out.entropy >= 0) & (out.entropy <= 1)).all())
    # near-zero initial weights: every channel is undecided
    assert torch.allclose(out.entropy, torch.ones(4, 8), atol=1e-2)
    assert posterior_loss(out, domains).item() == pytest.approx(math.log(3), abs=0.05)
    losses = dfdr_losses(out, domains, torch.tensor([[0, 1]]), hp)
    assert set(losses) == {"loss_align", "loss_collapse", "loss_rea", "loss_posterior"}
    with pytest.raises(ConfigError):
        posterior_loss(DFDR(8, 3, DFDRHparams(**V1))(torch.randn(2, 8, 3, 3)), torch.tensor([0, 1]))


def test_weighted_losses_use_hparams():
    torch.manual_seed(0)
    hp = DFDRHparams(**{**V1, "w_align": 2.0, "w_collapse": 3.0, "w_rea": 0.5})
    out = DFDR(8, 2, hp)(torch.randn(2, 8, 3, 3))
    pairs, domains = torch.tensor([[0, 1]]), torch.tensor([0, 1])
    losses = dfdr_losses(out, domains, pairs, hp)
    terms = align_loss(out, pairs, hp.rho)
    assert losses["loss_align"].item() == pytest.approx(2.0 * terms.align.item())
    assert losses["loss_collapse"].item() == pytest.approx(3.0 * terms.collapse.item())
    assert losses["loss_rea"].item() == pytest.approx(0.5 * reassembly_loss(out, domains).item())


@pytest.mark.parametrize(
    "kwargs",
    [dict(entropy_mode="nope"), dict(reassembly="mix"), dict(tau=0.0), dict(gamma_init=1.0), dict(rho=0.0),
     dict(method="v4"), dict(split="half"), dict(method="v1", entropy_mode="zscore")],
)
def test_bad_hparams_raise(kwargs):
    with pytest.raises(ConfigError):
        DFDRHparams(**kwargs)


def test_bad_shapes_raise():
    with pytest.raises(ConfigError, match="at least 2 domains"):
        DFDR(8, num_domains=1)
    with pytest.raises(ConfigError, match="8 channels"):
        DFDR(8, num_domains=2)(torch.randn(1, 4, 3, 3))
