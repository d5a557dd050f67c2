"""First-layer input encoders: uint8 images (N, C, H, W) in, what the first conv sees out.

Pixel embedding is the product's core; the others are the baselines it is compared against
(the first-layer baselines of docs/first-layer-study.md). Every encoder has `in_channels`, `out_channels` and `bits` (precision of what it emits; 32 = float).
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError, InputError
from ..quant import make_quantizer
from ..registry import Registry
from .. import train_kernels

ENCODERS: Registry[nn.Module] = Registry("first layer")


def _check_uint8(x: Tensor) -> Tensor:
    if x.dtype != torch.uint8:
        raise InputError(f"input encoders take uint8 images, got dtype {x.dtype}; pass the raw pixel bytes")
    return x


def images_to_nchw(x: Tensor, channels: int, min_size: int = 1) -> Tensor:
    """Check a batch of uint8 images; NHWC (last dim = channels) becomes an NCHW view. When both
    dim 1 and the last dim equal the channel count (e.g. 3x3 RGB images), NCHW is assumed. Images
    smaller than `min_size` on a side are refused."""
    x = _to_nchw(x, channels)
    if min(x.shape[2:]) < min_size:
        raise InputError(f"this model takes images of at least {min_size}x{min_size} pixels, got "
                         f"{tuple(x.shape[2:])}; use --image-size {min_size} or more")
    return x


def _to_nchw(x: Tensor, channels: int) -> Tensor:
    if not isinstance(x, Tensor) or x.dtype != torch.uint8:
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"models take uint8 image tensors, got {got}; pass raw pixel bytes, not normalised floats")
    if x.dim() != 4:
        raise InputError(f"expected a batch of images (N, H, W, {channels}) or (N, {channels}, H, W), "
                         f"got shape {tuple(x.shape)}")
    if x.shape[1] == channels:
        return x
    if x.shape[-1] == channels:
        return x.permute(0, 3, 1, 2)
    raise InputError(f"this model takes {channels}-channel images, got shape {tuple(x.shape)}")


@ENCODERS.register("float")
class FloatInput(nn.Module):
    """Usual practice: pixels as floats, normalised inside the model: (p / 255 - 0.5) / 0.25."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels, self.out_channels, self.bits, self.quantized = in_channels, in_channels, 32, False

    def forward(self, x: Tensor) -> Tensor:
        return (_check_uint8(x).float() / 255.0 - 0.5) / 0.25


