"""DFDR: entropy-guided channel decoupling and reassembly (the first DRSF block), in one file.

Two designs, chosen by ``DFDRHparams.method``. **v2** (default): a scale-free per-channel score
(domain-posterior entropy, or the spatial entropy of z-scored maps) drives a per-channel monotone gate;
the top ``rho * C`` channels are shared, the rest private (hard 0/1 split, straight-through gradient);
``L_align`` makes the twins' whole shared maps agree position by position (source held fixed);
``L_rea`` reads the domain off the private part of a *detached* map, so it trains the gate and the
domain head but never the backbone below. **v1** (``method="v1"``), the first reading, is below:

Input ``F`` is a feature map ``[N, C, H, W]`` holding every domain of the batch (source and its
pseudo-domain twins). The block:

1. scores each channel by its spatial entropy ``H(n, c)`` in [0, 1] (``channel_entropy``): a channel
   whose energy sits on a few positions is object-like, a diffuse one is style-like;
2. turns ``[GAP(F); 1 - H]`` into a per-channel gate ``a`` in (0, 1) with an SE-style MLP;
3. decouples ``F_sha = a * F`` (shared, discriminative) and ``F_pri = (1 - a) * F`` (private: style,
   synthetic artefacts);
4. reassembles ``F~ = F_sha + gamma * F_pri`` with a learnable per-channel ``gamma`` in (0, 1).

Losses: ``align_loss`` (twins' shared parts agree, plus a guard against a collapsing gate) and
``reassembly_loss`` (a linear domain classifier must read the domain off the private part).
The forms of the entropy, gate and losses are this kit's reading of the paper; ``docs/method.md``
lists them with their config fields.
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

ENTROPY_MODES = ("spatial", "zscore", "domain_posterior")
REASSEMBLY_MODES = ("residual", "swap")
METHODS = ("v3", "v2", "v1")
SPLITS = ("topk", "soft")
# v2 gate slope at init: a fully decided score (0 or 1) gives a gate of sigmoid(+-4) = 0.98 / 0.02
GATE_SLOPE_INIT = 8.0


@dataclass(frozen=True)
class DFDRHparams:
    """Hyperparameters of the DFDR block and its losses (defaults: ``drsf_kit.models.hparams``).

    The field defaults are the v2 design; ``drsf_kit.models.hparams.V1_DEFAULTS`` holds the first
    reading's values, selected with ``method="v1"``.
    """

    # "v2": scale-free score, top-k split, invariance on the whole shared map, detached private loss;
    # "v3": the v2 block, placed on every path to the head (the shallowest map the head reads, if it is
    # shallower than layer2: the mini segmenter's skip); "v1": the first reading (SE-style gate on [GAP; 1 - H], soft split, pooled alignment), for ablations.
    method: str = "v2"
    # Softmax temperature of the spatial entropy; 1.0 scores raw activations as they are.
    tau: float = 1.0
    # "spatial" (v1: entropy of raw activations), "zscore" (entropy of each channel's z-scored map, blind
    # to its scale) or "domain_posterior" (a channel whose statistics identify the domain scores low).
    entropy_mode: str = "domain_posterior"
    # SE reduction of the gate MLP; 16 as in squeeze-and-excitation keeps the block tiny.
    reduction: int = 16
    # Initial share of the private part kept in the output: small, so DFDR starts near "shared only".
    gamma_init: float = 0.1
    # v1: target mean gate of the collapse guard; v2 (topk): the share of channels kept as shared.
    rho: float = 0.5
    # v2: "topk" (hard 0/1 split of the rho*C best-scored channels, straight-through gradient) or "soft".
    split: str = "topk"
    # "residual": F_sha + gamma*F_pri for every sample; "swap" also adds source-shared + twin-private samples.
    reassembly: str = "residual"
    # Weight of L_align (v1: pooled shared vectors of twins agree; v2: whole shared maps agree).
    w_align: float = 0.5
    # Weight of the gate regulariser: v1 / split "soft": the collapse guard (mean(a) - rho)^2; v2 "topk":
    # the commitment of the soft gate to the hard split (binary cross-entropy).
    w_collapse: float = 1.0
    # Weight of L_rea (domain must be readable from the private part).
    w_rea: float = 0.1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"DFDR method {self.method!r} is unknown; valid: {', '.join(METHODS)}")
        if self.split not in SPLITS:
            raise ConfigError(f"DFDR split {self.split!r} is unknown; valid: {', '.join(SPLITS)}")
        if self.method == "v1" and self.entropy_mode == "zscore":
            raise ConfigError("DFDR entropy_mode 'zscore' belongs to method v2")
        if self.entropy_mode not in ENTROPY_MODES:
            raise ConfigError(f"DFDR entropy_mode {self.entropy_mode!r} is unknown; valid: {', '.join(ENTROPY_MODES)}")
        if self.reassembly not in REASSEMBLY_MODES:
            raise ConfigError(f"DFDR reassembly {self.reassembly!r} is unknown; valid: {', '.join(REASSEMBLY_MODES)}")
        if self.tau <= 0:
            raise ConfigError(f"DFDR tau must be > 0, got {self.tau}")
        if self.reduction < 1:
            raise ConfigError(f"DFDR reduction must be >= 1, got {self.reduction}")
        if not 0.0 < self.gamma_init < 1.0:
            raise ConfigError(f"DFDR gamma_init must lie in (0, 1), got {self.gamma_init}")
        if not 0.0 < self.rho < 1.0:
            raise ConfigError(f"DFDR rho must lie in (0, 1), got {self.rho}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the fields (the hparam keys DFDR owns)."""
        return tuple(f.name for f in fields(cls))


