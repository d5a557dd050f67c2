"""The training kernels (csrc/train_kernels.c) against the PyTorch ops they replace: the first conv
over a pixel embedding as table sums (values and every gradient), and the one-pass activation
quantizer (the same bits, forward and backward)."""
import contextlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pixelq.quant.ste as ste
from pixelq import train_kernels
from pixelq.errors import InputError
from pixelq.models import create_model
from pixelq.nn import PixelEmbedding, QuantConv2d

pytestmark = pytest.mark.skipif(not train_kernels.built(), reason="training kernels not built (no C compiler)")
KERNELS = train_kernels.get()


@pytest.fixture
def without_kernels():
    """Calling it switches training to PyTorch's ops for the rest of the test (pixelq.train_kernels.pytorch_ops)."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(train_kernels.pytorch_ops())


def two_layers(x, pe, conv):
    return conv(pe(x))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shared=st.booleans(), colours=st.integers(1, 4), d=st.integers(1, 5), out=st.integers(1, 20),
       kernel=st.integers(1, 5), stride=st.integers(1, 3), pad=st.integers(0, 2), size=st.integers(5, 12),
       batch=st.integers(1, 3), bias=st.booleans(), threads=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_embedding_conv_equals_embedding_then_conv(shared, colours, d, out, kernel, stride, pad, size, batch,
                                                   bias, threads, seed):
    torch.manual_seed(seed)
    pe = PixelEmbedding(colours, d=d, bits=2, shared=shared, init="uniform")
    conv = QuantConv2d(colours * d, out, kernel, stride, pad, bias=bias, weight_quantizer="binary")
    x = torch.randint(0, 256, (batch, size + 1, size, colours), dtype=torch.uint8).permute(0, 3, 1, 2)
    params = [pe.table, conv.weight] + ([conv.bias] if bias else [])
    ref = two_layers(x, pe, conv)
    grad = torch.randn_like(ref)
    expected = torch.autograd.grad(ref, params, grad)
    assert pe.runs_as_table(conv, x)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the backward's per-thread tables add up the same
    try:
        got = pe.conv_forward(x, conv)
        grads = torch.autograd.grad(got, params, grad)
    finally:
        torch.set_num_threads(before)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * max(1.0, float(e.abs().max())))


def test_embedding_conv_gradient_reaches_only_used_rows():
    pe = PixelEmbedding(3, d=4, shared=False)
    conv = QuantConv2d(12, 8, 3, 1, 1, bias=False, weight_quantizer="binary")
    x = torch.full((2, 3, 6, 6), 7, dtype=torch.uint8)
    x[:, 1] = 200
    pe.conv_forward(x, conv).square().sum().backward()
    used = pe.table.grad.abs().sum(-1) > 0
    assert used[0, 7] and used[1, 200] and used[2, 7]
    assert int(used.sum()) == 3


def test_embedding_conv_refuses_what_it_cannot_run():
    pe = PixelEmbedding(3, d=2)
    x = torch.zeros((1, 3, 8, 8), dtype=torch.uint8)
    assert not pe.runs_as_table(QuantConv2d(6, 4, 3, groups=2), x)
    assert not pe.runs_as_table(QuantConv2d(6, 4, 3, dilation=2), x)
    assert not pe.runs_as_table(QuantConv2d(6, 4, 3, padding="same"), x)
    assert not pe.runs_as_table(QuantConv2d(6, 4, 3, input_quantizer="mid_tread:2"), x)
    assert not pe.runs_as_table(QuantConv2d(5, 4, 3), x)
    conv = QuantConv2d(6, 4, 3)
    with pytest.raises(InputError, match="uint8"):
        pe.conv_forward(x.float(), conv)
    with pytest.raises(InputError, match="smaller than"):
        pe.conv_forward(torch.zeros((1, 3, 2, 2), dtype=torch.uint8), conv)
    image, table, out = (torch.zeros(n, dtype=dt).numpy() for n, dt in
                         ((48, torch.uint8), (256 * 27 * 16, torch.float32), (16 * 16, torch.float32)))
    with pytest.raises(ValueError, match="geometry"):  # HO does not follow from H, kernel, stride, padding
        KERNELS.embedding_conv(image, table, out, 1, 4, 4, 3, 4, 5, 4, 3, 3, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="table: buffer has"):
        KERNELS.embedding_conv(image, table[:-1], out, 1, 4, 4, 3, 4, 4, 4, 3, 3, 1, 1, 1, 1, 1)


def test_resnet_trains_its_stem_through_the_table_and_matches_the_two_layers(without_kernels):
    """A training step of the fully quantized ResNet: the stem runs as table sums (not through the
    encoder and conv modules), the loss and every parameter's gradient as with the two layers."""
    x = torch.randint(0, 256, (4, 12, 12, 3), dtype=torch.uint8)

    def step():
        torch.manual_seed(0)
        net = create_model("resnet20", first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized",
                           num_classes=5).train()
        calls = []
        net.stem.encoder.register_forward_hook(lambda *_: calls.append("encoder"))
        loss = net(x).logsumexp(1).sum()
        loss.backward()
        return loss, {n: p.grad for n, p in net.named_parameters()}, calls

    loss, grads, calls = step()
    assert calls == []  # the encoder module itself never ran
    without_kernels()
    ref_loss, ref_grads, ref_calls = step()
    assert ref_calls == ["encoder"]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-3, atol=1e-3 * max(1.0, float(g.abs().max())), msg=name)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "matrix", "permuted"])
