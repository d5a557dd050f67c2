"""Quantized layers and first-layer encoders."""
import pytest
import torch
from torch import nn

from pixelq import ConfigError, InputError
from pixelq.nn import (
    BitPlaneInput,
    FloatInput,
    Int8Input,
    NaiveInput,
    PixelEmbedding,
    QuantConv2d,
    QuantLinear,
    ThermometerInput,
)
from pixelq.quant import BinaryWeight, MidTreadHalf


def test_quant_conv_without_quantizers_equals_conv2d():
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1)
    qconv = QuantConv2d(5, 7, 3, stride=2, padding=1)
    qconv.load_state_dict(conv.state_dict())
    x = torch.randn(2, 5, 9, 9)
    assert torch.equal(qconv(x), conv(x))
    assert set(qconv.state_dict()) == set(conv.state_dict())


def test_quant_linear_without_quantizers_equals_linear():
    lin, qlin = nn.Linear(6, 4), QuantLinear(6, 4)
    qlin.load_state_dict(lin.state_dict())
    x = torch.randn(3, 6)
    assert torch.equal(qlin(x), lin(x))


def test_quant_conv_uses_quantized_weight_and_input():
    qconv = QuantConv2d(3, 4, 3, padding=1, bias=False, weight_quantizer="binary:channel", input_quantizer="mid_tread:2")
    x = torch.randn(2, 3, 6, 6) * 2
    expected = nn.functional.conv2d(MidTreadHalf(2)(x), BinaryWeight(True)(qconv.weight), padding=1)
    assert torch.allclose(qconv(x), expected)
    qconv(x).sum().backward()
    assert qconv.weight.grad is not None and qconv.weight.grad.abs().sum() > 0


def test_quant_linear_takes_quantizer_objects():
    q = BinaryWeight()
    lin = QuantLinear(4, 2, weight_quantizer=q)
    assert lin.weight_quantizer is q
    assert torch.allclose(lin.quantized_weight().abs(), lin.weight.abs().mean().expand(2, 4))