class DFDROutput(NamedTuple):
    """What ``DFDR.forward`` returns; analysis code reads every field."""

    features: torch.Tensor  # F~ = F_sha + gamma * F_pri, [N, C, H, W]
    shared: torch.Tensor  # F_sha = a * F
    private: torch.Tensor  # F_pri = (1 - a) * F
    gate: torch.Tensor  # a, [N, C] in (0, 1)
    entropy: torch.Tensor  # H, [N, C] in [0, 1]
    private_logits: Optional[torch.Tensor] = None  # domain classifier on GAP(F_pri), [N, K+1] float32
    posterior_logits: Optional[torch.Tensor] = None  # per-channel domain posterior, [N, C, K+1] (domain_posterior mode)
    gate_soft: Optional[torch.Tensor] = None  # v2: sigmoid of the gate logits before the hard split, [N, C]


class AlignTerms(NamedTuple):
    """The two terms of the alignment objective, reported separately."""

    align: torch.Tensor
    collapse: torch.Tensor


@full_precision()
def channel_entropy(f: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Normalised spatial entropy of every channel: ``[N, C, H, W] -> [N, C]`` in [0, 1].

    ``p = softmax over the H*W positions of f / tau``; ``H = -sum p log p / log(H*W)``. A constant map
    gives 1, a single spike gives ~0. A 1x1 map carries no spatial information and gives 1.
    """
    if f.dim() != 4:
        raise ConfigError(f"channel_entropy expects [N, C, H, W], got shape {tuple(f.shape)}")
    n, c, h, w = f.shape
    if h * w == 1:
        return f.new_ones((n, c), dtype=torch.float32)
    # float32 even under autocast: log-softmax of half-precision maps loses the tails.
    logits = f.float().reshape(n, c, h * w) / tau
    logp = F.log_softmax(logits, dim=-1)
    ent = -(logp.exp() * logp).sum(dim=-1) / math.log(h * w)
    return ent.clamp(0.0, 1.0)


@full_precision()
def zscore_entropy(f: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``channel_entropy`` of each channel's map z-scored over its positions: blind to the channel's scale.

    Raw activations give nearly constant entropies (their softmax is flat); z-scoring first lets a
    spatially concentrated channel score low whatever its magnitude.
    """
    if f.dim() != 4:
        raise ConfigError(f"zscore_entropy expects [N, C, H, W], got shape {tuple(f.shape)}")
    x = f.float()
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True, unbiased=False) if x.shape[2] * x.shape[3] > 1 else torch.ones_like(mean)
    return channel_entropy((x - mean) / (std + 1e-5), tau)


