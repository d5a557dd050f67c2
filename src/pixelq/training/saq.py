"""Sharpness-aware quantization (SAQ; Liu et al., github zhuang-group/SAQ).

One step: the gradient g of the loss with respect to each layer's (quantized) weight, then
ε = ρ · g / ‖g‖ (‖g‖ over all layers together), then the gradient again with every layer computing
with Q(w) + ε, and the optimizer steps the latent weights w with that second gradient. The
perturbation is added after the weight quantizer, so binary and low-bit weights really move (a
perturbation of the latent weight would mostly leave sign(w) as it was); for a float layer Q is
the identity and this is SAM (Foret et al. 2021).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def perturbable_layers(model: nn.Module) -> list:
    """The conv and linear layers whose weights SAQ perturbs, in module order."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def saq_perturbations(layers: list, rho: float) -> list:
    """ε_l = ρ · g_l / ‖g‖ for each layer's weight gradient g_l, ‖g‖ the norm of all of them."""
    grads = [m.weight.grad if m.weight.grad is not None else torch.zeros_like(m.weight) for m in layers]
    norm = torch.sqrt(sum(g.float().square().sum() for g in grads)).clamp_min(1e-12)
    return [rho * g / norm for g in grads]


@contextmanager
def perturbed_weights(model: nn.Module, rho: float):
    """Inside, every conv/linear layer of `model` computes with Q(w) + ε (see module doc), and batch
    norm leaves its running statistics alone (the step's first pass already updated them)."""
    layers = perturbable_layers(model)
    eps = saq_perturbations(layers, rho)
    hooks, restore = [], []
    for layer, e in zip(layers, eps):
        quantizer = getattr(layer, "weight_quantizer", None)
        if quantizer is not None:
            hooks.append(quantizer.register_forward_hook(lambda _m, _i, out, e=e: out + e))
        else:
            restore.append((layer.weight, layer.weight.detach().clone()))
            with torch.no_grad():
                layer.weight.add_(e)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    counts = [m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield eps
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for weight, saved in restore:
                weight.copy_(saved)
        for m, momentum, count in zip(norms, momenta, counts):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)
