"""Straight-through estimators: each forward beside its backward, behind a plain function.

Every function here takes float tensors and returns the fake-quantized value (codes times step);
the backward is the estimator named in the docstring, not the (zero almost everywhere) true gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from .. import train_kernels


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x: Tensor) -> Tensor:
    """y = round(x) (ties to even); dy/dx = 1."""
    return _RoundSTE.apply(x)


def _mean_abs(w: Tensor, per_channel: bool) -> Tensor:
    if per_channel:
        return w.abs().flatten(1).mean(1).view(-1, *([1] * (w.dim() - 1)))
    return w.abs().mean()


class _BinaryMeanScaling(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, per_channel):
        scale = _mean_abs(w, per_channel)
        return torch.where(w >= 0, scale, -scale)  # sign(w) * scale, sign(0) = +1, in one pass

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def binary_mean_scaling(w: Tensor, per_channel: bool = False) -> Tensor:
    """y = alpha * sign(w), alpha = mean|w| (per output channel if asked), sign(0) = +1; dy/dw = 1.

    XNOR-Net's binary weights with Blueoil's identity straight-through gradient.
    """
    return _BinaryMeanScaling.apply(w, per_channel)


class _TernaryTWN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, per_channel, threshold_factor):
        delta = threshold_factor * _mean_abs(w, per_channel)
        mask = (w.abs() > delta).to(w.dtype)
        kept = (w.abs() * mask)
        if per_channel:
            dims = tuple(range(1, w.dim()))
            alpha = kept.sum(dims, keepdim=True) / mask.sum(dims, keepdim=True).clamp_min(1)
        else:
            alpha = kept.sum() / mask.sum().clamp_min(1)
        return torch.sign(w) * mask * alpha

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def ternary_twn(w: Tensor, per_channel: bool = False, threshold_factor: float = 0.7) -> Tensor:
    """Ternary weight networks: delta = 0.7 * mean|w|, y = alpha * sign(w) * [|w| > delta],
    alpha = mean of |w| over the kept weights; dy/dw = 1."""
    return _TernaryTWN.apply(w, per_channel, threshold_factor)


class _PrunedTernary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, sparsity, per_channel):
        flat = w.abs().flatten(1) if per_channel else w.abs().reshape(1, -1)
        k = int(round(sparsity * flat.shape[1]))
        if k == 0:
            keep = torch.ones_like(w, dtype=torch.bool)
        else:  # the k smallest |w| of each row (channel, or the whole tensor) become 0
            delta = flat.kthvalue(k, dim=1).values
            keep = (flat > delta[:, None]).view_as(w)
        kept = (w.abs() * keep).flatten(1) if per_channel else (w.abs() * keep).reshape(1, -1)
        alpha = kept.sum(1) / keep.reshape(kept.shape).sum(1).clamp_min(1)
        alpha = alpha.view(-1, *([1] * (w.dim() - 1))) if per_channel else alpha.reshape(())
        return torch.sign(w) * keep * alpha

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def pruned_ternary(w: Tensor, sparsity: float, per_channel: bool = False) -> Tensor:
    """Pruning ternary quantization: the fraction `sparsity` of weights smallest in |w| (per output
    channel, or over the tensor) become 0, the rest alpha * sign(w) with alpha the mean kept |w|;
    dy/dw = 1. Unlike TWN's 0.7 mean|w| threshold, the share of zeros is set, not a by-product."""
    return _PrunedTernary.apply(w, sparsity, per_channel)


def _memory_order(t: Tensor) -> "Tensor | None":
    """A view of a dense tensor with its dims in memory order (contiguous), or None."""
    if t.is_contiguous():
        return t
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1)
    view = t.permute(sorted(range(t.dim()), key=lambda d: -t.stride(d)))
    return view if view.is_contiguous() else None


def _flat(t: Tensor):
    """The numpy view of a dense CPU tensor's elements in memory order."""
    return _memory_order(t.detach()).reshape(-1).numpy()


def _laid_out_as(t: Tensor, like: Tensor) -> Tensor:
    """t with like's strides and dtype (a copy only where they differ), for kernels that read both flat."""
    return t if t.stride() == like.stride() and t.dtype == like.dtype else torch.empty_like(like).copy_(t)


def _fusable(x: Tensor) -> bool:
    """Whether the training kernels (`pixelq.train_kernels`) are on and can take x: a dense float32 CPU tensor."""
    return (train_kernels.get() is not None and x.dtype == torch.float32 and x.device.type == "cpu"
            and _memory_order(x) is not None)


