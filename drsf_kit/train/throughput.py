"""GPU throughput settings and per-step speed and memory figures for the training loop.

The switches (``train.cudnn_benchmark``, ``train.channels_last``, ``train.compile``) only act on CUDA,
so a CPU run computes exactly what it computed without them. ``StepMeter`` turns one step's wall time
and image count into images/s and reads the peak GPU memory of the step (None off CUDA).
"""

from __future__ import annotations

import time

import torch

from drsf_kit.config import TrainConfig

GIB = float(1 << 30)


def configure_backends(tcfg: TrainConfig, device: torch.device) -> None:
    """cuDNN autotuning (fixed crop sizes make its first-step search pay off) and TF32 matmuls on CUDA."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = bool(tcfg.cudnn_benchmark)
    # TF32 only changes fp32 matmuls/convolutions (what autocast leaves in fp32) on Ampere and later
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def prepare_model(model: torch.nn.Module, tcfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """The bare model in channels-last layout when ``train.channels_last`` is set on CUDA (in place)."""
    if tcfg.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def maybe_compile(module: torch.nn.Module, tcfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """``torch.compile(module)`` when ``train.compile`` is set on CUDA, else ``module`` itself.

    The compiled wrapper is only used for the training forward: checkpoints and evaluation keep the
    bare model, so parameter names never get the wrapper's prefix.
    """
    if tcfg.compile and device.type == "cuda":
        return torch.compile(module, dynamic=None)
    return module


class StepMeter:
    """Wall time, images/s and peak GPU memory of one training step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda" and torch.cuda.is_available()

    def start(self) -> float:
        """Reset the CUDA peak-memory counter; returns the start time."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        return time.perf_counter()

    def memory_gb(self) -> float | None:
        """Peak GPU memory allocated since ``start`` in GiB (None off CUDA)."""
        if not self.cuda:
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / GIB, 3)

    @staticmethod
    def images_per_second(images: int, seconds: float) -> float:
        """``images / seconds`` (0 for a zero duration)."""
        return images / seconds if seconds > 0 else 0.0