@ENCODERS.register("int8")
class Int8Input(nn.Module):
    """8-bit integer input: code p - 128, step 1/128, so values lie in [-1, 127/128]."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels, self.out_channels, self.bits, self.quantized = in_channels, in_channels, 8, True

    def forward(self, x: Tensor) -> Tensor:
        return (_check_uint8(x).float() - 128.0) / 128.0

    def activation_grid(self) -> tuple:
        return 1.0 / 128, -128, 127


@ENCODERS.register("naive")
class NaiveInput(nn.Module):
    """Naive k-bit input: code = round(p (2^k - 1) / 255), computed in integers (ties round up)."""

    def __init__(self, in_channels: int, bits: int = 2):
        super().__init__()
        if not 1 <= bits <= 8:
            raise ConfigError(f"naive input: bits must be in [1, 8], got {bits}")
        self.in_channels, self.out_channels, self.bits, self.quantized = in_channels, in_channels, bits, True

    def forward(self, x: Tensor) -> Tensor:
        n = 2**self.bits - 1
        codes = torch.div(_check_uint8(x).to(torch.int32) * (2 * n) + 255, 510, rounding_mode="floor")
        return codes.float() / n

    def activation_grid(self) -> tuple:
        n = 2**self.bits - 1
        return 1.0 / n, 0, n


@ENCODERS.register("thermometer")
class ThermometerInput(nn.Module):
    """Fixed (untrained) thermometer code: d binary channels per colour, channel j = [p >= t_j],
    thresholds t_j = round(256 (j + 1) / (d + 1)) evenly spaced over the pixel range."""

    def __init__(self, in_channels: int, d: int = 10):
        super().__init__()
        if d < 1:
            raise ConfigError(f"thermometer: d must be >= 1, got {d}")
        self.in_channels, self.d, self.out_channels, self.bits, self.quantized = in_channels, d, in_channels * d, 1, True
        thresholds = torch.round(256.0 * torch.arange(1, d + 1) / (d + 1)).to(torch.int32)
        self.register_buffer("thresholds", thresholds, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = _check_uint8(x).to(torch.int32)
        planes = (x.unsqueeze(2) >= self.thresholds.view(1, 1, -1, 1, 1)).float()
        return planes.flatten(1, 2)

    def activation_grid(self) -> tuple:
        return 1.0, 0, 1


@ENCODERS.register("bitplane")
class BitPlaneInput(nn.Module):
    """Bit-plane encoding (Vorabbi et al. 2023): the 8 bit-planes of each colour as binary inputs,
    each plane weighted by a trainable scalar initialised at 2^i / 255 before the first conv fuses
    them. Channel order is colour-major: channel 8c + i is bit i of colour c."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels, self.out_channels, self.bits, self.quantized = in_channels, in_channels * 8, 1, True
        self.register_buffer("shifts", torch.arange(8, dtype=torch.int32), persistent=False)
        self.plane_weight = nn.Parameter(2.0 ** torch.arange(8.0) / 255.0)

    def forward(self, x: Tensor) -> Tensor:
        x = _check_uint8(x).to(torch.int32).unsqueeze(2)
        planes = ((x >> self.shifts.view(1, 1, -1, 1, 1)) & 1).float()
        return (planes * self.plane_weight.view(1, 1, -1, 1, 1)).flatten(1, 2)


class _RowLookup(torch.autograd.Function):
    """rows[idx] with the gradient summed per row by bincount: exact like F.embedding's backward,
    about twice as fast on the CPU when millions of pixels index a 256-row table."""

    @staticmethod
    def forward(ctx, rows, idx):
        ctx.save_for_backward(idx)
        ctx.num_rows = rows.shape[0]
        return F.embedding(idx, rows)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        flat, g = idx.reshape(-1), grad.reshape(-1, grad.shape[-1])
        columns = [torch.bincount(flat, weights=g[:, j], minlength=ctx.num_rows) for j in range(g.shape[1])]
        return torch.stack(columns, 1).to(grad.dtype), None


class _TableConv(torch.autograd.Function):
    """The first conv over a pixel embedding as sums of table rows (csrc/train_kernels.c):
    table (taps, 256, O) float32, image (N, H, W, C) uint8 -> (N, O, HO, WO) channels-last.
    The kernel's rows are whole 16-float vectors: O is padded to a multiple of 16 around it."""

    @staticmethod
    def forward(ctx, table, image, geometry):
        n, h, w, c = image.shape
        o, ho, wo = geometry[:3]
        pad = -o % 16
        out = torch.empty((n, ho, wo, o + pad), dtype=torch.float32)
        ctx.kernels = train_kernels.get()
        ctx.kernels.embedding_conv(image.numpy(), F.pad(table.detach(), (0, pad)).contiguous().numpy(),
                                   out.numpy(), n, h, w, c, *geometry, torch.get_num_threads())
        ctx.save_for_backward(image)
        ctx.geometry = geometry
        return (out[..., :o].contiguous() if pad else out).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        (image,) = ctx.saved_tensors
        n, h, w, c = image.shape
        o, kh, kw = ctx.geometry[0], ctx.geometry[3], ctx.geometry[4]
        pad = -o % 16
        grad = F.pad(grad.permute(0, 2, 3, 1).float(), (0, pad)).contiguous()
        grad_table = torch.empty((kh * kw * c, 256, o + pad), dtype=torch.float32)
        ctx.kernels.embedding_conv_backward(image.numpy(), grad.numpy(), grad_table.numpy(), n, h, w, c,
                                            *ctx.geometry, torch.get_num_threads())
        return grad_table[..., :o], None, None


