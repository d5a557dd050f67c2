"""Data-parallel training helpers over torch.distributed (torchrun; gloo on CPU, nccl on GPU).

Batch norm normalises with the statistics of the whole global batch, all processes together, so
that N processes train exactly the network one process would with the same global batch (to float
rounding). torch's own SyncBatchNorm does this on GPUs only; `SyncBatchNorm2d` does it on any
device with two all-reduces forward and one backward.
"""
from __future__ import annotations

import os

import torch
from torch import distributed as dist
from torch import nn


def join_process_group(device: torch.device) -> tuple:
    """(rank, world size, whether we started the group). torchrun sets WORLD_SIZE; a plain run is 1."""
    if not dist.is_available():
        return 0, 1, False
    started = False
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1, False
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    return dist.get_rank(), dist.get_world_size(), started


def _global_moments(x: torch.Tensor) -> tuple:
    """Per-channel mean and (biased) variance of x (N, C, H, W) over every process, and the count."""
    dims = (0, 2, 3)
    total = torch.cat([x.sum(dims), x.new_tensor([x.numel() / x.shape[1]])])
    dist.all_reduce(total)
    n = total[-1]
    mean = total[:-1] / n
    var = (x - mean[None, :, None, None]).square().sum(dims)  # two passes: as exact as batch norm's own
    dist.all_reduce(var)
    return mean, var / n, n


class _GlobalBatchNorm(torch.autograd.Function):
    """y = γ·x̂ + β, x̂ = (x − μ)·s, with μ and s = 1/√(σ² + eps) over every process's batch (N values
    per channel in all). Backward, with dy = ∂L_r/∂y on each process r and L = Σ_r L_r:
    ∂L/∂x = γ·s·(dy − Σ_all dy / N − x̂ · Σ_all(dy·x̂) / N); on each process ∂L_r/∂γ = Σ dy·x̂ and
    ∂L_r/∂β = Σ dy, which DistributedDataParallel then averages like every other gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, n):
        xhat = (x - mean[None, :, None, None]) * invstd[None, :, None, None]
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.n = n
        return xhat * weight[None, :, None, None] + bias[None, :, None, None]

    @staticmethod
    def backward(ctx, dy):
        xhat, invstd, weight = ctx.saved_tensors
        dims = (0, 2, 3)
        local = torch.cat([dy.sum(dims), (dy * xhat).sum(dims)])
        total = local.clone()
        dist.all_reduce(total)
        mean_dy, mean_dy_xhat = (t[None, :, None, None] / ctx.n for t in total.chunk(2))
        dx = (weight * invstd)[None, :, None, None] * (dy - mean_dy - xhat * mean_dy_xhat)
        grad_bias, grad_weight = local.chunk(2)
        return dx, grad_weight, grad_bias, None, None, None


class SyncBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training-mode statistics cover the global batch of all processes.
    Same parameters, buffers and state_dict keys; outside a process group it is plain batch norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        with torch.no_grad():
            mean, var, n = _global_moments(x)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1).clamp(min=1), self.momentum)  # unbiased, as nn.BatchNorm2d
            self.num_batches_tracked += 1
        return _GlobalBatchNorm.apply(x, self.weight, self.bias, mean, torch.rsqrt(var + self.eps), n)


def synchronize_batchnorm(model: nn.Module) -> nn.Module:
    """Turn every nn.BatchNorm2d of `model` into a SyncBatchNorm2d in place (same parameters and
    buffers, same state_dict keys), so that training under DDP equals training in one process."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            if not (module.affine and module.track_running_stats and module.momentum is not None):
                raise NotImplementedError(f"{module}: only affine batch norm with running stats is synchronised")
            module.__class__ = SyncBatchNorm2d
    return model