@full_precision()
def channel_statistics(f: torch.Tensor, two_pass: bool = False) -> torch.Tensor:
    """Per-channel (mean, log std) of a map: ``[N, C, H, W] -> [N, C, 2]`` float32 (style statistics).

    ``two_pass`` computes the variance as ``mean((x - mean)^2)``: the same value to float rounding
    (relative difference ~1e-7) at a tenth of the CPU time of ``torch.var``'s kernel on the small maps
    DFDR sees. Inference uses it; training keeps ``torch.var``, so runs trained before it reproduce bit
    for bit (the inference gate is a hard top-k split, which such a difference changes only on an exact tie).
    """
    x = f.float().flatten(2)
    if two_pass:
        mean_k = x.mean(dim=-1, keepdim=True)
        mean, var = mean_k.squeeze(-1), (x - mean_k).pow(2).mean(dim=-1)
    else:
        mean, var = x.mean(dim=-1), x.var(dim=-1, unbiased=False)
    logstd = torch.log(var + 1e-5) * 0.5
    return torch.stack([mean, logstd], dim=-1)


class ChannelDomainPosterior(nn.Module):
    """One tiny domain classifier per channel on its (mean, log std): the ``domain_posterior`` entropy.

    Each channel c gets logits ``stats[n, c] @ W[c] + b[c]`` over the K+1 domains; its normalised
    posterior entropy is high when the channel cannot tell domains apart (shared) and low when it can.
    """

    def __init__(self, channels: int, num_domains: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, 2, num_domains))
        self.bias = nn.Parameter(torch.zeros(channels, num_domains))
        nn.init.normal_(self.weight, std=0.01)
        self.num_domains = num_domains

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits [N, C, K+1], normalised entropy [N, C])."""
        # Detached input: the classifier learns to read domains, it must not teach the backbone to write them.
        stats = channel_statistics(f.detach(), two_pass=not self.training)
        with full_precision():  # an einsum is a batched matmul: autocast would run it in half precision
            logits = torch.einsum("ncs,csk->nck", stats, self.weight.float()) + self.bias.float()
            logp = F.log_softmax(logits, dim=-1)
            ent = -(logp.exp() * logp).sum(-1) / math.log(max(self.num_domains, 2))
        return logits, ent.clamp(0.0, 1.0)


class DFDR(nn.Module):
    """Entropy-guided channel decoupling and reassembly on a ``[N, C, H, W]`` map."""

    def __init__(self, channels: int, num_domains: int, hparams: DFDRHparams | None = None):
        super().__init__()
        if num_domains < 2:
            raise ConfigError(f"DFDR needs at least 2 domains (source + one pseudo-domain), got num_domains={num_domains}")
        self.hparams = hparams or DFDRHparams()
        self.channels = channels
        self.num_domains = num_domains
        hidden = max(channels // self.hparams.reduction, 4)
        self.v2 = self.hparams.method != "v1"  # v3 keeps the v2 block (it moves where DFDR sits, base.py)
        if self.v2:
            # v2: a per-channel monotone gate on the scale-free sharedness score s in [0, 1]:
            # logit_c = w_c (s_c - 1/2) + b_c, w_c > 0. The v1 SE-MLP learned to ignore its entropy input
            # next to GAP (which is scale-dependent); here the score decides unless b_c overrules it.
            self.gate_log_w = nn.Parameter(torch.full((channels,), math.log(GATE_SLOPE_INIT)))
            self.gate_bias = nn.Parameter(torch.zeros(channels))
        else:
            # v1: SE-style gate on [GAP(F); 1 - H]
            self.gate_fc1 = nn.Linear(2 * channels, hidden)
            self.gate_fc2 = nn.Linear(hidden, channels)
        # gamma = sigmoid(gamma_logit) keeps it in (0, 1) without clamping dead gradients.
        g = self.hparams.gamma_init
        self.gamma_logit = nn.Parameter(torch.full((channels,), math.log(g / (1.0 - g))))
        self.domain_head = nn.Linear(channels, num_domains)
        self.posterior = (
            ChannelDomainPosterior(channels, num_domains) if self.hparams.entropy_mode == "domain_posterior" else None
        )

    @property
    def gamma(self) -> torch.Tensor:
        """The per-channel reassembly weight in (0, 1), ``[C]``."""
        return torch.sigmoid(self.gamma_logit)

    def forward(self, f: torch.Tensor) -> DFDROutput:
        """Decouple ``f`` into shared and private parts and reassemble them."""
        if f.dim() != 4 or f.shape[1] != self.channels:
            raise ConfigError(f"DFDR was built for {self.channels} channels, got a map of shape {tuple(f.shape)}")
        if self.v2:
            return self._forward_v2(f)
        posterior_logits = None
        if self.posterior is not None:
            posterior_logits, ent = self.posterior(f)
        else:
            ent = channel_entropy(f, self.hparams.tau)
        gap = f.float().mean(dim=(2, 3))
        z = torch.cat([gap, 1.0 - ent], dim=1)
        a = torch.sigmoid(self.gate_fc2(F.relu(self.gate_fc1(z.to(self.gate_fc1.weight.dtype)))))
        a4 = a.to(f.dtype)[:, :, None, None]
        shared = a4 * f
        private = f - shared  # == (1 - a) * f, and shared + private reproduces f exactly
        gamma = self.gamma.to(f.dtype)[None, :, None, None]
        features = shared + gamma * private
        with full_precision():  # the logits feed a loss: fp32 even under autocast
            private_logits = self.domain_head(private.float().mean(dim=(2, 3))).float()
        return DFDROutput(features, shared, private, a.float(), ent, private_logits, posterior_logits)

    def _forward_v2(self, f: torch.Tensor) -> DFDROutput:
        posterior_logits = None
        if self.posterior is not None:
            posterior_logits, ent = self.posterior(f)
        elif self.hparams.entropy_mode == "zscore":
            ent = zscore_entropy(f, self.hparams.tau)
        else:
            ent = channel_entropy(f, self.hparams.tau)
        # sharedness: a channel that cannot tell the domains apart (high posterior entropy) is shared; in
        # the spatial modes a concentrated, object-like channel (low entropy) is
        share = ent.float() if self.posterior is not None else 1.0 - ent.float()
        logits = self.gate_log_w.exp().float() * (share - 0.5) + self.gate_bias.float()
        soft = torch.sigmoid(logits)
        if self.hparams.split == "topk":
            # Hard 0/1 split of the k best-scored channels; the straight-through term passes the soft
            # gate's gradient, so the losses below still train the score and the gate.
            k = min(max(1, round(self.hparams.rho * self.channels)), self.channels)
            hard = torch.zeros_like(soft).scatter_(1, logits.topk(k, dim=1).indices, 1.0)
            a = hard + soft - soft.detach()
        else:
            a = soft
        a4 = a.to(f.dtype)[:, :, None, None]
        shared = a4 * f
        private = f - shared
        gamma = self.gamma.to(f.dtype)[None, :, None, None]
        features = shared + gamma * private
        # The private branch's domain loss trains the gate and the domain head, never the backbone below:
        # the map is detached (the gate is not) and divided by its RMS so the head reads style, not scale.
        # Only training reads it: inference pays for the score, the split and gamma, nothing more.
        private_logits = None
        if self.training:
            fd = f.detach().float()
            scale = fd.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-6).rsqrt()
            priv_in = ((1.0 - a.float())[:, :, None, None] * fd * scale).mean(dim=(2, 3))
            with full_precision():  # the logits feed a loss: fp32 even under autocast
                private_logits = self.domain_head(priv_in.to(self.domain_head.weight.dtype)).float()
        return DFDROutput(features, shared, private, a.float(), ent, private_logits, posterior_logits, soft)

    def swap(self, out: DFDROutput, pairs: torch.Tensor) -> torch.Tensor:
        """Swap reassembly for twin pairs: ``F_sha(source_i) + gamma * F_pri(twin_i)``, ``[P, C, H, W]``.

        The result keeps the source's content with the twin's style; the model trains it as an extra
        sample with the source's labels.
        """
        return swap_reassembly(out, pairs, self.gamma)


def swap_reassembly(out: DFDROutput, pairs: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``F_sha(pairs[:, 0]) + gamma * F_pri(pairs[:, 1])`` for each (source, twin) pair."""
    pairs = _check_pairs(pairs, out.shared.shape[0])
    g = gamma.to(out.shared.dtype)[None, :, None, None]
    return out.shared[pairs[:, 0]] + g * out.private[pairs[:, 1]]


