"""The twin batch sampler: B source images per step, each with one twin from a randomly drawn pseudo-domain.

The sampler is a pure function of ``(seed, k)`` for the k-th item of an endless stream (epoch
``k // n`` is a fresh permutation of the n source images): its whole state is the index of the next
batch, so a resumed run draws exactly the batches it would have drawn, and a multi-process run
can cut each global batch into per-process slices without changing what is drawn. Every draw (twin
domain, twin copy, flip, crop) is made by the sampler, so twins get identical geometric transforms
and data-loader workers need no random state.
"""

from __future__ import annotations

from typing import Sequence

import torch

from drsf_kit.data.twins import TwinItem
from drsf_kit.errors import ConfigError


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # distinct, reproducible streams per (seed, epoch); large odd multiplier avoids collisions
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**63 - 1))


class TwinBatchSampler:
    """Yields lists of ``TwinItem`` (one list per optimizer step) from batch ``start`` to ``stop``.

    Args:
        twin_table: per source index, the candidate twins as ``{domain_id: [twin indices]}`` (empty
            dicts, or ``use_twins=False``, train that image without a twin).
        batch_source: B, source images per (global) batch.
        seed: the run seed.
        start, stop: batch indices to yield (``stop`` None = endless).
        hflip: flip probability.

    One process per run uses it as is; under ``torchrun`` the engine hands it to
    ``drsf_kit.train.distributed.TwinDistributedSampler``, which slices the same stream per process.
    """

    def __init__(self, twin_table: Sequence[dict[int, list[int]]], batch_source: int, seed: int,
                 start: int = 0, stop: int | None = None, use_twins: bool = True, hflip: float = 0.5,
                 twins_per_source: int = 1):
        if not twin_table:
            raise ConfigError("the source training set is empty: nothing to sample batches from")
        self.table = [{d: list(v) for d, v in sorted(t.items()) if v} for t in twin_table]
        self.n = len(self.table)
        self.batch_source, self.seed = int(batch_source), int(seed)
        self.start, self.stop = int(start), stop
        self.use_twins, self.hflip = use_twins, float(hflip)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # > 1: each source also gets twins of further, distinct pseudo-domains (MDSF v2 fuses them). The
        # extra draws come from a stream of their own, so the first twin is drawn as with one per source.
        self.twins_per_source = max(1, int(twins_per_source))
        self._extra_cache: dict[int, torch.Tensor] = {}

    def _epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if epoch not in self._cache:
            g = _epoch_generator(self.seed, epoch)
            perm = torch.randperm(self.n, generator=g)
            draws = torch.rand(self.n, 6, generator=g, dtype=torch.float64)
            self._cache = {epoch: (perm, draws)}  # one epoch at a time is all a batch ever spans (+1)
        return self._cache[epoch]

    def item(self, k: int) -> TwinItem:
        """The k-th item of the stream."""
        epoch, pos = divmod(int(k), self.n)
        perm, draws = self._epoch(epoch)
        src = int(perm[pos])
        u = draws[pos].tolist()
        twin, domain = -1, 0
        candidates = self.table[src]
        if self.use_twins and candidates:
            domains = sorted(candidates)
            domain = domains[min(int(u[0] * len(domains)), len(domains) - 1)]
            copies = candidates[domain]
            twin = copies[min(int(u[1] * len(copies)), len(copies) - 1)]
        extra = self._extra_twins(epoch, pos, candidates, domain) if twin >= 0 and self.twins_per_source > 1 else ()
        return TwinItem(src, twin, domain if twin >= 0 else 0, u[2] < self.hflip, (u[3], u[4], u[5]), extra)

    def _extra_twins(self, epoch: int, pos: int, candidates: dict[int, list[int]], first: int) -> tuple:
        """Twins of up to ``twins_per_source - 1`` further pseudo-domains, drawn without replacement."""
        if epoch not in self._extra_cache:
            g = _epoch_generator(self.seed + 104_729, epoch)
            self._extra_cache = {epoch: torch.rand(self.n, 2 * (self.twins_per_source - 1), generator=g,
                                                   dtype=torch.float64)}
        u = self._extra_cache[epoch][pos].tolist()
        left = [d for d in sorted(candidates) if d != first]
        out = []
        for j in range(self.twins_per_source - 1):
            if not left:
                break
            d = left.pop(min(int(u[2 * j] * len(left)), len(left) - 1))
            copies = candidates[d]
            out.append((copies[min(int(u[2 * j + 1] * len(copies)), len(copies) - 1)], d))
        return tuple(out)

    def batch(self, b: int) -> list[TwinItem]:
        """Batch ``b``: items ``b * B`` to ``b * B + B - 1`` of the stream."""
        first = b * self.batch_source
        return [self.item(first + i) for i in range(self.batch_source)]

    def __iter__(self):
        b = self.start
        while self.stop is None or b < self.stop:
            yield self.batch(b)
            b += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an endless TwinBatchSampler has no length")
        return max(0, self.stop - self.start)


def steps_per_epoch(num_sources: int, batch_source: int) -> float:
    """How many steps one pass over the source images takes."""
    return num_sources / max(1, batch_source)


def epochs_for(max_steps: int, num_sources: int, batch_source: int) -> float:
    """Epochs (passes over the source set) that ``max_steps`` steps make."""
    return max_steps / max(1e-9, steps_per_epoch(num_sources, batch_source))
