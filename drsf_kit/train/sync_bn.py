"""BatchNorm over the global batch of a multi-process run, on GPUs (``torch.nn.SyncBatchNorm``) and CPUs.

With several processes each one normalises its own slice of the batch unless told otherwise: small
per-process batches then give noisy statistics, and N processes with batch B behave unlike one process
with batch N*B. ``train.sync_bn: true`` converts every BatchNorm so training statistics span all
processes. ``torch.nn.SyncBatchNorm`` only runs on CUDA (and a few other accelerators); on CPU (gloo) the
kit uses ``AllReduceBatchNorm`` below, which is what the CPU tests and small CPU clusters need.
"""

from __future__ import annotations

import torch
from torch import nn

from drsf_kit.train.distributed import world_size


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(tensor)
    return tensor


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch normalisation over the union of every process's batch, with BatchNorm's analytic backward.

    Per-channel sums are accumulated in float64, as PyTorch's own CPU BatchNorm does: in float32 the
    nearly cancelling sums of the backward pass lose several digits on large feature maps. The backward
    all-reduces the sums of ``dy`` and ``dy * x_hat``, since each process's loss depends on every
    process's inputs through the shared statistics (the gradient DDP then averages is that of the summed
    losses). Weight and bias gradients stay local: DDP averages them like any other parameter's.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        """Normalised ``x`` (affine when ``weight`` is given), the global mean, variance and count."""
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = torch.tensor([x.numel() // max(1, x.shape[1])], dtype=torch.float64, device=x.device)
        first = _all_reduce(torch.cat([x.sum(dims, dtype=torch.float64), local]))
        count = float(first[-1])
        mean = first[:-1] / count
        centered = x - mean.to(x.dtype).view(shape)
        var = _all_reduce((centered * centered).sum(dims, dtype=torch.float64)) / count
        invstd = torch.rsqrt(var + eps)
        x_hat = centered * invstd.to(x.dtype).view(shape)
        out = x_hat if weight is None else x_hat * weight.view(shape) + bias.view(shape)
        ctx.save_for_backward(x_hat, invstd, weight)
        ctx.count, ctx.dims, ctx.shape = count, dims, shape
        return out, mean, var, first[-1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, _dmean, _dvar, _dcount):
        """Gradients of ``x`` (over all processes' losses), of the weight and of the bias (local)."""
        x_hat, invstd, weight = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        sum_dy = dy.sum(dims, dtype=torch.float64)
        sum_dy_xhat = (dy * x_hat).sum(dims, dtype=torch.float64)
        grad_weight = sum_dy_xhat.to(dy.dtype) if weight is not None else None
        grad_bias = sum_dy.to(dy.dtype) if weight is not None else None
        both = _all_reduce(torch.cat([sum_dy, sum_dy_xhat])) / ctx.count
        mean_dy, mean_dy_xhat = both.split(sum_dy.numel())
        scale = invstd if weight is None else invstd * weight.to(torch.float64)
        grad_x = (dy - mean_dy.to(dy.dtype).view(shape) - x_hat * mean_dy_xhat.to(dy.dtype).view(shape))
        return grad_x * scale.to(dy.dtype).view(shape), grad_weight, grad_bias, None


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span every process's batch, on any backend (gloo on CPU).

    ``torch.nn.SyncBatchNorm`` only runs on GPUs; this one all-reduces per-channel sums (mean first,
    then squared deviations: numerically like one big batch) in float64. It keeps BatchNorm's parameter
    and buffer names, so checkpoints load either way. In eval mode, or alone, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with statistics over all processes' batches (training), running ones (eval)."""
        if not (self.training and world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        weight, bias = (self.weight, self.bias) if self.affine else (None, None)
        out, mean, var, count = _GlobalBatchNorm.apply(x, weight, bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                count = float(count)  # over all processes, whose batches may differ in size
                unbiased = var * count / max(1.0, count - 1)
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``model`` synchronised across processes: ``torch.nn.SyncBatchNorm`` on CUDA,
    ``AllReduceBatchNorm`` elsewhere. Parameters and buffers are kept (the same tensors, same names)."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    synced = (AllReduceBatchNorm, nn.SyncBatchNorm)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, synced):
        new = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = _convert(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