class _MidTreadHalf(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits, max_value, low):
        ctx.low, ctx.max_value = low, max_value
        n = 2**bits - 1
        if _fusable(x):
            # One pass (csrc/train_kernels.c): the same float32 operations as below, and a byte mask
            # for the backward instead of keeping x.
            y, mask = torch.empty_like(x), torch.empty_like(x, dtype=torch.uint8)
            ctx.kernels = train_kernels.get()
            ctx.kernels.mid_tread(_flat(x), _flat(y), _flat(mask), low, max_value, n / max_value, max_value / n,
                                  torch.get_num_threads())
            ctx.save_for_backward(mask)
            return y
        ctx.save_for_backward(x)
        # This runs after every conv, so passes over memory count: one allocation, then in place.
        # hardtanh rather than clamp: on the CPU it is the faster kernel of the two.
        return F.hardtanh(x, low, max_value).mul_(n / max_value).round_().mul_(max_value / n)

    @staticmethod
    def backward(ctx, grad):
        (saved,) = ctx.saved_tensors
        if saved.dtype == torch.uint8:  # the fused forward's mask
            out = torch.empty_like(saved, dtype=torch.float32)
            ctx.kernels.masked(_flat(_laid_out_as(grad, out)), _flat(saved), _flat(out), torch.get_num_threads())
            return out, None, None, None
        # hardtanh's own backward is exactly grad * [low < x < max], fused in one kernel.
        return torch.ops.aten.hardtanh_backward(grad, saved, ctx.low, ctx.max_value), None, None, None


def linear_mid_tread_half(x: Tensor, bits: int, max_value: float, signed: bool = False) -> Tensor:
    """Blueoil's activation: y = round(clip(x, 0, m) * n / m) * m / n with n = 2^bits - 1;
    dy/dx = 1 for 0 < x < m, else 0. `signed`: clipped to [-m, m] instead (codes -n .. n)."""
    return _MidTreadHalf.apply(x, bits, max_value, -max_value if signed else 0.0)


class _MidTreadAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, x, bits, max_value, low):
        n = 2**bits - 1
        out, mask = torch.empty_like(y), torch.empty_like(y, dtype=torch.uint8)
        ctx.kernels = train_kernels.get()
        ctx.kernels.mid_tread_add(_flat(y), _flat(x), _flat(out), _flat(mask), low, max_value, n / max_value,
                                  max_value / n, torch.get_num_threads())
        ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        grad_y, grad_x = (torch.empty_like(mask, dtype=torch.float32) for _ in range(2))
        ctx.kernels.masked_add(_flat(_laid_out_as(grad, grad_y)), _flat(mask), _flat(grad_y), _flat(grad_x),
                               torch.get_num_threads())
        return grad_y, grad_x, None, None, None


def mid_tread_add(y: Tensor, x: Tensor, bits: int, max_value: float, signed: bool = False) -> Tensor:
    """Q(Q'(y) + x), Q = linear_mid_tread_half(., bits, max_value) and Q' the same or, `signed`, its
    signed form: a quantized residual block's end (x on Q's grid already). With the training
    kernels one pass each way, bit-identical to the two quantizers around the add; the gradient is
    each one's straight-through mask in turn."""
    if _fusable(y) and x.shape == y.shape and x.dtype == y.dtype and x.device == y.device:
        return _MidTreadAdd.apply(y, _laid_out_as(x, y), bits, max_value, -max_value if signed else 0.0)
    return linear_mid_tread_half(linear_mid_tread_half(y, bits, max_value, signed) + x, bits, max_value)


class _PACT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, bits):
        ctx.save_for_backward(x, alpha)
        n = 2**bits - 1
        y = torch.minimum(x.clamp_min(0.0), alpha)
        return torch.round(y * n / alpha) * alpha / n

    @staticmethod
    def backward(ctx, grad):
        x, alpha = ctx.saved_tensors
        inside = (x >= 0) & (x < alpha)
        grad_x = grad * inside.to(grad.dtype)
        grad_alpha = (grad * (x >= alpha).to(grad.dtype)).sum().reshape(alpha.shape)
        return grad_x, grad_alpha, None


def pact(x: Tensor, alpha: Tensor, bits: int) -> Tensor:
    """PACT: y = round(clip(x, 0, alpha) * n / alpha) * alpha / n, n = 2^bits - 1;
    dy/dx = [0 <= x < alpha], dy/dalpha = [x >= alpha]."""
    return _PACT.apply(x, alpha, bits)


class _LSQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, step, q_neg, q_pos, grad_scale):
        v = x / step
        ctx.save_for_backward(v)
        ctx.q_neg, ctx.q_pos, ctx.grad_scale = q_neg, q_pos, grad_scale
        ctx.step_shape = step.shape
        return torch.round(v.clamp(-q_neg, q_pos)) * step

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        below, above = v < -ctx.q_neg, v > ctx.q_pos
        inside = ~(below | above)
        grad_x = grad * inside.to(grad.dtype)
        d_step = torch.where(below, -float(ctx.q_neg), torch.where(above, float(ctx.q_pos), torch.round(v) - v))
        grad_step = (grad * d_step).sum().reshape(ctx.step_shape) * ctx.grad_scale
        return grad_x, grad_step, None, None, None


def lsq(x: Tensor, step: Tensor, q_neg: int, q_pos: int, grad_scale: float) -> Tensor:
    """Learned step size: y = round(clip(x / s, -Qn, Qp)) * s.

    dy/dx = [-Qn <= x/s <= Qp]; dy/ds = round(x/s) - x/s inside, -Qn below, Qp above,
    times the gradient scale g = 1 / sqrt(numel * Qp) of Esser et al. 2020.
    """
    return _LSQ.apply(x, step, q_neg, q_pos, grad_scale)
