"""MDSF v2: fused samples added across pseudo-domains, and an adversary that learns before it fights.

The first reading (``method="v1"``, in ``mdsf.py``) replaced a twin's maps by a mix with its source
after the whole backbone, so the heads lost twin signal, two pseudo-domains were never fused and the
discriminator, trained on an unbalanced batch while its gradient was already reversed, stayed at the
majority-class prior. v2 changes three things:

* **fusion plan** (``fusion_plan``): the sampler gives each source twins of several pseudo-domains;
  per source, two of its twins (of different pseudo-domains; the source and its twin when it has
  only one) are fused with ``lambda ~ Beta(alpha, alpha)``;
* **added, not substituted** (``append_fused``): the fused maps are appended to the batch as extra
  rows, at a shallow body stage (``fuse_stage``) and/or on the maps the head reads (``fuse_head``).
  A fused row is trained with its source's labels: twins share the source's geometry, so their
  labels are the source's labels, and so are those of any mix of them;
* **adversary** (``reversal_weight``, ``adversarial_loss_v2``): a class-balanced (or binary
  source-vs-synthetic) discriminator with its own learning-rate multiplier learns on detached
  features during a warm-up, then a constant small weight ``eta_max`` switches the backbone's part
  on. That part is, by default (``adv_objective="confusion"``), a *confusion* loss: the backbone
  is trained so that the (frozen) discriminator's posterior over the domains present is uniform, a
  bounded goal whose gradient vanishes once the domains are confused. ``"reversal"`` is the plain
  gradient-reversal layer, whose goal (make the discriminator's loss as large as possible) has no
  bound: measured on the segmentation protocol, it drove the discriminator's loss to 10-28 (a flipped,
  not a confused, discriminator) and doubled the task loss. The discriminator's accuracy on each
  batch, measured before it learns from that batch, is logged next to the chance level.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from drsf_kit.models.mdsf import MDSF, grad_reverse, mix_features, sample_lambda, soft_domain_labels
from drsf_kit.utils.precision import full_precision

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