def _check_pairs(pairs: torch.Tensor | None, n: int) -> torch.Tensor:
    if pairs is None:
        return torch.zeros((0, 2), dtype=torch.long)
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    if pairs.numel() == 0:
        return pairs.reshape(0, 2)
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ConfigError(f"pairs must be a [P, 2] tensor of batch indices, got shape {tuple(pairs.shape)}")
    if int(pairs.min()) < 0 or int(pairs.max()) >= n:
        raise ConfigError(f"pairs hold batch indices outside [0, {n - 1}]: {pairs.tolist()}")
    return pairs


@full_precision()
def align_loss(out: DFDROutput, pairs: torch.Tensor | None, rho: float = 0.5) -> AlignTerms:
    """L_align and the gate-collapse guard, in float32.

    ``align`` = mean over twin pairs of ``||GAP(F_sha(S, i)) - GAP(F_sha(P, i))||^2 / C`` (0 without
    pairs); ``collapse`` = ``(mean(a) - rho)^2`` over the whole batch.
    """
    pairs = _check_pairs(pairs, out.shared.shape[0]).to(out.shared.device)
    collapse = (out.gate.float().mean() - rho) ** 2
    if pairs.shape[0] == 0:
        # A zero that still belongs to the graph, so callers can always backpropagate through it.
        return AlignTerms(out.shared.float().sum() * 0.0, collapse)
    gap = out.shared.float().mean(dim=(2, 3))
    diff = gap[pairs[:, 0]] - gap[pairs[:, 1]]
    align = diff.pow(2).sum(dim=1).div(gap.shape[1]).mean()
    return AlignTerms(align, collapse)