def images(n=2, c=3, h=5, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    x[0, 0, 0, :4] = torch.tensor([0, 1, 254, 255], dtype=torch.uint8)
    return x


def test_float_and_int8_inputs():
    x = images()
    assert torch.allclose(FloatInput(3)(x), (x.float() / 255 - 0.5) / 0.25)
    y = Int8Input(3)(x)
    assert torch.equal(y * 128, x.float() - 128)


@pytest.mark.parametrize("bits", range(1, 9))
def test_naive_input_codes(bits):
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    n = 2**bits - 1
    codes = NaiveInput(1, bits)(x) * n
    expected = torch.floor(torch.arange(256.0) * n / 255 + 0.5).view(1, 1, 16, 16)
    assert torch.equal(codes.round(), expected)
    assert codes.max() == n and codes.min() == 0


def test_thermometer_is_monotone_and_binary():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    enc = ThermometerInput(1, d=7)
    y = enc(x)
    assert y.shape == (1, 7, 16, 16)
    count = y.sum(1).flatten()
    assert set(y.unique().tolist()) == {0.0, 1.0}
    assert torch.all(count[1:] >= count[:-1]) and count[0] == 0 and count[-1] == 7


def test_bitplane_recovers_pixel_values():
    x = images()
    enc = BitPlaneInput(3)
    y = enc(x)
    assert y.shape == (2, 24, 5, 4)
    planes = (y.view(2, 3, 8, 5, 4) / enc.plane_weight.view(1, 1, 8, 1, 1)).round()
    value = (planes * (2 ** torch.arange(8.0)).view(1, 1, 8, 1, 1)).sum(2)
    assert torch.equal(value, x.float())


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("init", ["thermometer", "uniform", "linear"])
def test_pixel_embedding_looks_up_quantized_rows(shared, init):
    x = images()
    pe = PixelEmbedding(3, d=4, bits=2, shared=shared, init=init)
    y = pe(x)
    assert y.shape == (2, 12, 5, 4)
    table = MidTreadHalf(2)(pe.table.detach())
    for c in range(3):
        t = table[0 if shared else c]
        for j in range(4):
            assert torch.equal(y[:, 4 * c + j], t[x[:, c].long(), j])
    levels = torch.tensor([0, 2 / 3, 4 / 3, 2.0])
    assert torch.isin(y.unique(), levels).all()


def test_pixel_embedding_gradient_reaches_only_used_rows():
    pe = PixelEmbedding(1, d=3, bits=2, init="uniform")
    with torch.no_grad():
        pe.table.clamp_(0.1, 1.9)  # strictly inside (0, max): the STE passes every gradient
    x = torch.tensor([[[[3, 3], [200, 3]]]], dtype=torch.uint8)
    g = torch.randn(1, 3, 2, 2)
    (pe(x) * g).sum().backward()
    grad = pe.table.grad[0]
    assert torch.allclose(grad[3], g[0, :, [0, 0, 1], [0, 1, 1]].sum(1))
    assert torch.allclose(grad[200], g[0, :, 1, 0])
    unused = torch.ones(256, dtype=torch.bool)
    unused[[3, 200]] = False
    assert torch.all(grad[unused] == 0)


@pytest.mark.parametrize("shared", [True, False])
def test_pixel_embedding_gradient_equals_nn_embedding(shared):
    pe = PixelEmbedding(3, d=5, shared=shared, init="uniform")
    x = images(n=4, h=7, w=6)
    g = torch.randn(4, 15, 7, 6)
    (pe(x) * g).sum().backward()
    table = pe.table.detach().clone().requires_grad_(True)
    idx = x.long() + (0 if shared else 256 * torch.arange(3).view(1, 3, 1, 1))
    q = MidTreadHalf(2)(table).reshape(-1, 5)
    ref = torch.nn.functional.embedding(idx, q).permute(0, 1, 4, 2, 3).flatten(1, 2)
    (ref * g).sum().backward()
    assert torch.allclose(pe.table.grad, table.grad, atol=1e-5)


def test_pixel_embedding_inits():
    therm = PixelEmbedding(1, d=4, init="thermometer")
    raw = therm.table[0].detach()
    assert torch.all(raw[1:] >= raw[:-1]), "thermometer init is monotone in p"
    codes = therm.quantized_table()[0].detach()
    assert codes[0].sum() == 0 and torch.allclose(codes[255], torch.full((4,), 2.0))
    lin = PixelEmbedding(1, d=4, init="linear")
    assert torch.all(lin.table[0] == lin.table[0][:, :1])
    column = lin.quantized_table()[0][:, 0].detach()
    assert torch.all(column[1:] >= column[:-1]) and column[0] == 0 and column[255] == 2.0
    assert torch.allclose(column.unique(), torch.tensor([0, 2 / 3, 4 / 3, 2.0])), "every level is used"
    assert PixelEmbedding(3, d=2, shared=False).table.shape == (3, 256, 2)


@pytest.mark.parametrize("init", ["thermometer", "uniform", "linear"])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_pixel_embedding_init_lets_every_entry_learn(init, bits):
    """No entry starts at 0 or max, where the straight-through gradient is blocked for good."""
    pe = PixelEmbedding(1, d=5, bits=bits, init=init)
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    pe(x).sum().backward()
    assert torch.all(pe.table.grad != 0)


def test_encoders_reject_non_uint8():
    for enc in (FloatInput(3), Int8Input(3), NaiveInput(3), ThermometerInput(3), BitPlaneInput(3), PixelEmbedding(3)):
        with pytest.raises(InputError, match="uint8"):
            enc(torch.rand(1, 3, 4, 4))


def test_encoder_config_errors():
    with pytest.raises(ConfigError, match="unknown init"):
        PixelEmbedding(3, init="gaussian")
    with pytest.raises(ConfigError):
        PixelEmbedding(3, bits=9)
    with pytest.raises(ConfigError):
        NaiveInput(3, bits=0)
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        PixelEmbedding(3)(torch.zeros(1, 2, 4, 4, dtype=torch.uint8))