_EMBEDDING_INITS = ("thermometer", "uniform", "linear")


@ENCODERS.register("pixel-embedding")
class PixelEmbedding(nn.Module):
    """Pixel embedding (Tokunaga et al. 2024): pixel value p of each colour looks up a trainable
    d-vector E[p] (one table shared by all colours, or one per colour), quantized to `bits` bits.

    Output channel c*d + j is dimension j of colour c. The table is quantized before the lookup,
    which gives the same values and the same straight-through gradient as quantizing after it,
    at 256 rows' cost instead of every pixel's. Rows not looked up get no gradient.
    Initialisations: "thermometer" (ramp j of E[p] rises from 0 to max over the j-th of d equal
    parts of 0..255), "uniform" (U(0, max)), "linear" (every dimension = p / 255 * max), each
    squeezed into the open interval where gradients pass (see `_initial_table`).
    """

    def __init__(
        self,
        in_channels: int,
        d: int = 10,
        bits: int = 2,
        shared: bool = True,
        init: str = "thermometer",
        max_value: float = 2.0,
    ):
        super().__init__()
        if d < 1:
            raise ConfigError(f"pixel embedding: d must be >= 1, got {d}")
        if init not in _EMBEDDING_INITS:
            raise ConfigError(f"pixel embedding: unknown init {init!r}; choose one of {', '.join(_EMBEDDING_INITS)}")
        self.in_channels, self.d, self.shared, self.init = in_channels, d, shared, init
        self.out_channels, self.bits, self.quantized = in_channels * d, bits, True
        self.quantizer = make_quantizer(f"mid_tread:{bits}:{max_value}", role="activation")
        tables = 1 if shared else in_channels
        self.table = nn.Parameter(self._initial_table(tables, d, init, max_value, bits))

    @staticmethod
    def _initial_table(tables: int, d: int, init: str, max_value: float, bits: int) -> Tensor:
        """Values in [low, high] = [step/4, max - step/4]: they quantize exactly as [0, max] would,
        but sit strictly inside (0, max), where the quantizer's straight-through gradient passes;
        an entry initialised at exactly 0 or max would never receive a gradient."""
        margin = max_value / (2**bits - 1) / 4
        low, high = margin, max_value - margin
        p = torch.arange(256.0).view(256, 1)
        if init == "thermometer":
            unit = ((p / 255.0) * d - torch.arange(d).view(1, d)).clamp(0, 1)
        elif init == "linear":
            unit = (p / 255.0).expand(256, d)
        else:
            unit = torch.rand(256, d)
        return (low + (high - low) * unit).unsqueeze(0).repeat(tables, 1, 1).contiguous()

    def activation_grid(self) -> tuple:
        """(step, qmin, qmax) of the codes it emits: its quantizer's."""
        return self.quantizer.activation_grid()

    def quantized_table(self) -> Tensor:
        """The (tables, 256, d) table after quantization, as the first conv sees it."""
        return self.quantizer(self.table)

    def _checked(self, x: Tensor) -> Tensor:
        x = _check_uint8(x)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"pixel embedding expects (N, {self.in_channels}, H, W) uint8, got {tuple(x.shape)}")
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self._checked(x)
        idx = x.permute(0, 2, 3, 1).long()  # (N, H, W, C): a plain view of NHWC images
        table = self.quantized_table()
        if not self.shared:
            idx = idx + 256 * torch.arange(self.in_channels, device=x.device)
        vectors = _RowLookup.apply(table.reshape(-1, self.d), idx)  # (N, H, W, C, d)
        # Channel c * d + j is code j of colour c; returned channels-last, as the convs run.
        return vectors.flatten(3).permute(0, 3, 1, 2)

    def runs_as_table(self, conv: nn.Module, x: Tensor) -> bool:
        """Whether `conv_table` can compute conv(self(x)): a plain float32 CPU conv (zero padding,
        no dilation or groups, no input quantizer of its own) and the training kernels on
        (`pixelq.train_kernels`: built, not switched off, not under torch.compile)."""
        padding = getattr(conv, "padding", "same")
        return (train_kernels.get() is not None and isinstance(conv, nn.Conv2d) and conv.groups == 1
                and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and not isinstance(padding, str)
                and getattr(conv, "input_quantizer", None) is None and conv.weight.dtype == torch.float32
                and conv.weight.device.type == "cpu" and x.device.type == "cpu"
                and conv.in_channels == self.out_channels)

    def conv_table(self, conv: nn.Module) -> Tensor:
        """T[tap, v, o] = sum_j W[o, c * d + j, ky, kx] * E_c[v, j], tap = (ky * KW + kx) * C + c: what
        conv(self(x)) adds for pixel value v of colour c at kernel tap (ky, kx), from the quantized
        weight (`conv.quantized_weight()` where it has one) and table; autograd carries its gradient
        back to both."""
        weight = conv.quantized_weight() if hasattr(conv, "quantized_weight") else conv.weight
        o, _, kh, kw = weight.shape
        weight = weight.view(o, self.in_channels, self.d, kh, kw)
        table = self.quantized_table()
        if self.shared:
            t = torch.einsum("ocjyx,vj->yxcvo", weight, table[0])
        else:
            t = torch.einsum("ocjyx,cvj->yxcvo", weight, table)
        return t.reshape(kh * kw * self.in_channels, 256, o)

    def conv_forward(self, x: Tensor, conv: nn.Module) -> Tensor:
        """conv(self(x)) without the embedded image: each output position sums the table rows of the
        pixel values its window covers (`conv_table`). Same values as the two layers one after the
        other (to float rounding) and the same gradients, at a fraction of a d-times-wider conv's
        cost; the caller checks `runs_as_table` first."""
        n, c, h, w = self._checked(x).shape
        kh, kw = conv.kernel_size
        (sy, sx), (py, px) = conv.stride, conv.padding
        ho, wo = (h + 2 * py - kh) // sy + 1, (w + 2 * px - kw) // sx + 1
        if ho < 1 or wo < 1:
            raise InputError(f"images of {h}x{w} pixels are smaller than the first conv's {kh}x{kw} kernel")
        image = x.permute(0, 2, 3, 1).contiguous()
        out = _TableConv.apply(self.conv_table(conv), image, (conv.out_channels, ho, wo, kh, kw, sy, sx, py, px))
        if not x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous()
        return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, d={self.d}, bits={self.bits}, shared={self.shared}, init={self.init!r}"


def make_encoder(name: str, in_channels: int, **kwargs) -> nn.Module:
    """Build the first-layer encoder `name` for images with `in_channels` colours (`check_encoder_options`)."""
    check_encoder_options(name, kwargs)
    return ENCODERS.get(name)(in_channels, **kwargs)


def encoder_options(name: str) -> dict:
    """{option: default} of first layer `name`: its keyword arguments but in_channels (ConfigError for
    an unknown name)."""
    factory = ENCODERS.get(name)
    return {k: p.default for k, p in inspect.signature(factory).parameters.items() if k != "in_channels"}


def check_encoder_options(name: str, kwargs: dict) -> None:
    """ConfigError for an unknown first layer, an option it does not take, or a value of another type
    than the option's default."""
    defaults = encoder_options(name)
    for key, value in kwargs.items():
        if key not in defaults:
            raise ConfigError(f"first layer {name!r} takes no option {key!r}; its options: "
                              f"{', '.join(defaults) or 'none'}")
        kind = type(defaults[key])
        fits = isinstance(value, kind) and (kind is bool or not isinstance(value, bool)) or (
            kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not fits:
            raise ConfigError(f"first layer {name!r}: option {key!r} takes {'an' if kind is int else 'a'} {kind.__name__}, got {value!r}")
