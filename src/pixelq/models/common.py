"""What every registered model shares: the float/quantized defaults behind wbits and abits, the
checks of a model config, per-layer overrides, and the kwargs that rebuild a model."""
from __future__ import annotations

import fnmatch
from dataclasses import asdict

from torch import nn

from ..errors import ConfigError
from ..nn import QuantConv2d, QuantLinear
from ..quant import Quantizer, make_quantizer

FLOAT_BITS = 32
LAST_LAYERS = ("float", "quantized")


def fully_quantized(**changes) -> dict:
    """The model settings of pixelq's fully quantized network, Blueoil's choice in the pixel-embedding
    paper's code: one shared pixel-embedding table, d = 10, 2-bit codes; binary weights, 2-bit
    activations; a quantized last layer. `changes` replace single settings (a fresh dict each call)."""
    return {"first_layer": "pixel-embedding", "first_layer_kwargs": {"d": 10, "bits": 2}, "wbits": 1, "abits": 2,
            "last_layer": "quantized", **changes}


def default_weight_quantizer(wbits: int, per_channel: bool = True) -> "str | None":
    """wbits -> spec: 32 float, 1 binary (mean-|W| scale), 2..8 LSQ."""
    if wbits == FLOAT_BITS:
        return None
    if wbits == 1:
        return "binary:channel" if per_channel else "binary"
    if 2 <= wbits <= 8:
        return f"lsq:{wbits}"
    raise ConfigError(f"wbits must be 1..8 or 32 (float), got {wbits}")


def default_act_quantizer(abits: int) -> "str | None":
    """abits -> spec: 32 float (ReLU), 1..8 Blueoil's mid-tread half on [0, 2]."""
    if abits == FLOAT_BITS:
        return None
    if 1 <= abits <= 8:
        return f"mid_tread:{abits}"
    raise ConfigError(f"abits must be 1..8 or 32 (float), got {abits}")


def activation(spec: "str | None", after_add: bool) -> nn.Module:
    if spec is None:
        return nn.ReLU() if after_add else nn.Identity()
    return make_quantizer(spec, role="activation")


def check_common_settings(cfg) -> None:
    """The checks every registered model's config shares: last layer, channels, classes and bits."""
    if cfg.last_layer not in LAST_LAYERS:
        raise ConfigError(f"last_layer must be one of {LAST_LAYERS}, got {cfg.last_layer!r}")
    if cfg.in_channels < 1 or cfg.num_classes < 2:
        raise ConfigError(f"need in_channels >= 1 and num_classes >= 2, got {cfg.in_channels}, {cfg.num_classes}")
    default_weight_quantizer(cfg.wbits)
    default_act_quantizer(cfg.abits)


def config_from_kwargs(config_cls, defaults: dict, kwargs: dict):
    """A model's config dataclass from a registered model's defaults and the caller's kwargs;
    ConfigError naming any kwarg the config has no field for."""
    unknown = set(kwargs) - set(config_cls.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown model arguments {sorted(unknown)}; allowed: {sorted(config_cls.__dataclass_fields__)}")
    return config_cls(**{**defaults, **kwargs})


_SLOTS = (nn.ReLU, nn.Identity, Quantizer)


def apply_overrides(model: nn.Module, overrides: dict) -> None:
    """Per-layer precision: {module-name pattern: quantizer spec or None}.

    A conv or linear layer's pattern sets its weight quantizer; an activation slot's (act1,
    res_act, ...) sets that activation (None = float). Patterns are shell-style
    (`stages.2.*.conv1`); one that matches nothing is an error.
    """
    modules = dict(model.named_modules())
    # A layer's own quantizers and an input encoder's internals are set through the layer or encoder
    # (`stages.*.conv*` names the convs, not also their weight_quantizer children).
    owned = {f"{name}.{child}" if name else child for name, m in modules.items()
             if isinstance(m, (QuantConv2d, QuantLinear)) or hasattr(m, "quantized") for child in m._modules}
    for pattern, spec in overrides.items():
        names = [n for n in modules if n and n not in owned and fnmatch.fnmatchcase(n, pattern)]
        targets = [n for n in names if isinstance(modules[n], (QuantConv2d, QuantLinear, *_SLOTS))]
        if not targets:
            raise ConfigError(f"override {pattern!r} matches no quantizable layer or activation; "
                              "see `model.named_modules()` for names")
        for name in targets:
            module = modules[name]
            if isinstance(module, (QuantConv2d, QuantLinear)):
                module.weight_quantizer = make_quantizer(spec, role="weight")
            else:
                parent_name, _, attr = name.rpartition(".")
                after_add = attr not in ("res_act", "act_in") and not attr.startswith("shortcut")
                setattr(modules[parent_name] if parent_name else model, attr, activation(spec, after_add))



def model_kwargs(model: nn.Module) -> dict:
    """The JSON-ready kwargs that rebuild a registered model (its `config` dataclass) with `create_model`."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(model.config).items()}
