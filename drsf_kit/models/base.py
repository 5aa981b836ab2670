"""What detectors and segmenters share: running a staged body with DFDR and MDSF inserted by name.

A model is ``body stages -> head inputs -> task head``. DFDR acts after one body stage
(``dfdr_stage``, default ``layer2``); MDSF acts either after a body stage or, by default
(``mdsf_stage="head"``), on every map the head reads (FPN levels; ASPP input and skip). The
subclasses add the head, the task loss and the task's input/output conventions.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from torch import nn

from drsf_kit.errors import ConfigError
from drsf_kit.models.backbones import StageBody
from drsf_kit.models.dfdr import DFDR, DFDROutput, dfdr_losses, dfdr_stats
from drsf_kit.models.hparams import resolve_hparams, split_hparams
from drsf_kit.models.mdsf import (MDSF, adversarial_loss_v2, append_fused, discriminator_verdict, fuse_styles, fusion_plan,
                                  grl_coefficient, interpolate_styles, mix_features, reversal_weight)
from drsf_kit.models.variants import get_variant
from drsf_kit.utils.precision import full_precision

HEAD = "head"
_X = "__x__"  # key of the running tensor while MDSF mixes a body stage together with collected maps


@dataclass
class StepAux:
    """Side results of one feature pass: weighted block losses, log stats, swap bookkeeping."""

    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    swap_src: Optional[torch.Tensor] = None  # source rows of the swap-reassembled extra samples
    dfdr_out: Optional[DFDROutput] = None
    mdsf_map: Optional[torch.Tensor] = None  # discriminator input at the MDSF stage (after mixing)
    # rows appended to the batch (swap samples, MDSF v2 fused samples), in the order appended: the source
    # row whose labels each one takes
    extra_src: list = field(default_factory=list)
    # MDSF v2: (first appended row, FusionPlan) of every block of fused rows
    fused: list = field(default_factory=list)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Temporarily switch ``model`` to eval mode (analysis calls must not update BatchNorm statistics)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class DRSFModel(nn.Module):
    """Base class: a ``StageBody`` plus optional DFDR and MDSF blocks placed by stage name."""

    task = ""  # "det" or "seg"
    disc_key = ""  # the head-input map the MDSF discriminator reads when mdsf_stage == "head"

    def __init__(
        self,
        body: StageBody,
        head_channels: dict[str, int],
        collect_stages: list[str],
        variant: str,
        num_domains: int,
        hparams: Optional[dict[str, Any]],
        dfdr_stage: Optional[str],
        mdsf_stage: Optional[str],
    ):
        super().__init__()
        self.spec = get_variant(variant)
        self.variant = variant
        if not isinstance(num_domains, int) or num_domains < 1:
            raise ConfigError(f"num_domains must be a positive int (source + K pseudo-domains), got {num_domains!r}")
        if (self.spec.use_dfdr or self.spec.use_mdsf) and num_domains < 2:
            raise ConfigError(f"variant {variant!r} needs num_domains >= 2 (source + at least one pseudo-domain), "
                              f"got {num_domains}")
        self.num_domains = num_domains
        self.body = body
        self.collect_stages = list(collect_stages)
        self.hparams = resolve_hparams(variant, self.task, hparams)
        dfdr_hp, mdsf_hp = split_hparams(self.hparams)
        names = body.stage_names()
        if dfdr_stage is None and self.hparams.get("method") == "v3" and self.spec.use_dfdr:
            # v3: DFDR on every path to the head, so at the shallowest stage the head reads when that one
            # comes before layer2 (the mini segmenter's skip reads layer1; a detector's FPN starts at layer2)
            read = [names.index(st) for st in collect_stages if st in names]
            dfdr_stage = names[min(read)] if read and min(read) < names.index("layer2") else None
        self.dfdr_stage = dfdr_stage or "layer2"
        if self.dfdr_stage not in names:
            raise ConfigError(f"dfdr_stage {self.dfdr_stage!r} is not a stage of this backbone; valid: {', '.join(names)}")
        self.mdsf_stage = mdsf_stage or HEAD
        if self.mdsf_stage != HEAD and self.mdsf_stage not in names:
            raise ConfigError(f"mdsf_stage {self.mdsf_stage!r} is unknown; valid: {HEAD}, {', '.join(names)}")
        self.dfdr = DFDR(body.channels[self.dfdr_stage], num_domains, dfdr_hp) if self.spec.use_dfdr else None
        mdsf_channels = head_channels[self.disc_key] if self.mdsf_stage == HEAD else body.channels[self.mdsf_stage]
        if mdsf_hp is not None and mdsf_hp.method == "v3" and self.spec.use_mdsf:
            if mdsf_hp.adv_stage not in names:
                raise ConfigError(f"adv_stage {mdsf_hp.adv_stage!r} is not a stage of this backbone; valid: {', '.join(names)}")
            mdsf_channels = body.channels[mdsf_hp.adv_stage]  # v3's adversary reads a body stage
        self.mdsf = MDSF(mdsf_channels, num_domains, mdsf_hp) if self.spec.use_mdsf else None
        fuse = self._v2_fuse_stage or self._v3_fuse_stage
        if fuse not in (None, "none") and fuse not in names:
            raise ConfigError(f"fuse_stage {fuse!r} is not a stage of this backbone; valid: none, {', '.join(names)}")
        self.head_channels = dict(head_channels)
        self.last_stats: dict[str, float] = {}
        self.build_config: dict[str, Any] = {}  # filled by build_model: rebuilds this architecture

    # --- subclasses --------------------------------------------------------------------------------
    def head_inputs(self, collected: dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        """Maps the head reads, from the collected body stage outputs (FPN for detection)."""
        raise NotImplementedError

    # --- batch checks --------------------------------------------------------------------------------
    def _check_batch(self, n: int, domains, pairs, device) -> tuple[torch.Tensor, torch.Tensor]:
        if domains is None:
            domains = torch.zeros(n, dtype=torch.long)
        domains = torch.as_tensor(domains, dtype=torch.long).to(device)
        if domains.shape != (n,):
            raise ConfigError(f"domains must be a LongTensor of shape [{n}] (one id per image), got {tuple(domains.shape)}")
        if n and (int(domains.min()) < 0 or int(domains.max()) >= self.num_domains):
            raise ConfigError(f"domain ids must lie in [0, {self.num_domains - 1}] (num_domains={self.num_domains}), "
                              f"got {domains.tolist()}")
        pairs = torch.as_tensor(pairs if pairs is not None else [], dtype=torch.long).cpu()
        if pairs.numel() == 0:
            pairs = torch.zeros((0, 2), dtype=torch.long)
        elif pairs.dim() != 2 or pairs.shape[1] != 2:
            raise ConfigError("pairs must be a LongTensor [P, 2] of (source_i, twin_i) batch indices, "
                              f"got shape {tuple(pairs.shape)}")
        if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= n):
            raise ConfigError(f"pairs hold batch indices outside [0, {n - 1}]: {pairs.tolist()}")
        return domains, pairs.to(device)

    # --- the staged feature pass --------------------------------------------------------------------
    def _features(
        self,
        x: torch.Tensor,
        *,
        train: bool = False,
        domains: Optional[torch.Tensor] = None,
        pairs: Optional[torch.Tensor] = None,
        progress: float = 0.0,
        generator: Optional[torch.Generator] = None,
        taps: Optional[dict[str, Optional[torch.Tensor]]] = None,
        mix_lam: Optional[float] = None,
        stop_after: Optional[str] = None,
    ) -> tuple[Optional["OrderedDict[str, torch.Tensor]"], StepAux]:
        """Run the body (and FPN) with the blocks; returns (head input maps, aux).

        ``train`` enables block losses, swap samples and soft fusion; ``taps`` (name -> None) is filled
        with the named intermediate maps; ``mix_lam`` mixes rows 0 and 1 at the MDSF stage into one
        (``predict_mixed``); ``stop_after`` ends the pass after that body stage (returns None maps).
        """
        aux = StepAux()
        collected: dict[str, torch.Tensor] = {}
        for name, stage in self.body.stages.items():
            x = stage(x)
            self._tap(taps, name, x)
            if mix_lam is not None and self._v3_fuse_stage == name:
                # predict_mixed under v3: row 0 takes the statistics lam * stats(row 0) + (1 - lam) * stats(row 1),
                # the fusion training applies to a twin and its partner
                x = interpolate_styles(x[0:1], x[1:2], float(mix_lam))
                collected = {k: v[0:1] for k, v in collected.items()}
                aux.mdsf_map = x
            if train and self._v2_fuse_stage == name:
                state = self._add_fused({**collected, _X: x}, aux, domains, pairs, generator)
                x = state.pop(_X)
                collected = state
            if train and self._v3_fuse_stage == name and pairs.shape[0]:
                hp = self.mdsf.hparams
                x, _ = fuse_styles(x, domains, pairs, hp.alpha, hp.p_mix, hp.extrapolate, generator)
            if self.dfdr is not None and name == self.dfdr_stage:
                x, collected = self._apply_dfdr(x, collected, aux, train, domains, pairs, taps)
            if self._v3_adv_stage == name:
                aux.mdsf_map = x
                if train:
                    self._v3_adversary(x, aux, domains, progress)
            if name == self.mdsf_stage:
                state = self._apply_mdsf({**collected, _X: x}, _X, aux, train, domains, pairs, progress, generator, mix_lam)
                x = state.pop(_X)
                collected = state
            if name in self.collect_stages:
                collected[name] = x
            if name == stop_after:
                return None, aux
        maps = self.head_inputs(collected)
        if self.mdsf_stage == HEAD:
            maps = self._apply_mdsf(maps, self.disc_key, aux, train, domains, pairs, progress, generator, mix_lam)
        if train and self.spec.use_consistency:
            aux.losses["loss_cons"] = self.hparams["w_cons"] * consistency_loss(maps, pairs)
        for key, value in maps.items():
            self._tap(taps, f"{HEAD}.{key}", value)
        return maps, aux

    @staticmethod
    def _tap(taps, name, value):
        if taps is not None and name in taps:
            taps[name] = value

    def _apply_dfdr(self, x, collected, aux, train, domains, pairs, taps):
        out = self.dfdr(x)
        aux.dfdr_out = out
        self._tap(taps, "dfdr", out.features)
        self._tap(taps, "dfdr.shared", out.shared)
        self._tap(taps, "dfdr.private", out.private)
        if not train:
            return out.features, collected
        aux.losses.update(dfdr_losses(out, domains, pairs, self.dfdr.hparams))
        aux.stats.update(dfdr_stats(out, self.dfdr))
        x = out.features
        if self.dfdr.hparams.reassembly == "swap" and pairs.shape[0] > 0:
            # Extra samples (source content, twin style) appended to the batch with the source's labels.
            extra = self.dfdr.swap(out, pairs)
            src = pairs[:, 0]
            x = torch.cat([x, extra], dim=0)
            collected = {k: torch.cat([v, v[src]], dim=0) for k, v in collected.items()}
            aux.swap_src = src
            aux.extra_src.append(src)
        return x, collected

    def _apply_mdsf(self, maps, disc_key, aux, train, domains, pairs, progress, generator, mix_lam):
        if self.mdsf is not None and self.mdsf.v3:
            return maps  # v3 fused and judged in the body (fuse_stage, adv_stage)
        if mix_lam is not None:
            # predict_mixed: row 0 (image_a) and row 1 (image_b) become one mixed row.
            mixed = type(maps)((k, mix_features(v[0:1], v[1:2], float(mix_lam))) for k, v in maps.items())
            aux.mdsf_map = mixed[disc_key]
            return mixed
        if not train or self.mdsf is None:
            aux.mdsf_map = maps[disc_key]
            return maps
        if self.mdsf.v2:
            return self._apply_mdsf_v2(maps, disc_key, aux, domains, pairs, progress, generator)
        n = domains.shape[0]  # swap extras (rows >= n) are neither mixed nor judged by the discriminator
        unmixed = maps[disc_key][:n]
        new_maps, info = self.mdsf.fuse(dict(maps), domains, pairs, generator)
        new_maps = type(maps)((k, new_maps[k]) for k in maps)
        hp = self.mdsf.hparams
        coeff = grl_coefficient(progress, hp.eta_max)
        mixed = new_maps[disc_key][info.rows] if info.rows.numel() else None
        loss, logits = self.mdsf.adversarial_loss(unmixed, domains, mixed, info.soft_labels, coeff)
        aux.losses["loss_adv"] = hp.w_adv * loss
        with torch.no_grad():
            aux.stats["disc_acc"] = float((logits.argmax(1) == domains).float().mean())
            aux.stats["grl_coeff"] = coeff
            aux.stats["mix_fraction"] = float(info.rows.numel()) / max(int(pairs.shape[0]), 1)
            if info.rows.numel():
                aux.stats["lambda_mean"] = float(info.lam.mean())
        aux.mdsf_map = new_maps[disc_key]
        return new_maps

    # --- MDSF v2: fused samples added to the batch, the adversary's warm-up ------------------------------
    @property
    def _v2_fuse_stage(self) -> Optional[str]:
        if self.mdsf is None or not self.mdsf.v2 or self.mdsf.v3:
            return None
        return self.mdsf.hparams.fuse_stage

    # --- MDSF v3: style fusion in place, an adversary in the body ------------------------------------------
    @property
    def _v3_fuse_stage(self) -> Optional[str]:
        if self.mdsf is None or not self.mdsf.v3 or self.mdsf.hparams.fuse_stage == "none":
            return None
        return self.mdsf.hparams.fuse_stage

    @property
    def _v3_adv_stage(self) -> Optional[str]:
        if self.mdsf is None or not self.mdsf.v3 or self.mdsf.discriminator is None:
            return None
        return self.mdsf.hparams.adv_stage

    def _v3_adversary(self, x, aux, domains, progress):
        """The v3 adversary on the real rows of ``x`` (its warm-up, confusion and health as in v2)."""
        hp = self.mdsf.hparams
        n = domains.shape[0]
        loss, health = adversarial_loss_v2(self.mdsf, x[:n], domains, None, None, reversal_weight(progress, hp))
        aux.losses["loss_adv"] = hp.w_adv * loss
        aux.stats.update(health)

    @property
    def twins_per_source(self) -> int:
        """Twins per source image the sampler must draw (several pseudo-domains for MDSF v2, or for a
        variant without MDSF given ``twins_per_source``; MDSF v1 always pairs one)."""
        if self.mdsf is not None:
            return int(self.mdsf.hparams.twins_per_source) if self.mdsf.v2 else 1
        return int(self.hparams.get("twins_per_source", 1))

    def _add_fused(self, maps, aux, domains, pairs, generator):
        """Append fused rows (one plan for every map of ``maps``) and record their source rows."""
        plan = fusion_plan(self.mdsf, domains, pairs, generator)
        if plan.a.numel() == 0:
            return dict(maps)
        start = next(iter(maps.values())).shape[0]
        aux.fused.append((start, plan))
        aux.extra_src.append(plan.src)
        return append_fused(maps, plan)

    def _apply_mdsf_v2(self, maps, disc_key, aux, domains, pairs, progress, generator):
        hp = self.mdsf.hparams
        body_rows = sum(p.a.numel() for _, p in aux.fused)
        if self.mdsf_stage == HEAD and hp.fuse_head:
            maps = type(maps)(self._add_fused(dict(maps), aux, domains, pairs, generator).items())
        # what the fused samples cost: rows through the body after fuse_stage, and rows through the head only
        aux.stats["fused_rows_body"] = float(body_rows)
        aux.stats["fused_rows_head"] = float(sum(p.a.numel() for _, p in aux.fused) - body_rows)
        z = maps[disc_key]
        n = domains.shape[0]
        fused_rows = [torch.arange(s, s + p.a.numel(), device=z.device) for s, p in aux.fused if s + p.a.numel() <= z.shape[0]]
        fused_plans = [p for s, p in aux.fused if s + p.a.numel() <= z.shape[0]]
        fused = z[torch.cat(fused_rows)] if fused_rows else None
        soft = torch.cat([p.soft_labels for p in fused_plans]) if fused_plans else None
        coeff = reversal_weight(progress, hp)
        loss, health = adversarial_loss_v2(self.mdsf, z[:n], domains, fused, soft, coeff)
        aux.losses["loss_adv"] = hp.w_adv * loss
        aux.stats.update(health)
        if fused_plans:
            aux.stats["lambda_mean"] = float(torch.cat([p.lam for p in fused_plans]).mean())
        aux.mdsf_map = z
        return maps

    def lr_multipliers(self) -> dict[str, float]:
        """Parameter name -> learning-rate multiplier for parameters that need their own (v2 discriminator)."""
        if (self.mdsf is None or not self.mdsf.v2 or self.mdsf.discriminator is None
                or self.mdsf.hparams.disc_lr_mult == 1.0):
            return {}
        mult = float(self.mdsf.hparams.disc_lr_mult)
        return {f"mdsf.discriminator.{k}": mult for k, _ in self.mdsf.discriminator.named_parameters()}

    def health_summary(self) -> Optional[dict]:
        """End-of-run health of the blocks (v2 discriminator vs its prior); None when nothing to report."""
        if self.mdsf is None or not self.mdsf.v2 or self.mdsf.discriminator is None:
            return None
        return discriminator_verdict(self.mdsf)

    # --- analysis interface (shared) -------------------------------------------------------------------
    def stage_names(self) -> list[str]:
        """Names ``extract_features`` accepts: body stages, DFDR parts, and ``head.<map>`` inputs."""
        names = self.body.stage_names()
        if self.dfdr is not None:
            names += ["dfdr", "dfdr.shared", "dfdr.private"]
        names += [f"{HEAD}.{k}" for k in self.head_channels]
        return names

    def _check_stages(self, stages) -> list[str]:
        if isinstance(stages, str):
            stages = [stages]
        valid = self.stage_names()
        bad = [s for s in stages if s not in valid]
        if bad:
            raise ConfigError(f"unknown stage(s) {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
        return list(stages)

    def _input_tensor(self, images) -> torch.Tensor:
        """The normalised (and, for detection, resized and padded) batch tensor the body reads."""
        raise NotImplementedError

    def extract_features(self, images, stages) -> dict[str, torch.Tensor]:
        """Intermediate maps ``{stage: [N, C, h, w]}`` in eval mode (see ``stage_names``)."""
        stages = self._check_stages(stages)
        taps: dict[str, Optional[torch.Tensor]] = {s: None for s in stages}
        with eval_mode(self):
            self._features(self._input_tensor(images), taps=taps)
        return {s: taps[s] for s in stages}

    def dfdr_outputs(self, images) -> Optional[DFDROutput]:
        """DFDR's decomposition of ``images`` in eval mode, or None when the variant has no DFDR."""
        if self.dfdr is None:
            return None
        with eval_mode(self):
            _, aux = self._features(self._input_tensor(images), stop_after=self.dfdr_stage)
        return aux.dfdr_out

    def domain_probs(self, images) -> Optional[torch.Tensor]:
        """Discriminator softmax ``[N, K+1]`` on the unmixed MDSF-stage map; None without MDSF."""
        if self.mdsf is None or self.mdsf.discriminator is None:
            return None
        with eval_mode(self):
            stop = None if self.mdsf_stage == HEAD else self.mdsf_stage
            if self.mdsf.v3:
                stop = self.mdsf.hparams.adv_stage
            _, aux = self._features(self._input_tensor(images), stop_after=stop)
            return self.mdsf.domain_probs(aux.mdsf_map)

    def trainable_parameter_count(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


@full_precision()
def consistency_loss(maps, pairs: torch.Tensor) -> torch.Tensor:
    """``naive_consistency``: each twin's head maps pulled to its source's (stop-gradient on the source).

    Mean over maps and pairs of ``mean((f(twin) - sg f(source))^2) / mean(sg f(source)^2)``: a paired
    loss with no decoupling and no adversary, the baseline DRSF must beat to show its blocks matter.
    """
    values = list(maps.values())
    if pairs is None or pairs.numel() == 0:
        return sum(v.float().sum() for v in values) * 0.0
    terms = []
    for z in values:
        src = z[pairs[:, 0]].float().detach()
        diff = (z[pairs[:, 1]].float() - src).pow(2).flatten(1).mean(dim=1)
        terms.append((diff / src.pow(2).flatten(1).mean(dim=1).add(1e-6)).mean())
    return torch.stack(terms).mean()