@full_precision()
def reassembly_loss(out: DFDROutput, domains: torch.Tensor) -> torch.Tensor:
    """L_rea: cross-entropy of the linear domain classifier on ``GAP(F_pri)`` over the K+1 domains."""
    if out.private_logits is None:
        raise ConfigError("reassembly_loss needs DFDROutput.private_logits (produced by DFDR.forward)")
    domains = torch.as_tensor(domains, dtype=torch.long, device=out.private_logits.device)
    return F.cross_entropy(out.private_logits.float(), domains)


@full_precision()
def posterior_loss(out: DFDROutput, domains: torch.Tensor) -> torch.Tensor:
    """Training signal of the per-channel domain posterior (``entropy_mode="domain_posterior"``)."""
    if out.posterior_logits is None:
        raise ConfigError("posterior_loss needs entropy_mode='domain_posterior'")
    n, c, k = out.posterior_logits.shape
    domains = torch.as_tensor(domains, dtype=torch.long, device=out.posterior_logits.device)
    return F.cross_entropy(out.posterior_logits.reshape(n * c, k), domains.repeat_interleave(c))


@full_precision()
def invariance_loss(out: DFDROutput, pairs: torch.Tensor | None) -> torch.Tensor:
    """v2 L_align: twins' whole shared maps agree position by position, the source's map held fixed.

    Mean over twin pairs of ``1 - cos(F_sha(P, i), sg F_sha(S, i))``, each map flattened over channels
    and positions: twins share content and geometry, so their shared channels must match everywhere, not
    only on average; the source is the anchor (stop-gradient) and the cosine is blind to the map's scale.
    An empty (all-zero) shared map scores 1, as badly as an unrelated one: a loss normalised by the
    source's energy instead (``mean((P - S)^2) / mean(S^2)``) was measured to reach 0 by letting the
    shared channels die, after which the head read only ``gamma`` times the private part.
    """
    pairs = _check_pairs(pairs, out.shared.shape[0]).to(out.shared.device)
    if pairs.shape[0] == 0:
        return out.shared.float().sum() * 0.0
    src = out.shared[pairs[:, 0]].float().detach().flatten(1)
    twin = out.shared[pairs[:, 1]].float().flatten(1)
    return (1.0 - F.cosine_similarity(twin, src, dim=1, eps=1e-6)).mean()