@pytest.mark.parametrize("bits,max_value,signed", [(1, 1.0, False), (2, 2.0, False), (3, 1.7, False), (8, 6.0, False),
                                                   (2, 2.0, True), (4, 1.7, True)])
def test_fused_mid_tread_is_bit_identical(layout, bits, max_value, signed, without_kernels):
    torch.manual_seed(bits)
    shape = (2, 6, 5, 7) if layout != "matrix" else (33, 17)
    x = torch.randn(shape) * max_value + max_value / 3
    step = max_value / (2**bits - 1)
    x.view(-1)[:6] = torch.tensor([0.0, max_value, step / 2, 3 * step / 2, -0.0, max_value * 1.5])  # edges, ties
    x.view(-1)[6:9] = torch.tensor([-max_value, -step / 2, -max_value * 1.5])
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "permuted":
        x = x.permute(2, 0, 3, 1)
    grad = torch.randn(x.shape)

    def run():
        a = x.clone(memory_format=torch.preserve_format).requires_grad_()
        y = ste.linear_mid_tread_half(a, bits, max_value, signed)
        y.backward(grad)
        return y.detach(), a.grad

    y, g = run()
    without_kernels()
    y_ref, g_ref = run()
    assert torch.equal(y, y_ref) and torch.equal(g, g_ref)
    assert y.stride() == y_ref.stride()


def test_fused_mid_tread_saves_a_byte_mask_not_the_input():
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    y = ste.linear_mid_tread_half(x, 2, 2.0)
    (saved,) = y.grad_fn.saved_tensors
    assert saved.dtype == torch.uint8 and torch.equal(saved.bool(), (x > 0) & (x < 2.0))
    strided = torch.randn(4, 8, 6, 12)[..., ::2]  # not dense: PyTorch's ops
    assert ste._memory_order(strided) is None
    assert torch.equal(ste.linear_mid_tread_half(strided, 2, 2.0),
                       torch.nn.functional.hardtanh(strided, 0.0, 2.0).mul(3 / 2.0).round().mul(2.0 / 3))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed"])
@pytest.mark.parametrize("bits,max_value,signed", [(1, 1.0, False), (2, 2.0, False), (3, 1.7, False), (4, 2.0, True)])
def test_fused_residual_end_is_bit_identical(layout, bits, max_value, signed, without_kernels):
    """Q(Q'(y) + x), x on Q's grid (a shortcut's codes), Q' the same or its signed form, against the
    two quantizers around the add."""
    torch.manual_seed(bits)
    step = max_value / (2**bits - 1)
    y = torch.randn(3, 8, 5, 6) * max_value
    x = torch.randint(0, 2**bits, (3, 8, 5, 6)).float() * step
    y.view(-1)[:6] = torch.tensor([step / 2, max_value - step / 2, 0.0, max_value, -step / 2, -max_value])
    if layout != "contiguous":
        y = y.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(y.shape)

    def run():
        a, b = y.clone().requires_grad_(), x.clone().requires_grad_()
        out = ste.mid_tread_add(a, b, bits, max_value, signed)
        out.backward(grad)
        return out.detach(), a.grad, b.grad

    fused = run()
    assert train_kernels.get() is not None
    without_kernels()
    unfused = run()
    for got, want in zip(fused, unfused):
        assert torch.equal(got, want)


def test_residual_end_is_fused_only_for_one_unhooked_mid_tread_grid():
    from pixelq.quant import make_quantizer, residual_fusion

    y = torch.randn(2, 4, 3, 3)
    a, b = make_quantizer("mid_tread:2", role="activation"), make_quantizer("mid_tread:2", role="activation")
    assert residual_fusion(a, b, y) == (2, 2.0, False)
    signed = make_quantizer("mid_tread:2:signed", role="activation")
    assert residual_fusion(signed, b, y) == (2, 2.0, True) and residual_fusion(a, signed, y) is None
    assert residual_fusion(a, make_quantizer("mid_tread:2:1.5", role="activation"), y) is None
    assert residual_fusion(a, make_quantizer("pact:2", role="activation"), y) is None
    b.register_forward_hook(lambda *_: None)
    assert residual_fusion(a, b, y) is None


def test_hooked_residual_end_runs_its_modules_with_the_fused_values():
    """A hook on a block's last quantizer (export's layer-by-layer check) sees the module run, and
    the block's output is the fused one's."""
    from pixelq.models.resnet import BasicBlock, ResNetConfig

    block = BasicBlock(8, 8, 1, ResNetConfig(wbits=1, abits=2)).train()
    x = torch.randint(0, 4, (2, 8, 6, 6)).float() * (2 / 3)
    fused = block(x)
    assert type(fused.grad_fn).__name__ == "_MidTreadAddBackward"
    seen = []
    block.act_out.register_forward_hook(lambda *_: seen.append(1))
    assert torch.equal(block(x), fused) and seen == [1]
