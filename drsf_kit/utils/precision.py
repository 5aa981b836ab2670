"""Full precision inside mixed-precision training: the regions that must not run in half precision.

Under ``torch.autocast`` matrix products and convolutions run in bf16/fp16. Losses, entropies, channel
statistics and small classifiers read for their probabilities lose their tails there, and CUDA's
autocast refuses some ops outright (``binary_cross_entropy`` raises "unsafe to autocast" on CUDA,
whatever its inputs' dtype, while CPU autocast lets it pass). ``full_precision`` turns autocast off on
every device type for a block or a function, so the block computes in the dtype of its inputs; callers
cast those to float32 (``x.float()``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

# Device types whose autocast a full-precision region switches off.
AUTOCAST_DEVICES = ("cpu", "cuda")


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Autocast off on every device type; usable as ``with full_precision():`` or ``@full_precision()``."""
    with contextlib.ExitStack() as stack:
        for device_type in AUTOCAST_DEVICES:
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield
