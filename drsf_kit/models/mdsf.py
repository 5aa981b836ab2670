"""MDSF: multi-pseudo-domain soft fusion, with an optional adversarial domain discriminator, in one file.

Three designs, chosen by ``MDSFHparams.method`` (defaults per design: ``drsf_kit.models.hparams``):

* **v3** (``fuse_styles``, ``CellStatsDiscriminator``): soft fusion in place, in feature-statistics space.
  At a shallow body stage each twin's per-channel mean and std become, with probability ``p_mix``, a
  mix ``lam * stats(twin) + (1 - lam) * stats(partner)`` with another twin of the same source from
  another pseudo-domain (``lam ~ Beta(alpha, alpha)``, stretched by ``extrapolate``); no row is added.
  An adversary is optional (``w_adv > 0``): a standardised statistics discriminator on grid cells of a
  body stage, with v2's warm-up, confusion objective and health record.
* **v2** (the section at the end of this file): fused rows appended to the batch at a shallow stage and
  after the backbone, a class-balanced discriminator that learns before it fights.
* **v1**: for a twin pair (the same source image seen in domains d_a and d_b), ``z_mix = lambda z_a +
  (1 - lambda) z_b`` on every map the head reads replaces the twin's maps with probability ``p_mix``;
  a discriminator behind a gradient-reversal layer predicts the soft domain label
  ``y = lambda e(d_a) + (1 - lambda) e(d_b)``.

Inference uses none of this. ``interpolate_styles`` (v3) and ``mix_features`` (v1, v2) are what the
notebooks' slider moves. ``docs/method.md`` lists every choice with its config field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from drsf_kit.errors import ConfigError
from drsf_kit.utils.precision import full_precision

DISC_INPUT_NORMS = ("rms", "none")
METHODS = ("v3", "v2", "v1")
DISC_LABELS = ("balanced", "binary")
DISC_ARCHS = ("stats", "conv")
ADV_OBJECTIVES = ("confusion", "reversal")


@dataclass(frozen=True)
class MDSFHparams:
    """Hyperparameters of MDSF and its adversarial loss (defaults: ``drsf_kit.models.hparams``).

    The field defaults are the v2 design; ``drsf_kit.models.hparams.V1_DEFAULTS`` holds the first
    reading's values, selected with ``method="v1"``.
    """

    # "v2": fused samples added to the batch from twins of several pseudo-domains, at a shallow stage and
    # after the backbone; a class-balanced discriminator that learns before the reversal switches on.
    # "v1": the first reading (in-place mixing after the backbone, DANN ramp), for ablations.
    # "v3": soft fusion in place, in feature-statistics space: at ``fuse_stage`` a twin's per-channel mean
    # and std become a mix of its own and another twin's of the same source (another pseudo-domain); no
    # row is added, and the adversary (``w_adv`` > 0) reads ``adv_stage`` through a standardised
    # discriminator on grid cells of the map.
    method: str = "v2"
    # Beta(alpha, alpha) concentration. v1: 0.4 (mixes near either end); v2: 2.0 (mixes in between, an
    # intermediate domain rather than a slightly perturbed twin).
    alpha: float = 2.0
    # v1: probability a twin is replaced by a mix; v2: probability each source adds a fused sample (per stage).
    p_mix: float = 0.5
    # v1: final strength of the DANN ramp; v2: the constant reversal weight used after adv_warmup.
    eta_max: float = 0.05
    # Hidden width of the discriminator's 3x3 conv: small keeps the block under 2% of the model.
    disc_hidden: int = 32
    # Weight of L_adv. v1: 0.1; v2: 1.0, so the discriminator learns at full strength (what reaches the
    # backbone is scaled by eta_max separately).
    w_adv: float = 1.0
    # "rms": the discriminator reads each map divided by its root-mean-square, so the reversed gradient
    # cannot win the game by inflating feature magnitudes (unnormalised FPN maps did, and L_adv blew up);
    # "none": the raw maps, as in plain DANN.
    disc_input_norm: str = "rms"
    # v2: twins per source image, each from a different pseudo-domain (the sampler draws them).
    twins_per_source: int = 2
    # v2: body stage where fused samples are added (style lives in layer1-layer2); "none" disables it.
    fuse_stage: str = "layer1"
    # v2: also add fused samples of the maps the head reads (after the backbone).
    fuse_head: bool = True
    # v2: share of training (progress) during which the discriminator learns with no reversal at all.
    adv_warmup: float = 0.2
    # v2: learning-rate multiplier of the discriminator, so it can keep up with the moving features.
    disc_lr_mult: float = 10.0
    # v2: "stats" (an MLP on each channel's mean and log-std: style is channel statistics, and it learns in
    # a few steps) or "conv" (v1's 3x3 conv -> 1x1 conv, with a leaky ReLU).
    disc_arch: str = "stats"
    # v2: "balanced" (K+1 domains, each weighted by its inverse batch frequency) or "binary"
    # (source vs synthetic, both halves weighted equally).
    disc_labels: str = "balanced"
    # v2: what the backbone is trained for once the warm-up ends: "confusion" (the frozen
    # discriminator's posterior over the domains present becomes uniform; bounded) or "reversal"
    # (a gradient-reversal layer: the discriminator's loss as large as possible; unbounded).
    adv_objective: str = "confusion"
    # v3: lambda ~ Beta(alpha, alpha) is stretched to [-extrapolate, 1 + extrapolate]: > 0 also fuses
    # beyond the pair (a style further from the twin's partner than the twin itself).
    extrapolate: float = 0.0
    # v3: the body stage the adversary reads ("layer2": style is still linearly readable there).
    adv_stage: str = "layer2"
    # v3: the discriminator scores each of disc_cells x disc_cells cells of the map as its own row
    # (more rows per domain and step than one per image).
    disc_cells: int = 2

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"MDSF method {self.method!r} is unknown; valid: {', '.join(METHODS)}")
        if self.disc_arch not in DISC_ARCHS:
            raise ConfigError(f"MDSF disc_arch {self.disc_arch!r} is unknown; valid: {', '.join(DISC_ARCHS)}")
        if self.disc_labels not in DISC_LABELS:
            raise ConfigError(f"MDSF disc_labels {self.disc_labels!r} is unknown; valid: {', '.join(DISC_LABELS)}")
        if self.adv_objective not in ADV_OBJECTIVES:
            raise ConfigError(f"MDSF adv_objective {self.adv_objective!r} is unknown; valid: {', '.join(ADV_OBJECTIVES)}")
        if int(self.twins_per_source) < 1:
            raise ConfigError(f"MDSF twins_per_source must be >= 1, got {self.twins_per_source}")
        if not 0.0 <= self.adv_warmup <= 1.0:
            raise ConfigError(f"MDSF adv_warmup must lie in [0, 1], got {self.adv_warmup}")
        if self.disc_lr_mult <= 0:
            raise ConfigError(f"MDSF disc_lr_mult must be > 0, got {self.disc_lr_mult}")
        if self.alpha <= 0:
            raise ConfigError(f"MDSF alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.p_mix <= 1.0:
            raise ConfigError(f"MDSF p_mix must lie in [0, 1], got {self.p_mix}")
        if self.extrapolate < 0:
            raise ConfigError(f"MDSF extrapolate must be >= 0, got {self.extrapolate}")
        if int(self.disc_cells) < 1:
            raise ConfigError(f"MDSF disc_cells must be >= 1, got {self.disc_cells}")
        if self.eta_max < 0:
            raise ConfigError(f"MDSF eta_max must be >= 0, got {self.eta_max}")
        if self.disc_hidden < 1:
            raise ConfigError(f"MDSF disc_hidden must be >= 1, got {self.disc_hidden}")
        if self.disc_input_norm not in DISC_INPUT_NORMS:
            raise ConfigError(f"MDSF disc_input_norm {self.disc_input_norm!r} is unknown; valid: {', '.join(DISC_INPUT_NORMS)}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the fields (the hparam keys MDSF owns)."""
        return tuple(f.name for f in fields(cls))


