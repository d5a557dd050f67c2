"""Quantizer modules. Each carries `bits` and `signed`, which summaries and export read.

A quantizer maps a float tensor to its fake-quantized value; the formulas and gradients live in
`pixelq.quant.ste`. Weight quantizers act on a layer's weight, activation quantizers on a layer's
input; `make_quantizer("lsq:2", role="activation")` builds one from a short name.
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn
from torch import distributed as dist

from ..errors import ConfigError, ExportError
from ..registry import Registry
from . import ste

QUANTIZERS: Registry[nn.Module] = Registry("quantizer")


def _check_bits(name: str, bits: int, low: int = 1, high: int = 8) -> int:
    if not isinstance(bits, int) or not low <= bits <= high:
        raise ConfigError(f"{name}: bits must be an integer in [{low}, {high}], got {bits!r}")
    return bits


class Quantizer(nn.Module):
    """Base class: `bits` (precision of the codes) and `signed` (codes below zero or not).

    Each quantizer also states its integer view, which export reads instead of re-deriving it:
    a weight quantizer `integer_weights(w)` -> (integer codes, scale per tensor or per output
    channel) with forward(w) == codes * scale, and `weight_code_grid()` -> (lowest, stride, bits),
    codes = lowest + stride * u for u in [0, 2^bits); an activation quantizer `activation_grid()`
    -> (step, qmin, qmax), its output being code * step with code in [qmin, qmax].
    """

    bits: int
    signed: bool
    roles: tuple = ("weight", "activation")  # what it may quantize; make_quantizer checks it

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"


@QUANTIZERS.register("binary")
class BinaryWeight(Quantizer):
    """w -> mean|w| * sign(w), one scale per tensor or per output channel (XNOR-Net, Blueoil)."""

    roles = ("weight",)

    def __init__(self, per_channel: bool = False):
        super().__init__()
        self.bits, self.signed, self.per_channel = 1, True, per_channel

    def forward(self, w: Tensor) -> Tensor:
        return ste.binary_mean_scaling(w, self.per_channel)

    @torch.no_grad()
    def integer_weights(self, w: Tensor) -> tuple:
        return torch.where(w >= 0, 1, -1), (w.abs().flatten(1).mean(1) if self.per_channel else w.abs().mean())

    def weight_code_grid(self) -> tuple:
        return -1, 2, 1  # {-1, +1}: one bit

    def extra_repr(self) -> str:
        return f"per_channel={self.per_channel}"


TERNARY_GRID = (-1, 1, 2)  # codes -1, 0, +1 in 2 bits


def _ternary_integers(q: Tensor, per_channel: bool) -> tuple:
    """Codes sign(q) and the scale |q| takes where not 0 (per output channel or per tensor)."""
    scale = q.abs().amax(tuple(range(1, q.dim()))) if per_channel else q.abs().max()
    return torch.sign(q).to(torch.int64), scale


@QUANTIZERS.register("ternary")
class TernaryWeight(Quantizer):
    """Ternary weight networks (Li et al. 2016): threshold 0.7 * mean|w|, scale = mean kept |w|."""

    roles = ("weight",)

    def __init__(self, per_channel: bool = False, threshold_factor: float = 0.7):
        super().__init__()
        self.bits, self.signed = 2, True
        self.per_channel, self.threshold_factor = per_channel, threshold_factor

    def forward(self, w: Tensor) -> Tensor:
        return ste.ternary_twn(w, self.per_channel, self.threshold_factor)

    @torch.no_grad()
    def integer_weights(self, w: Tensor) -> tuple:
        return _ternary_integers(self(w), self.per_channel)

    def weight_code_grid(self) -> tuple:
        return TERNARY_GRID

    def extra_repr(self) -> str:
        return f"per_channel={self.per_channel}, threshold_factor={self.threshold_factor}"


@QUANTIZERS.register("pruned_ternary")
class PrunedTernaryWeight(Quantizer):
    """Pruning ternary quantization (the paper of that name): ternary {-alpha, 0, +alpha} weights where
    exactly the fraction `sparsity` of weights (the smallest |w|) is 0. `ramp_steps` > 0 raises the sparsity
    linearly from 0 over that many training forwards (the count is a buffer, so resume continues
    the schedule); 0 prunes to the target at once, as after `--init` from a float network."""

    roles = ("weight",)

    def __init__(self, sparsity: float = 0.5, per_channel: bool = False, ramp_steps: int = 0):
        super().__init__()
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"pruned_ternary: sparsity must lie in [0, 1), got {sparsity!r}")
        self.bits, self.signed = 2, True
        self.target, self.per_channel, self.ramp_steps = float(sparsity), per_channel, int(ramp_steps)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    @property
    def sparsity(self) -> float:
        """The share of zeros now: the target, or the point the ramp has reached."""
        if self.ramp_steps <= 0:
            return self.target
        return self.target * min(1.0, int(self.steps) / self.ramp_steps)

    def forward(self, w: Tensor) -> Tensor:
        if self.training:
            self.steps += 1
        return ste.pruned_ternary(w, self.sparsity, self.per_channel)

    @torch.no_grad()
    def integer_weights(self, w: Tensor) -> tuple:
        return _ternary_integers(ste.pruned_ternary(w, self.sparsity, self.per_channel), self.per_channel)

    def weight_code_grid(self) -> tuple:
        return TERNARY_GRID

    def extra_repr(self) -> str:
        return f"sparsity={self.target}, per_channel={self.per_channel}, ramp_steps={self.ramp_steps}"


@QUANTIZERS.register("grid")
class GridWeight(Quantizer):
    """Weights rounded to a fixed symmetric grid of `levels` values r * (2j / (levels - 1) - 1),
    j = 0 .. levels - 1, with radius r per output channel or per tensor: 2^bits levels (no zero; the
    alphabet of GPFQ and round-to-nearest, docs/training.md), or 2^bits - 1 with `zero` (symmetric int8 is
    bits 8 with zero: codes -127 .. 127 times r / 127). Post-training quantization sets the radius;
    until then the first forward takes max|w|. dy/dw = 1 (fine-tuning after PTQ)."""

    roles = ("weight",)

    def __init__(self, bits: int = 8, zero: bool = False, per_channel: bool = True):
        super().__init__()
        self.bits, self.signed, self.zero, self.per_channel = _check_bits("grid", bits), True, zero, per_channel
        self.levels = 2**bits - 1 if zero else 2**bits
        if self.levels < 2:
            raise ConfigError("grid: one level is no grid; use bits >= 2 with zero")
        self.register_buffer("radius", torch.zeros(()))

    def set_radius(self, radius: Tensor) -> None:
        """The grid's radius: a scalar, or one per output channel."""
        self.radius = torch.as_tensor(radius, dtype=torch.float32).detach().clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "radius" in state_dict:  # a scalar or per-channel radius: take its shape
            self.set_radius(state_dict[prefix + "radius"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _radius(self, w: Tensor) -> Tensor:
        if not bool((self.radius > 0).all()):
            self.set_radius(w.detach().abs().flatten(1).amax(1) if self.per_channel else w.detach().abs().max())
        r = self.radius.clamp_min(1e-12)
        return r.view(-1, *([1] * (w.dim() - 1))) if r.dim() else r

    def _index(self, w: Tensor, r: Tensor) -> Tensor:
        return torch.round((w / r + 1) * ((self.levels - 1) / 2)).clamp(0, self.levels - 1)

    def forward(self, w: Tensor) -> Tensor:
        r = self._radius(w)
        return w + ((self._index(w, r) * (2 / (self.levels - 1)) - 1) * r - w).detach()  # straight through

    @torch.no_grad()
    def integer_weights(self, w: Tensor) -> tuple:
        r = self._radius(w)
        codes = 2 * self._index(w, r).to(torch.int64) - (self.levels - 1)
        return codes, (self.radius.clamp_min(1e-12) / (self.levels - 1))

    def weight_code_grid(self) -> tuple:
        return -(self.levels - 1), 2, self.bits

    def extra_repr(self) -> str:
        return f"bits={self.bits}, zero={self.zero}, per_channel={self.per_channel}, levels={self.levels}"


@QUANTIZERS.register("dorefa")
class DoReFaWeight(Quantizer):
    """DoReFa-Net k-bit weights: w_t = tanh(w) / (2 max|tanh w|) + 1/2, y = 2 round_k(w_t) - 1,
    with round_k(v) = round(v (2^k - 1)) / (2^k - 1). For k = 1 it is sign(w) * mean|w|."""

    roles = ("weight",)

    def __init__(self, bits: int = 2):
        super().__init__()
        self.bits, self.signed = _check_bits("dorefa", bits), True

    def _unit(self, w: Tensor) -> Tensor:
        """w_t * (2^k - 1): the value rounded to the code."""
        t = torch.tanh(w)
        return (t / (2 * t.abs().max().detach().clamp_min(1e-12)) + 0.5) * (2**self.bits - 1)

    def forward(self, w: Tensor) -> Tensor:
        if self.bits == 1:
            return ste.binary_mean_scaling(w)
        n = 2**self.bits - 1
        return 2 * ste.round_ste(self._unit(w)) / n - 1

    @torch.no_grad()
    def integer_weights(self, w: Tensor) -> tuple:
        if self.bits == 1:
            return torch.where(w >= 0, 1, -1), w.abs().mean()
        n = 2**self.bits - 1
        return 2 * torch.round(self._unit(w)).to(torch.int64) - n, torch.tensor(1.0 / n)  # odd codes -n..n

    def weight_code_grid(self) -> tuple:
        n = 2**self.bits - 1
        return (-1, 2, 1) if self.bits == 1 else (-n, 2, self.bits)


@QUANTIZERS.register("lsq")
class LSQ(Quantizer):
    """Learned step size quantization (Esser et al. 2020) for weights (signed) or activations.

    Signed codes lie in [-2^(b-1), 2^(b-1) - 1], unsigned in [0, 2^b - 1]. The step starts at
    2 mean|x| / sqrt(Qp) on the first training batch.
    """

    def __init__(self, bits: int = 2, signed: bool = True):
        super().__init__()
        self.bits, self.signed = _check_bits("lsq", bits, 2 if signed else 1), signed
        self.q_neg = 2 ** (bits - 1) if signed else 0
        self.q_pos = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        self.step = nn.Parameter(torch.ones(1))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not self.initialized:
            with torch.no_grad():
                self.step.copy_(2 * x.abs().mean().clamp_min(1e-8) / math.sqrt(self.q_pos))
                if dist.is_available() and dist.is_initialized():  # one step for all data-parallel copies
                    dist.all_reduce(self.step)
                    self.step.div_(dist.get_world_size())
                self.initialized.fill_(True)
        grad_scale = 1.0 / math.sqrt(x.numel() * self.q_pos)
        return ste.lsq(x, self.step, self.q_neg, self.q_pos, grad_scale)

    @torch.no_grad()
    def integer_weights(self, w: Tensor) -> tuple:
        if not self.signed:
            raise ExportError("unsigned lsq quantizes activations, not weights")
        s = self.step.detach().float()
        return torch.round((w / s).clamp(-self.q_neg, self.q_pos)).to(torch.int64), s

    def weight_code_grid(self) -> tuple:
        return -self.q_neg, 1, self.bits

    def activation_grid(self) -> tuple:
        return float(self.step.detach()), -self.q_neg, self.q_pos


@QUANTIZERS.register("pact")
class PACT(Quantizer):
    """PACT (Choi et al. 2018): unsigned k-bit activations with a learned clipping level alpha."""

    roles = ("activation",)

    def __init__(self, bits: int = 2, alpha: float = 2.0):
        super().__init__()
        self.bits, self.signed = _check_bits("pact", bits), False
        self.alpha = nn.Parameter(torch.tensor([float(alpha)]))

    def forward(self, x: Tensor) -> Tensor:
        return ste.pact(x, self.alpha, self.bits)

    def activation_grid(self) -> tuple:
        n = 2**self.bits - 1
        return float(self.alpha.detach()) / n, 0, n


@QUANTIZERS.register("mid_tread")
class MidTreadHalf(Quantizer):
    """Blueoil's `linear_mid_tread_half`: clip to [0, max], 2^k - 1 equal steps. `signed`: clip to
    [-max, max] on the same steps (codes -(2^k - 1) .. 2^k - 1), for a residual branch that may
    lower the sum it is added to (ResNet `signed_residual`)."""

    roles = ("activation",)

    def __init__(self, bits: int = 2, max_value: float = 2.0, signed: bool = False):
        super().__init__()
        if not max_value > 0:
            raise ConfigError(f"mid_tread: max_value must be positive, got {max_value!r}")
        self.bits, self.signed, self.max_value = _check_bits("mid_tread", bits), bool(signed), float(max_value)

    @property
    def step(self) -> float:
        return self.max_value / (2**self.bits - 1)

    def forward(self, x: Tensor) -> Tensor:
        return ste.linear_mid_tread_half(x, self.bits, self.max_value, self.signed)

    def activation_grid(self) -> tuple:
        n = 2**self.bits - 1
        return self.step, -n if self.signed else 0, n

    def extra_repr(self) -> str:
        return f"bits={self.bits}, max_value={self.max_value}" + (", signed=True" if self.signed else "")


def residual_fusion(inner: nn.Module, outer: nn.Module, y: Tensor) -> "tuple | None":
    """(bits, max_value, inner's signed) when outer(inner(y) + x), a residual block's end, can run as
    one fused step (`ste.mid_tread_add`, bit-identical): both mid-tread quantizers of the same bits
    and range, the outer one unsigned, nothing hooking them, not under torch.fx tracing (export
    reads the two modules). None: run the modules."""
    if (not isinstance(y, torch.fx.Proxy) and type(inner) is MidTreadHalf and type(outer) is MidTreadHalf
            and inner.bits == outer.bits and inner.max_value == outer.max_value and not outer.signed
            and not any(m._forward_hooks or m._forward_pre_hooks for m in (inner, outer))):
        return inner.bits, inner.max_value, inner.signed
    return None


_SPEC_HELP = (
    "a quantizer spec is NAME[:BITS][:FLAG...][:KEY=VALUE...], e.g. 'binary', 'binary:channel', 'ternary', "
    "'pruned_ternary:sparsity=0.6:channel', 'dorefa:4', 'grid:4', 'grid:8:zero', 'lsq:2', 'lsq:4:unsigned', "
    "'pact:2:alpha=3', 'mid_tread:2', 'mid_tread:2:max=1.5', 'mid_tread:4:signed' (flags: channel, tensor, "
    "signed, unsigned, zero; a lone decimal number such as 'mid_tread:2:1.5' is the range, as before)"
)
_KEY_ALIASES = {"max": "max_value"}  # mid_tread:2:max=4.0
_RANGE_PARAM = {"mid_tread": "max_value", "pact": "alpha", "pruned_ternary": "sparsity"}


def _parse_args(spec: str, name: str, args: list[str]) -> dict:
    """Keyword arguments of quantizer `name` from its spec's arguments: the first whole number is
    the bit count; flags; KEY=VALUE by name; a lone decimal number the quantizer's range parameter.
    A second whole number could be bits or a range: ConfigError, naming the forms that say which."""
    kwargs: dict = {}
    for arg in args:
        if arg in ("channel", "tensor"):
            kwargs["per_channel"] = arg == "channel"
        elif arg in ("signed", "unsigned"):
            kwargs["signed"] = arg == "signed"
        elif arg == "zero":
            kwargs["zero"] = True
        elif "=" in arg:
            key, _, text = arg.partition("=")
            key = _KEY_ALIASES.get(key, key)
            try:
                kwargs[key] = int(text) if key in ("bits", "ramp_steps") else float(text)
            except ValueError:
                raise ConfigError(f"cannot read {arg!r} of quantizer {spec!r}: {key} takes a number; "
                                  f"{_SPEC_HELP}") from None
        elif arg.isdigit():
            if "bits" in kwargs and name in _RANGE_PARAM:
                key = "max" if name == "mid_tread" else _RANGE_PARAM[name]
                raise ConfigError(f"quantizer {spec!r}: {arg!r} could be a bit count or a range; say which, e.g. "
                                  f"'{name}:{kwargs['bits']}:{key}={arg}'; {_SPEC_HELP}")
            if "bits" in kwargs:
                raise ConfigError(f"quantizer {spec!r} gives its bits twice; {_SPEC_HELP}")
            kwargs["bits"] = int(arg)
        else:
            if name not in _RANGE_PARAM:
                raise ConfigError(f"cannot read argument {arg!r} of quantizer {spec!r}; {_SPEC_HELP}")
            try:
                kwargs[_RANGE_PARAM[name]] = float(arg)
            except ValueError:
                raise ConfigError(f"cannot read argument {arg!r} of quantizer {spec!r}; {_SPEC_HELP}") from None
    return kwargs


def make_quantizer(spec: "str | nn.Module | None", role: str = "weight") -> "nn.Module | None":
    """Build a quantizer from a spec string, pass a module through, or return None (identity).

    `role` is "weight" or "activation"; it sets the default sign of LSQ (signed weights,
    unsigned activations, as after a ReLU).
    """
    if spec is None or isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"a quantizer must be a spec string, a module or None, got {type(spec).__name__}")
    if role not in ("weight", "activation"):
        raise ConfigError(f"role must be 'weight' or 'activation', got {role!r}")
    name, *args = spec.split(":")
    factory = QUANTIZERS.get(name)
    kwargs = _parse_args(spec, name, args)
    if name == "lsq":
        kwargs.setdefault("signed", role == "weight")
    if role not in factory.roles:
        allowed = sorted(n for n in QUANTIZERS.names() if role in QUANTIZERS.get(n).roles)
        raise ConfigError(f"{name!r} quantizes {' and '.join(factory.roles)}s, not {role}s ({spec!r}); "
                          f"{role} quantizers: {', '.join(allowed)}")
    accepted = inspect.signature(factory).parameters
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(f"quantizer {name!r} does not take {key!r} ({spec!r}); {_SPEC_HELP}")
    return factory(**kwargs)
