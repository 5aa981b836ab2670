"""A GPU run's first steps, on the CPU: every variant trains under autocast with CUDA's policy emulated.

CPU autocast alone lets ``binary_cross_entropy`` run, where CUDA's autocast refuses it; so the suite once
passed while every DFDR variant died at step 1 on a GPU. ``cuda_autocast_on_cpu`` runs convolutions and
matrix products in bf16 as a GPU does and raises on the ops CUDA bans.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from drsf_kit.models import VARIANTS, build_model
from drsf_kit.train.precision import cuda_autocast_on_cpu
from drsf_kit.utils.precision import full_precision

H, W = 48, 64  # bf16 convolutions are slow on the CPU: tiny images


def _batch(task: str):
    """Two sources with two twins each, of four different pseudo-domains (MDSF fuses twin with twin)."""
    g = torch.Generator().manual_seed(0)
    src = torch.rand(2, 3, H, W, generator=g)
    twins = (0.5 * src.repeat(2, 1, 1, 1) + 0.4 * torch.rand(4, 3, 1, 1, generator=g)).clamp(0, 1)
    images = torch.cat([src, twins[[0, 2, 1, 3]]])  # rows 2, 3: twins of source 0; rows 4, 5: of source 1
    domains = torch.tensor([0, 0, 1, 2, 3, 4])
    pairs = torch.tensor([[0, 2], [0, 3], [1, 4], [1, 5]])
    if task == "det":
        t0 = {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([3])}
        t1 = {"boxes": torch.tensor([[20.0, 10.0, 60.0, 44.0]]), "labels": torch.tensor([1])}
        return list(images), [t0, t1, t0, t0, t1, t1], domains, pairs
    mask = torch.randint(0, 19, (2, H, W), generator=g)
    return images, mask[[0, 1, 0, 0, 1, 1]], domains, pairs


def test_emulation_raises_where_cuda_would_and_full_precision_lifts_it():
    p, y = torch.rand(5), torch.ones(5)
    with cuda_autocast_on_cpu():
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            F.binary_cross_entropy(p, y)
        with full_precision():
            assert torch.isfinite(F.binary_cross_entropy(p, y))
        # convolutions run in bf16, as CUDA's autocast runs them
        assert F.conv2d(torch.rand(1, 2, 4, 4), torch.rand(3, 2, 1, 1)).dtype == torch.bfloat16
    assert torch.isfinite(F.binary_cross_entropy(p, y))  # outside autocast nothing is banned


V3_ADV = {"method": "v3", "w_adv": 1.0}
CASES = [(task, variant, None) for task in ("det", "seg") for variant in VARIANTS]
# the first reading of both blocks, v3 (in-place style fusion) without and with its adversary
CASES += [(task, "drsf", hp) for task in ("det", "seg") for hp in ({"method": "v1"}, {"method": "v3"}, V3_ADV)]
CASES += [(task, "mdsf", V3_ADV) for task in ("det", "seg")]


@pytest.mark.parametrize("task,variant,hparams", CASES)
def test_every_variant_trains_under_cuda_autocast_policy(task, variant, hparams):
    kw = {"min_size": H, "max_size": W} if task == "det" else {}
    torch.manual_seed(0)
    model = build_model(task, "mini", variant, 5, hparams=hparams, **kw)
    images, targets, domains, pairs = _batch(task)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    # before and after the adversary's warm-up, so both halves of every loss run
    for progress in (0.0, 0.9):
        with cuda_autocast_on_cpu():
            losses = model(images, targets, domains=domains, pairs=pairs, progress=progress, generator=gen)
        for name, value in losses.items():
            assert value.dtype == torch.float32, f"{variant} {name} is {value.dtype}"
            assert math.isfinite(value.item()), f"{variant} {name} = {value.item()}"
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(v) for v in model.last_stats.values())
    model.eval()
    with torch.no_grad(), cuda_autocast_on_cpu():
        out = model(images[:2] if task == "det" else images[:2])
    assert (len(out) == 2) if task == "det" else (out.shape[:2] == (2, 19) and torch.isfinite(out.float()).all())