def _sample_log_gamma(shape: int, concentration: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """log of Gamma(concentration, 1) samples (Marsaglia-Tsang), float64 on the generator's device.

    torch.distributions cannot take a Generator, so this draws from ``generator`` explicitly; the log
    form keeps tiny samples (small alpha) from underflowing to 0.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    boost = concentration < 1.0
    a = concentration + 1.0 if boost else concentration
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(shape, dtype=torch.float64, device=device)
    todo = torch.arange(shape, device=device)
    for _ in range(1000):  # acceptance is > 95% per round; 1000 rounds never run out in practice
        if todo.numel() == 0:
            break
        m = todo.numel()
        x = torch.randn(m, generator=generator, dtype=torch.float64, device=device)
        u = torch.rand(m, generator=generator, dtype=torch.float64, device=device)
        v = (1.0 + c * x) ** 3
        ok = v > 0
        logv = torch.log(v.clamp_min(1e-300))
        accept = ok & (torch.log(u.clamp_min(1e-300)) < 0.5 * x * x + d - d * v + d * logv)
        out[todo[accept]] = math.log(d) + logv[accept]
        todo = todo[~accept]
    if todo.numel():
        raise RuntimeError("Gamma sampler did not converge")  # pragma: no cover - probability ~0
    if boost:
        # Gamma(a) = Gamma(a + 1) * U^(1/a)
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device).clamp_min(1e-300)
        out = out + torch.log(u) / concentration
    return out


def sample_lambda(n: int, alpha: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``n`` draws of lambda ~ Beta(alpha, alpha) as float32 on the generator's device (cpu by default).

    The same generator state gives the same draws, so a seeded run mixes identically.
    """
    if alpha <= 0:
        raise ConfigError(f"Beta concentration alpha must be > 0, got {alpha}")
    if n == 0:
        return torch.zeros(0)
    g1 = _sample_log_gamma(n, alpha, generator)
    g2 = _sample_log_gamma(n, alpha, generator)
    # G1 / (G1 + G2) == sigmoid(log G1 - log G2), stable even when both are tiny.
    return torch.sigmoid(g1 - g2).float()


def mix_features(z_a: torch.Tensor, z_b: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """``lam * z_a + (1 - lam) * z_b``; ``lam`` is a float or a ``[N]`` tensor (one per sample)."""
    if z_a.shape != z_b.shape:
        raise ConfigError(f"cannot mix maps of shapes {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if not torch.is_tensor(lam):
        lam = torch.tensor(float(lam))
    lam = lam.to(device=z_a.device, dtype=z_a.dtype)
    if lam.dim() == 1:
        lam = lam.reshape(-1, *([1] * (z_a.dim() - 1)))
    return lam * z_a + (1.0 - lam) * z_b


@full_precision()
def soft_domain_labels(d_a: torch.Tensor, d_b: torch.Tensor, lam: torch.Tensor, num_domains: int) -> torch.Tensor:
    """``y = lam e(d_a) + (1 - lam) e(d_b)``, ``[P, K+1]`` float32; every row sums to 1."""
    lam = torch.as_tensor(lam, dtype=torch.float32, device=d_a.device).reshape(-1, 1)
    e_a = F.one_hot(d_a.long(), num_domains).float()
    e_b = F.one_hot(d_b.long(), num_domains).float()
    return lam * e_a + (1.0 - lam) * e_b


def twin_partners(domains: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """For each (source, twin) pair, another pair of the same source whose twin has another domain.

    Returns ``[P]`` pair indices (the next such pair in batch order, cyclically; -1 where there is
    none). Tensor operations only: no host synchronisation, whatever the device.
    """
    p = pairs.shape[0]
    src, dom = pairs[:, 0], domains[pairs[:, 1]]
    ok = (src[:, None] == src[None, :]) & (dom[:, None] != dom[None, :])
    idx = torch.arange(p, device=pairs.device)
    offset = (idx[None, :] - idx[:, None]) % max(p, 1)
    score = torch.where(ok, offset, torch.full_like(offset, p))
    best = score.argmin(dim=1)
    has = score.gather(1, best[:, None]).squeeze(1) < p
    return torch.where(has, best, torch.full_like(best, -1))


class StyleFusion(NamedTuple):
    """What one in-place fusion did (for the log and the tests)."""

    rows: torch.Tensor  # [P] twin rows considered (one per pair)
    partners: torch.Tensor  # [P] the twin row each was fused with (itself where it has no partner)
    lam: torch.Tensor  # [P] weight of the row's own statistics (may leave [0, 1] with extrapolate)
    active: torch.Tensor  # [P] bool: fused this step


def fuse_styles(x: torch.Tensor, domains: torch.Tensor, pairs: torch.Tensor, alpha: float, p_mix: float,
                extrapolate: float = 0.0, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, StyleFusion]:
    """MDSF v3: each twin's channel statistics, with probability ``p_mix``, mixed with another twin's.

    For twin row ``r`` and partner ``q`` (a twin of the same source from another pseudo-domain)
    ``x[r] <- (x[r] - mu_r) / sigma_r * (lam sigma_r + (1 - lam) sigma_q) + lam mu_r + (1 - lam) mu_q``,
    per channel; the statistics are detached (MixStyle, Zhou et al. ICLR 2021), so the gradient flows
    through the normalised content. Same rows in, same rows out: sources and unfused twins untouched.
    Coins and lambdas are drawn for every pair on the generator's device, so the random stream does not
    depend on the batch's content.
    """
    device = x.device
    gen_device = generator.device if generator is not None else torch.device("cpu")
    p = pairs.shape[0]
    coins = torch.rand(p, generator=generator, device=gen_device)
    lam = sample_lambda(p, alpha, generator).to(gen_device) * (1.0 + 2.0 * extrapolate) - extrapolate
    coins, lam = coins.to(device, non_blocking=True), lam.to(device, non_blocking=True)
    rows = pairs[:, 1]
    partner_pair = twin_partners(domains, pairs)
    active = (coins < p_mix) & (partner_pair >= 0)
    partners = torch.where(partner_pair >= 0, rows[partner_pair.clamp_min(0)], rows)
    info = StyleFusion(rows, partners, lam, active)
    if p == 0:
        return x, info
    with full_precision():
        xf = x.float()
        mu = xf.mean(dim=(2, 3), keepdim=True).detach()
        sigma = (xf.var(dim=(2, 3), keepdim=True, unbiased=False) + 1e-5).sqrt().detach()
        w = lam.view(-1, 1, 1, 1)
        mu_mix = w * mu[rows] + (1.0 - w) * mu[partners]
        sigma_mix = (w * sigma[rows] + (1.0 - w) * sigma[partners]).clamp_min(1e-5)
        fused = (xf[rows] - mu[rows]) / sigma[rows] * sigma_mix + mu_mix
        fused = torch.where(active.view(-1, 1, 1, 1), fused, xf[rows])
    return x.index_copy(0, rows, fused.to(x.dtype)), info


def interpolate_styles(x_a: torch.Tensor, x_b: torch.Tensor, lam: float) -> torch.Tensor:
    """``x_a``'s content with the channel statistics ``lam * stats(a) + (1 - lam) * stats(b)``.

    The operation v3 training applies to a twin and its partner, for one pair of maps ``[N, C, H, W]``
    (``lam = 1`` returns ``x_a``); what the notebook's slider moves.
    """
    if x_a.shape != x_b.shape:
        raise ConfigError(f"cannot fuse maps of shapes {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    with full_precision():
        a, b = x_a.float(), x_b.float()
        mu_a, mu_b = a.mean(dim=(2, 3), keepdim=True), b.mean(dim=(2, 3), keepdim=True)
        s_a = (a.var(dim=(2, 3), keepdim=True, unbiased=False) + 1e-5).sqrt()
        s_b = (b.var(dim=(2, 3), keepdim=True, unbiased=False) + 1e-5).sqrt()
        sigma = (lam * s_a + (1.0 - lam) * s_b).clamp_min(1e-5)
        out = (a - mu_a) / s_a * sigma + lam * mu_a + (1.0 - lam) * mu_b
    return out.to(x_a.dtype)


class GradientReversal(torch.autograd.Function):
    """Identity on the forward pass; multiplies the incoming gradient by ``-coeff`` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        """Return ``x`` unchanged and remember ``coeff``."""
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        """``-coeff * grad_output`` for ``x``; no gradient for ``coeff``."""
        return grad_output.neg() * ctx.coeff, None


def grad_reverse(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Apply the gradient-reversal layer with coefficient ``coeff``."""
    return GradientReversal.apply(x, coeff)


def grl_coefficient(progress: float, eta_max: float = 1.0) -> float:
    """DANN ramp: ``eta_max * (2 / (1 + exp(-10 p)) - 1)``; 0 at p = 0, close to eta_max at p = 1."""
    p = min(max(float(progress), 0.0), 1.0)
    return float(eta_max) * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


@full_precision()
def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_k target_k log softmax(logits)_k`` in float32."""
    return -(target.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def rms_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Divide each sample's map by its root-mean-square over (C, H, W); keeps relative channel statistics."""
    scale = x.float().pow(2).mean(dim=tuple(range(1, x.dim())), keepdim=True).add(eps).rsqrt()
    return x * scale.to(x.dtype)


class DomainDiscriminator(nn.Module):
    """3x3 conv -> ReLU -> 1x1 conv to K+1 logits per position, averaged over positions.

    With ``input_norm="rms"`` each input map is first divided by its root-mean-square (see MDSFHparams).
    """

    def __init__(self, in_channels: int, num_domains: int, hidden: int = 32, input_norm: str = "rms",
                 leaky: float = 0.0):
        super().__init__()
        if input_norm not in DISC_INPUT_NORMS:
            raise ConfigError(f"input_norm {input_norm!r} is unknown; valid: {', '.join(DISC_INPUT_NORMS)}")
        self.input_norm = input_norm
        # > 0: leaky ReLU (v2); plain ReLU left about half the v1 discriminator's hidden units dead
        self.leaky = float(leaky)
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.classifier = nn.Conv2d(hidden, num_domains, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Domain logits ``[N, K+1]`` (float32) for a map ``[N, C, H, W]``."""
        if self.input_norm == "rms":
            x = rms_normalize(x)
        h = self.conv(x)
        h = F.leaky_relu(h, self.leaky) if self.leaky > 0 else F.relu(h)
        return self.classifier(h).float().mean(dim=(2, 3))


class StatsDiscriminator(nn.Module):
    """MLP on per-channel (mean, log std) of the RMS-normalised map: ``[N, C, H, W] -> [N, K+1]``.

    Domain shifts of the pseudo-domains are mostly style, i.e. channel statistics; reading them directly
    lets the discriminator learn the domains in a few steps, and reversing its gradient asks the
    backbone to align exactly those statistics.
    """

    def __init__(self, in_channels: int, num_domains: int, hidden: int = 32):
        super().__init__()
        self.input_norm = "rms"
        self.fc1 = nn.Linear(2 * in_channels, hidden)
        self.fc2 = nn.Linear(hidden, num_domains)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Domain logits ``[N, K+1]`` (float32)."""
        with full_precision():  # style statistics of a half-precision map lose their tails
            z = rms_normalize(x.float()).flatten(2)
            stats = torch.cat([z.mean(dim=-1), 0.5 * torch.log(z.var(dim=-1, unbiased=False) + 1e-5)], dim=1)
        return self.fc2(F.leaky_relu(self.fc1(stats.to(self.fc1.weight.dtype)), 0.2)).float()


class CellStatsDiscriminator(nn.Module):
    """MDSF v3's adversary: an MLP on standardised per-channel (mean, log std) of grid cells of the map.

    Each of the ``cells x cells`` cells of a map is one row (several rows per domain and step), its
    statistics are taken on the RMS-normalised map and standardised by a BatchNorm without affine
    parameters, so no channel's scale decides the answer. ``[N, C, H, W] -> [N * cells^2, K+1]``.
    """

    def __init__(self, in_channels: int, num_domains: int, hidden: int = 32, cells: int = 2):
        super().__init__()
        self.input_norm = "rms"
        self.cells = int(cells)
        self.norm = nn.BatchNorm1d(2 * in_channels, affine=False)
        self.fc1 = nn.Linear(2 * in_channels, hidden)
        self.fc2 = nn.Linear(hidden, num_domains)

    def rows_per_image(self) -> int:
        """Rows the discriminator scores for each image (its cells)."""
        return self.cells * self.cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Domain logits ``[N * cells^2, K+1]`` (float32), image-major (image 0's cells first)."""
        with full_precision():
            z = rms_normalize(x.float())
            n, c, h, w = z.shape
            k = self.cells if min(h, w) >= self.cells else 1
            z = F.adaptive_avg_pool2d(z, (k * max(h // k, 1), k * max(w // k, 1))) if (h % k or w % k) else z
            hh, ww = z.shape[2] // k, z.shape[3] // k
            z = z.reshape(n, c, k, hh, k, ww).permute(0, 2, 4, 1, 3, 5).reshape(n * k * k, c, hh * ww)
            stats = torch.cat([z.mean(dim=-1), 0.5 * torch.log(z.var(dim=-1, unbiased=False) + 1e-5)], dim=1)
            stats = self.norm(stats)
            if k != self.cells:  # a map smaller than the grid: repeat its one row per cell
                stats = stats.repeat_interleave(self.cells * self.cells, dim=0)
        return self.fc2(F.leaky_relu(self.fc1(stats), 0.2)).float()


class MixInfo(NamedTuple):
    """Which rows were mixed, with what, and their soft labels."""

    rows: torch.Tensor  # [M] batch rows whose features were replaced by the mix (the twins)
    partners: torch.Tensor  # [M] rows they were mixed with
    lam: torch.Tensor  # [M] lambda of each mix (weight of the partner's features)
    soft_labels: torch.Tensor  # [M, K+1]


class MDSF(nn.Module):
    """Soft fusion of twin features plus the adversarial domain discriminator."""

    def __init__(self, channels: int, num_domains: int, hparams: MDSFHparams | None = None):
        super().__init__()
        if num_domains < 2:
            raise ConfigError(f"MDSF needs at least 2 domains (source + one pseudo-domain), got num_domains={num_domains}")
        self.hparams = hparams or MDSFHparams()
        self.num_domains = num_domains
        self.v3 = self.hparams.method == "v3"
        # v3 shares v2's adversary code (balanced targets, warm-up, confusion, health)
        self.v2 = self.hparams.method in ("v2", "v3")
        if self.v3:
            # no adversary unless it has a weight: its parameters would otherwise sit idle in the model
            self.discriminator = (CellStatsDiscriminator(channels, num_domains, self.hparams.disc_hidden,
                                                         self.hparams.disc_cells) if self.hparams.w_adv > 0 else None)
        elif self.v2 and self.hparams.disc_arch == "stats":
            self.discriminator = StatsDiscriminator(channels, num_domains, self.hparams.disc_hidden)
        else:
            self.discriminator = DomainDiscriminator(channels, num_domains, self.hparams.disc_hidden,
                                                     self.hparams.disc_input_norm, leaky=0.2 if self.v2 else 0.0)
        # v2 health: running (exponential mean) balanced accuracy of the discriminator on each batch
        # before it learns from it, and the chance level it must beat.
        self.running_acc: Optional[float] = None
        self.running_chance: Optional[float] = None
        # the running accuracy and chance when the warm-up ended (the backbone's part switched on): with
        # the end-of-run values they tell "never learned" from "learned, then confused"
        self.warmup_acc: Optional[float] = None
        self.warmup_chance: Optional[float] = None

    # The running health numbers travel in the state dict, so a resumed run logs what an uninterrupted one
    # would; a state dict saved before they existed loads with them unset.
    def get_extra_state(self) -> dict:
        return {"running_acc": self.running_acc, "running_chance": self.running_chance,
                "warmup_acc": self.warmup_acc, "warmup_chance": self.warmup_chance}

    def set_extra_state(self, state: dict) -> None:
        self.running_acc, self.running_chance = state.get("running_acc"), state.get("running_chance")
        self.warmup_acc, self.warmup_chance = state.get("warmup_acc"), state.get("warmup_chance")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "_extra_state", {})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fuse(
        self,
        maps: dict[str, torch.Tensor],
        domains: torch.Tensor,
        pairs: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[dict[str, torch.Tensor], MixInfo]:
        """Replace, with probability p_mix, each twin's maps by its mix with its partner.

        Args:
            maps: every map the head reads, ``[N, ...]`` each; all get the same lambda per pair.
            domains: ``[N]`` domain ids; pairs whose two domains coincide are never mixed.
            pairs: ``[P, 2]`` (source_i, twin_i) batch indices.
            generator: draws the coin flips and lambdas (cpu generator; None = torch's global RNG).
        Returns:
            The new maps (the input maps where nothing was mixed) and a ``MixInfo``.
        """
        device = domains.device
        empty = MixInfo(
            torch.zeros(0, dtype=torch.long, device=device),
            torch.zeros(0, dtype=torch.long, device=device),
            torch.zeros(0, device=device),
            torch.zeros(0, self.num_domains, device=device),
        )
        if pairs is None or pairs.numel() == 0:
            return maps, empty
        pairs_cpu = pairs.detach().cpu().long()
        dom_cpu = domains.detach().cpu().long()
        gen_device = generator.device if generator is not None else torch.device("cpu")
        # Draw for every pair, mixable or not, so the random stream does not depend on the batch content.
        coins = torch.rand(pairs_cpu.shape[0], generator=generator, device=gen_device).cpu()
        lams = sample_lambda(pairs_cpu.shape[0], self.hparams.alpha, generator).cpu()
        keep = (coins < self.hparams.p_mix) & (dom_cpu[pairs_cpu[:, 0]] != dom_cpu[pairs_cpu[:, 1]])
        if not bool(keep.any()):
            return maps, empty
        partners = pairs_cpu[keep, 0].to(device)
        rows = pairs_cpu[keep, 1].to(device)
        lam = lams[keep].to(device)
        new_maps = {}
        for name, z in maps.items():
            mixed = mix_features(z[partners], z[rows], lam)
            # index_copy keeps autograd through both the untouched rows and the mixes.
            new_maps[name] = z.index_copy(0, rows, mixed)
        soft = soft_domain_labels(domains[partners], domains[rows], lam, self.num_domains)
        return new_maps, MixInfo(rows, partners, lam, soft)

    def adversarial_loss(
        self,
        unmixed: torch.Tensor,
        domains: torch.Tensor,
        mixed: Optional[torch.Tensor],
        soft_labels: Optional[torch.Tensor],
        coeff: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft cross-entropy of the discriminator on unmixed (one-hot) and mixed (soft) maps.

        Both go through one gradient-reversal layer of strength ``coeff``. Returns (loss, logits of
        the unmixed rows) so the caller can log the discriminator's accuracy.
        """
        targets = F.one_hot(domains.long(), self.num_domains).float()
        x = unmixed
        if mixed is not None and mixed.shape[0] > 0:
            x = torch.cat([unmixed, mixed], dim=0)
            targets = torch.cat([targets, soft_labels.float()], dim=0)
        logits = self.discriminator(grad_reverse(x, coeff))
        return soft_cross_entropy(logits, targets), logits[: unmixed.shape[0]]

    def domain_probs(self, features: torch.Tensor) -> torch.Tensor:
        """Discriminator softmax ``[N, K+1]`` on a map (no gradient reversal; for analysis).

        Gradients flow unless the caller disables them, so attribution methods can use it.
        """
        probs = F.softmax(self.discriminator(features), dim=1)
        rows = getattr(self.discriminator, "rows_per_image", None)
        if rows is not None:  # v3 scores grid cells: an image's posterior is the mean over its cells
            probs = probs.reshape(features.shape[0], rows(), -1).mean(dim=1)
        return probs

# ------------------------------------------------------------------------------------------------------
# MDSF v2 (``method: v2``), whose adversary v3 reuses.
#
# MDSF v2: fused samples added across pseudo-domains, and an adversary that learns before it fights.
#
# The first reading (``method="v1"``, in ``mdsf.py``) replaced a twin's maps by a mix with its source
# after the whole backbone, so the heads lost twin signal, two pseudo-domains were never fused and the
# discriminator, trained on an unbalanced batch while its gradient was already reversed, stayed at the
# majority-class prior. v2 changes three things:
#
# * **fusion plan** (``fusion_plan``): the sampler gives each source twins of several pseudo-domains;
#   per source, two of its twins (of different pseudo-domains; the source and its twin when it has
#   only one) are fused with ``lambda ~ Beta(alpha, alpha)``;
# * **added, not substituted** (``append_fused``): the fused maps are appended to the batch as extra
#   rows, at a shallow body stage (``fuse_stage``) and/or on the maps the head reads (``fuse_head``).
#   A fused row is trained with its source's labels: twins share the source's geometry, so their
#   labels are the source's labels, and so are those of any mix of them;
# * **adversary** (``reversal_weight``, ``adversarial_loss_v2``): a class-balanced (or binary
#   source-vs-synthetic) discriminator with its own learning-rate multiplier learns on detached
#   features during a warm-up, then a constant small weight ``eta_max`` switches the backbone's part
#   on. That part is, by default (``adv_objective="confusion"``), a *confusion* loss: the backbone
#   is trained so that the (frozen) discriminator's posterior over the domains present is uniform, a
#   bounded goal whose gradient vanishes once the domains are confused. ``"reversal"`` is the plain
#   gradient-reversal layer, whose goal (make the discriminator's loss as large as possible) has no
#   bound: measured on the segmentation protocol, it drove the discriminator's loss to 10-28 (a flipped,
#   not a confused, discriminator) and doubled the task loss. The discriminator's accuracy on each
#   batch, measured before it learns from that batch, is logged next to the chance level.

# How fast the running accuracy forgets (about the last 20 steps count).
RUNNING_DECAY = 0.95
# Margin over chance below which a discriminator is reported as "at the prior".
PRIOR_MARGIN = 0.05


class FusionPlan(NamedTuple):
    """Which rows to fuse into how many new ones, with what weight and label."""

    a: torch.Tensor  # [M] batch rows of the first member (weight lam)
    b: torch.Tensor  # [M] batch rows of the second member (weight 1 - lam)
    src: torch.Tensor  # [M] the source row whose labels the fused sample takes
    lam: torch.Tensor  # [M]
    soft_labels: torch.Tensor  # [M, K+1] lam e(d_a) + (1 - lam) e(d_b)


def _empty_plan(num_domains: int, device) -> FusionPlan:
    z = torch.zeros(0, dtype=torch.long, device=device)
    return FusionPlan(z, z, z, torch.zeros(0, device=device), torch.zeros(0, num_domains, device=device))


def fusion_plan(mdsf: MDSF, domains: torch.Tensor, pairs: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> FusionPlan:
    """One candidate fusion per source image: two of its twins of different pseudo-domains when it has
    them, else the source with its twin; kept with probability ``p_mix``.

    Coins and lambdas are drawn for every source, fusable or not, so the random stream does not depend
    on the batch's content.
    """
    device = domains.device
    if pairs is None or pairs.numel() == 0:
        return _empty_plan(mdsf.num_domains, device)
    pairs_cpu = pairs.detach().cpu().long()
    dom = domains.detach().cpu().long()
    sources = sorted(set(pairs_cpu[:, 0].tolist()))
    gen_device = generator.device if generator is not None else torch.device("cpu")
    coins = torch.rand(len(sources), generator=generator, device=gen_device).cpu()
    lams = sample_lambda(len(sources), mdsf.hparams.alpha, generator).cpu()
    a, b, src, lam = [], [], [], []
    for s, coin, l in zip(sources, coins.tolist(), lams.tolist()):
        twins = [int(t) for t in pairs_cpu[pairs_cpu[:, 0] == s, 1].tolist()]
        members = None
        for i, t in enumerate(twins):  # the first two twins of different pseudo-domains
            other = next((u for u in twins[i + 1:] if dom[u] != dom[t]), None)
            if other is not None:
                members = (t, other)
                break
        if members is None and twins and dom[twins[0]] != dom[s]:
            members = (s, twins[0])
        if members is None or coin >= mdsf.hparams.p_mix:
            continue
        a.append(members[0])
        b.append(members[1])
        src.append(s)
        lam.append(l)
    if not a:
        return _empty_plan(mdsf.num_domains, device)
    a_t = torch.tensor(a, dtype=torch.long, device=device)
    b_t = torch.tensor(b, dtype=torch.long, device=device)
    lam_t = torch.tensor(lam, dtype=torch.float32, device=device)
    soft = soft_domain_labels(domains[a_t], domains[b_t], lam_t, mdsf.num_domains)
    return FusionPlan(a_t, b_t, torch.tensor(src, dtype=torch.long, device=device), lam_t, soft)


def append_fused(maps: dict[str, torch.Tensor], plan: FusionPlan) -> dict[str, torch.Tensor]:
    """Every map with ``lam * z[a] + (1 - lam) * z[b]`` appended as new rows (the old rows untouched)."""
    if plan.a.numel() == 0:
        return dict(maps)
    return {k: torch.cat([z, mix_features(z[plan.a], z[plan.b], plan.lam)], dim=0) for k, z in maps.items()}


def reversal_weight(progress: float, hp) -> float:
    """0 during the warm-up (``progress < adv_warmup``), then the constant ``eta_max``."""
    return 0.0 if float(progress) < hp.adv_warmup else float(hp.eta_max)


@full_precision()
def _targets(mdsf: MDSF, domains: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class ids the discriminator is scored on and per-row weights that balance the classes."""
    if mdsf.hparams.disc_labels == "binary":
        cls = (domains > 0).long()
    else:
        cls = domains.long()
    counts = torch.bincount(cls, minlength=int(cls.max()) + 1 if cls.numel() else 1).float()
    present = int((counts > 0).sum())
    weights = 1.0 / (counts[cls] * max(present, 1))  # each present class carries the same total weight
    return cls, weights


@full_precision()
def _log_probs(mdsf: MDSF, logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=1)
    if mdsf.hparams.disc_labels == "binary":  # p(synthetic) = sum of the pseudo-domains' probabilities
        return torch.stack([logp[:, 0], torch.logsumexp(logp[:, 1:], dim=1)], dim=1)
    return logp


def adversarial_loss_v2(mdsf: MDSF, real: torch.Tensor, domains: torch.Tensor, fused: Optional[torch.Tensor],
                        soft_labels: Optional[torch.Tensor], coeff: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Class-balanced discriminator loss on the real rows plus soft cross-entropy on the fused rows.

    ``coeff == 0`` detaches the features (the discriminator learns, the backbone is left alone).
    Otherwise, with ``adv_objective="reversal"`` the features pass a gradient-reversal layer of that
    strength; with ``"confusion"`` the discriminator still learns on detached features and
    ``coeff * confusion_loss`` (through a frozen copy of it) is added for the backbone.
    Returns (loss, health stats).
    """
    x = real if fused is None or fused.shape[0] == 0 else torch.cat([real, fused], dim=0)
    reverse = coeff > 0.0 and mdsf.hparams.adv_objective == "reversal"
    logp = _log_probs(mdsf, mdsf.discriminator(grad_reverse(x, coeff) if reverse else x.detach()))
    # v3's discriminator scores several cells per image: each cell is a row with its image's label
    per_image = mdsf.discriminator.rows_per_image() if hasattr(mdsf.discriminator, "rows_per_image") else 1
    if per_image > 1:
        domains = domains.repeat_interleave(per_image)
        soft_labels = soft_labels.repeat_interleave(per_image, dim=0) if soft_labels is not None else None
    n = real.shape[0] * per_image
    cls, weights = _targets(mdsf, domains)
    loss = -(weights * logp[:n].gather(1, cls[:, None]).squeeze(1)).sum()
    m = 0 if fused is None else fused.shape[0] * per_image
    if m:
        soft = soft_labels.float()
        if mdsf.hparams.disc_labels == "binary":
            soft = torch.stack([soft[:, 0], soft[:, 1:].sum(dim=1)], dim=1)
        # fused rows count as much as one real class, shared among them
        loss = loss + (-(soft * logp[n:]).sum(dim=1).mean()) * (1.0 / max(int(torch.unique(cls).numel()), 1))
    health = _health(mdsf, logp[:n].detach(), cls, coeff, m, n)
    if coeff > 0.0 and not reverse:
        confusion = confusion_loss(mdsf, real, cls)
        loss = loss + coeff * confusion
        health["confusion"] = float(confusion.detach())
    return loss, health


def confusion_loss(mdsf: MDSF, real: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """How far the discriminator's posterior on ``real`` is from uniform over the classes present.

    ``mean over rows of -mean_{c present} log p(c | x) - log(#present)``: >= 0, and 0 exactly when
    every row's posterior is uniform over the present classes. The discriminator's parameters are
    read detached, so this term trains the features only (the discriminator keeps learning to tell
    the domains apart from its own loss).
    """
    frozen = {name: p.detach() for name, p in mdsf.discriminator.named_parameters()}
    logp = _log_probs(mdsf, torch.func.functional_call(mdsf.discriminator, frozen, (real,)))
    present = torch.unique(cls)
    return -logp[:, present].mean(dim=1).mean() - torch.log(torch.tensor(float(present.numel())))


@full_precision()
def _health(mdsf: MDSF, logp: torch.Tensor, cls: torch.Tensor, coeff: float, fused: int, n: int) -> dict[str, float]:
    """Accuracy before this batch's update (held out for the batch), next to the prior and chance."""
    with torch.no_grad():
        pred = logp.argmax(1)
        correct = (pred == cls).float()
        classes = torch.unique(cls)
        recalls = torch.stack([correct[cls == c].mean() for c in classes])
        balanced = float(recalls.mean())
        chance = 1.0 / max(int(classes.numel()), 1)
        prior = float(torch.bincount(cls).max()) / max(int(cls.numel()), 1)
        if coeff > 0.0 and mdsf.warmup_acc is None and mdsf.running_acc is not None:
            # the first step of the backbone's part: what the discriminator had learned by then
            mdsf.warmup_acc, mdsf.warmup_chance = mdsf.running_acc, mdsf.running_chance
        if mdsf.running_acc is None:
            mdsf.running_acc, mdsf.running_chance = balanced, chance
        else:
            mdsf.running_acc = RUNNING_DECAY * mdsf.running_acc + (1 - RUNNING_DECAY) * balanced
            mdsf.running_chance = RUNNING_DECAY * mdsf.running_chance + (1 - RUNNING_DECAY) * chance
        return {
            "disc_acc": float(correct.mean()),
            "disc_prior": prior,  # accuracy of always answering the batch's majority class
            "disc_bal_acc": balanced,
            "disc_chance": chance,  # balanced accuracy of any constant answer
            "disc_bal_acc_running": mdsf.running_acc,
            "grl_coeff": float(coeff),
            "fused_fraction": fused / max(n + fused, 1),
        }


def discriminator_verdict(mdsf: MDSF) -> Optional[dict]:
    """End-of-run health of the discriminator, at the end of its warm-up and at the end of training.

    ``state`` is one of ``never_learned`` (at the warm-up's end its running balanced accuracy was within
    ``PRIOR_MARGIN`` of chance: the adversary never read the domains, so its confusion term carried no
    domain information), ``learned_then_confused`` (above chance then, within the margin now: the
    backbone confused it), ``still_reads_domains`` (above chance at both ends) or, for a run that never
    left the warm-up, ``learned`` / ``never_learned`` from the final value alone. ``at_prior`` is True when
    the final accuracy is within the margin of chance.
    """
    if mdsf.running_acc is None:
        return None
    at_prior = mdsf.running_acc < mdsf.running_chance + PRIOR_MARGIN
    if mdsf.warmup_acc is None:
        state = "never_learned" if at_prior else "learned"
    elif mdsf.warmup_acc < mdsf.warmup_chance + PRIOR_MARGIN:
        state = "never_learned"
    else:
        state = "learned_then_confused" if at_prior else "still_reads_domains"
    warm = ("" if mdsf.warmup_acc is None else
            f"{mdsf.warmup_acc:.3f} (chance {mdsf.warmup_chance:.3f}) at the end of the warm-up, ")
    words = {"never_learned": "NEVER LEARNED the domains (its confusion term carried no domain information)",
             "learned_then_confused": "learned the domains, then the backbone confused it",
             "still_reads_domains": "learned the domains and still reads them",
             "learned": "above chance (the warm-up never ended)"}[state]
    text = (f"discriminator balanced accuracy {warm}{mdsf.running_acc:.3f} vs chance {mdsf.running_chance:.3f} "
            f"at the end: {words}")
    return {"disc_bal_acc_running": mdsf.running_acc, "disc_chance": mdsf.running_chance, "at_prior": at_prior,
            "disc_bal_acc_warmup": mdsf.warmup_acc, "disc_chance_warmup": mdsf.warmup_chance, "state": state,
            "text": text}
