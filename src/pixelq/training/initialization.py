"""`--init CKPT`: start a (quantized) model from a trained checkpoint of the same architecture.

Weights, biases and batch-norm parameters are copied wherever the shapes agree; layers whose shapes
differ (a pixel-embedding first layer after a float one: 3·d input channels, not 3) and every
quantizer's own state (LSQ steps, PACT clips) keep their fresh initialisation. Then a few batches
in training mode, without gradients, re-estimate the batch-norm statistics for the quantized
activations and let data-initialised quantizers (LSQ) set their scales. So float → W2A2 → W1A2
is a chain of runs, each `--init` the one before.
"""
from __future__ import annotations

import warnings

from torch import nn

from ..errors import ConfigError
from ..quant import Quantizer
from .checkpoint import check_finite, read_checkpoint


def copy_trained_weights(model: nn.Module, model_name: str, path: str, classes: list) -> dict:
    """Copy what fits from the checkpoint at `path` into `model`; returns what was copied and kept.
    When the checkpoint was trained on other classes than `classes` (other names, or another order),
    its last layer would score the wrong classes: the model's own last layer is kept, with a warning."""
    ckpt = read_checkpoint(path)
    check_finite(ckpt["state_dict"], path)
    if ckpt["model"] != model_name:
        raise ConfigError(f"--init {path}: a {ckpt['model']!r} checkpoint cannot start a {model_name!r} model")
    skip = {f"{name}.{key}" for name, m in model.named_modules() if isinstance(m, Quantizer) for key in m.state_dict()}
    if ckpt["classes"] != list(classes):
        head = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        skip |= {f"{head}.{key}" for key in model.get_submodule(head).state_dict()}
        warnings.warn(f"--init {path}: trained on classes {ckpt['classes']}, the data has {list(classes)}; its last "
                      f"layer ({head}) is not copied and starts fresh", stacklevel=2)
    own, source = model.state_dict(), ckpt["state_dict"]
    copied = {k: source[k] for k in own if k in source and k not in skip and source[k].shape == own[k].shape}
    model.load_state_dict(copied, strict=False)
    if not any(k.endswith("weight") for k in copied):
        raise ConfigError(f"--init {path}: no weight of this model fits that checkpoint's shapes")
    return {"from": str(path), "copied": len(copied), "kept_fresh": sorted(set(own) - set(copied))}


def calibrate(model: nn.Module, batches, count: int, device="cpu") -> int:
    """Re-estimate batch-norm running statistics (a plain average over `count` batches) and
    initialise data-initialised quantizers, in training mode without gradients. Returns batches used."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    used = 0
    with torch.no_grad():
        for x, _ in batches:
            if used == count:
                break
            model(x.to(device))
            used += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return used