def _dfdr_losses_v2(out: DFDROutput, domains: torch.Tensor, pairs: torch.Tensor | None, hp: DFDRHparams) -> dict:
    n = int(domains.shape[0])  # rows past n (fused or swapped samples) have no one-hot domain
    losses = {
        "loss_align": hp.w_align * invariance_loss(out, pairs),
        "loss_rea": hp.w_rea * F.cross_entropy(out.private_logits[:n].float(),
                                               domains.long().to(out.private_logits.device)),
    }
    if hp.split == "soft":
        losses["loss_collapse"] = hp.w_collapse * (out.gate[:n].float().mean() - hp.rho) ** 2
    else:
        # commitment of the soft gate to the hard split it produced: L_rea alone pushes every gate down
        # (more private signal always helps a domain classifier) and L_align only pushes domain-laden
        # channels down, so without this nothing holds the shared channels' soft gates up
        soft = out.gate_soft[:n].float().clamp(1e-6, 1 - 1e-6)
        hard = (out.gate[:n].detach() > 0.5).float()
        losses["loss_commit"] = hp.w_collapse * F.binary_cross_entropy(soft, hard)
    if out.posterior_logits is not None:
        post = out.posterior_logits[:n]
        c, k = post.shape[1], post.shape[2]
        losses["loss_posterior"] = hp.w_rea * F.cross_entropy(
            post.reshape(n * c, k), domains.long().to(post.device).repeat_interleave(c))
    return losses


@full_precision()
def dfdr_losses(out: DFDROutput, domains: torch.Tensor, pairs: torch.Tensor | None, hp: DFDRHparams) -> dict:
    """The weighted DFDR loss terms a model adds to its loss dict."""
    if hp.method != "v1":
        return _dfdr_losses_v2(out, domains, pairs, hp)
    terms = align_loss(out, pairs, hp.rho)
    losses = {
        "loss_align": hp.w_align * terms.align,
        "loss_collapse": hp.w_collapse * terms.collapse,
        "loss_rea": hp.w_rea * reassembly_loss(out, domains),
    }
    if out.posterior_logits is not None:
        losses["loss_posterior"] = hp.w_rea * posterior_loss(out, domains)
    return losses


@full_precision()
def dfdr_stats(out: DFDROutput, module: DFDR) -> dict[str, float]:
    """Floats for the training log: gate mean/std, entropy mean, gamma mean (v2: also saturation, spread)."""
    with torch.no_grad():
        if out.gate_soft is not None:
            soft = out.gate_soft.float()
            return {
                "gate_mean": float(soft.mean()),
                "gate_std": float(soft.std()) if soft.numel() > 1 else 0.0,
                # share of soft gates beyond 0.1 / 0.9: near 0 means the gate does not decide anything
                "gate_saturation": float(((soft < 0.1) | (soft > 0.9)).float().mean()),
                "entropy_mean": float(out.entropy.mean()),
                # spread of the score across channels: a constant score carries no information to the gate
                "entropy_spread": float(out.entropy.float().std(dim=1).mean()) if out.entropy.shape[1] > 1 else 0.0,
                "gamma_mean": float(module.gamma.mean()),
            }
        return {
            "gate_mean": float(out.gate.mean()),
            "gate_std": float(out.gate.std()) if out.gate.numel() > 1 else 0.0,
            "entropy_mean": float(out.entropy.mean()),
            "gamma_mean": float(module.gamma.mean()),
        }
