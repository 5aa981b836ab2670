"""Gradient accumulation: one optimizer step over a batch that runs forward and backward in pieces.

``train.accumulate = A`` cuts each step's ``TwinBatch`` of B source images (plus their twins) into A
micro-batches of B / A sources, each with its own twins, so a pair never straddles two pieces (DFDR and
MDSF compare a source with its twin inside one forward). Each piece's loss is divided by A before its
backward, so the summed gradient is the mean over pieces: for losses that average over images (and
BatchNorm aside, whose statistics are per piece) this is the gradient of the whole batch.
The sampler, the learning-rate rule and the checkpoints see whole steps, as without accumulation.
"""

from __future__ import annotations

import torch

from drsf_kit.errors import ConfigError
from drsf_kit.data.twins import TwinBatch


def _take(values, index: list[int]):
    if isinstance(values, torch.Tensor):
        return values[torch.as_tensor(index, dtype=torch.long)]
    return [values[i] for i in index]


def split_batch(batch: TwinBatch, pieces: int) -> list[TwinBatch]:
    """``batch`` cut into ``pieces`` micro-batches of equal numbers of sources, each with its twins.

    Sources come first in every piece, then their twins (the layout of ``TwinCollate``), and ``pairs``
    is renumbered to positions inside the piece.
    """
    if pieces == 1:
        return [batch]
    sources = int((batch.domains == 0).sum())  # twins carry their pseudo-domain id 1..K
    if pieces < 1 or sources % pieces:
        raise ConfigError(f"train.accumulate={pieces} must divide the {sources} source images of a step")
    per = sources // pieces
    twin_of = {int(s): int(t) for s, t in batch.pairs.tolist()}
    out = []
    for k in range(pieces):
        src = list(range(k * per, (k + 1) * per))
        twins = [twin_of[s] for s in src if s in twin_of]
        index = src + twins
        pairs = torch.tensor([[i, per + j] for j, i in enumerate(s for s in range(per) if src[s] in twin_of)],
                             dtype=torch.long).reshape(-1, 2)
        ids = batch.source_ids[k * per:(k + 1) * per] if len(batch.source_ids) == sources else batch.source_ids
        out.append(TwinBatch(_take(batch.images, index), _take(batch.targets, index), batch.domains[index],
                             pairs, list(ids)))
    return out
