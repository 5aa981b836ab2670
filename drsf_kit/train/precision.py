"""Mixed precision for training: which autocast dtype a device gets, the autocast context and the scaler.

``train.amp_dtype: auto`` picks bf16 only where the GPU computes it natively (compute capability 8.0
and later: A100, RTX 30xx/40xx, H100); older GPUs (V100, T4, RTX 20xx) emulate bf16 slowly, so they get
fp16, whose narrow exponent range needs a ``GradScaler``. On the CPU the run stays in fp32 whatever the
config says: CPU autocast only slows the small models the kit trains there. Box coding and the losses
stay in fp32 under either dtype (``drsf_kit.models.box_coding``; the models cast their losses).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Ops CUDA's autocast refuses while it is on, whatever their inputs' dtype ("unsafe to autocast"): their
# half-precision backward is unstable, so CUDA raises where CPU autocast lets them run. A region that
# needs one turns autocast off (``drsf_kit.utils.precision.full_precision``) or uses the logits form.
CUDA_AUTOCAST_BANNED = ("binary_cross_entropy",)


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` is a CUDA GPU with native bf16 arithmetic (compute capability >= 8.0)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_amp_dtype(amp: bool, amp_dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None: fp32, no autocast).

    Args:
        amp: ``train.amp``; False keeps fp32 everywhere.
        amp_dtype: ``auto`` (bf16 where native, else fp16), ``bf16`` or ``fp16``.
        device: the training device; anything but CUDA trains in fp32.
    """
    if not amp or device.type != "cuda":
        return None
    if amp_dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    if amp_dtype == "bf16" and not native_bf16(device):
        warnings.warn(f"train.amp_dtype=bf16 on {torch.cuda.get_device_name(device)}: bf16 is emulated there "
                      "and slow; amp_dtype=auto would use fp16 with a GradScaler", stacklevel=2)
    return DTYPES[amp_dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` in ``dtype`` on ``device``; ``dtype`` None turns autocast off (fp32)."""
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A ``GradScaler`` that is enabled only for fp16 on CUDA (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and dtype == torch.float16)


def describe(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the name a log row carries."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


class _CudaAutocastBans(TorchFunctionMode):
    """Raise on the ops CUDA's autocast bans whenever CPU autocast is on (see ``cuda_autocast_on_cpu``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in CUDA_AUTOCAST_BANNED and torch.is_autocast_enabled("cpu"):
            raise RuntimeError(f"torch.nn.functional.{name} is unsafe to autocast: CUDA's autocast refuses it "
                               "(emulated on the CPU); compute it in full precision or in its logits form")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def cuda_autocast_on_cpu(dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """CPU autocast in ``dtype`` with CUDA's bans: a CPU test of what a GPU run's first step will meet.

    Convolutions and matrix products run in ``dtype`` as on a GPU, and the ops CUDA's autocast refuses
    (``CUDA_AUTOCAST_BANNED``) raise as they would there; inside ``full_precision`` they run.
    """
    with _CudaAutocastBans(), torch.autocast("cpu", dtype=dtype):
        yield
