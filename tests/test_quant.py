"""Quantizer values and straight-through gradients against their formulas."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelq import ConfigError
from pixelq.quant import LSQ, PACT, BinaryWeight, DoReFaWeight, MidTreadHalf, PrunedTernaryWeight, TernaryWeight, make_quantizer, ste

BITS = range(1, 9)


def grad_of(fn, x, *params):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    return y.detach(), x.grad, g, [p.grad for p in params]


def test_round_ste_forward_rounds_backward_passes():
    x = torch.tensor([-1.5, -0.4, 0.5, 1.5, 2.6])
    y, dx, g, _ = grad_of(ste.round_ste, x)
    assert torch.equal(y, torch.round(x))
    assert torch.equal(dx, g)


@pytest.mark.parametrize("per_channel", [False, True])
def test_binary_mean_scaling(per_channel):
    w = torch.randn(4, 3, 3, 3)
    w[0, 0, 0, 0] = 0.0
    y, dw, g, _ = grad_of(BinaryWeight(per_channel), w)
    alpha = w.abs().mean((1, 2, 3), keepdim=True) if per_channel else w.abs().mean()
    sign = torch.where(w >= 0, 1.0, -1.0)
    assert torch.allclose(y, alpha * sign)
    assert y[0, 0, 0, 0] > 0, "sign(0) must be +1"
    assert torch.equal(dw, g)


@pytest.mark.parametrize("per_channel", [False, True])
def test_ternary_twn(per_channel):
    w = torch.randn(5, 8)
    y, dw, g, _ = grad_of(TernaryWeight(per_channel), w)
    for row_w, row_y in zip(w if per_channel else [w], y if per_channel else [y]):
        delta = 0.7 * row_w.abs().mean()
        kept = row_w.abs() > delta
        alpha = row_w.abs()[kept].mean()
        expected = torch.where(kept, torch.sign(row_w) * alpha, torch.zeros_like(row_w))
        assert torch.allclose(row_y, expected)
    assert set(torch.unique(torch.sign(y)).tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(dw, g)


@pytest.mark.parametrize("bits", BITS)
def test_dorefa_levels_and_gradient(bits):
    w = torch.randn(6, 7)
    q = DoReFaWeight(bits)
    y, dw, g, _ = grad_of(q, w)
    if bits == 1:
        assert torch.allclose(y, torch.where(w >= 0, 1.0, -1.0) * w.abs().mean())
        return
    n = 2**bits - 1
    t = torch.tanh(w) / (2 * torch.tanh(w).abs().max()) + 0.5
    assert torch.allclose(y, 2 * torch.round(t * n) / n - 1)
    assert len(torch.unique(y)) <= 2**bits
    # STE through the rounding: the gradient is that of the continuous 2 t - 1.
    wl = w.clone().requires_grad_(True)
    tl = torch.tanh(wl)
    cont = 2 * (tl / (2 * tl.abs().max().detach()) + 0.5) - 1
    (cont * g).sum().backward()
    assert torch.allclose(dw, wl.grad, atol=1e-6)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("max_value", [1.0, 2.0])
def test_mid_tread_half(bits, max_value):
    x = torch.linspace(-1, 3, 401)
    y, dx, g, _ = grad_of(MidTreadHalf(bits, max_value), x)
    n = 2**bits - 1
    assert torch.allclose(y, torch.round(x.clamp(0, max_value) * n / max_value) * max_value / n)
    codes = y * n / max_value
    assert torch.allclose(codes, codes.round(), atol=1e-5) and codes.min() == 0 and codes.max() == n
    assert torch.equal(dx, g * ((x > 0) & (x < max_value)))


@pytest.mark.parametrize("bits", BITS)
def test_signed_mid_tread_has_the_same_steps_on_both_sides(bits):
    x = torch.linspace(-3, 3, 601)
    q = MidTreadHalf(bits, 2.0, signed=True)
    y, dx, g, _ = grad_of(q, x)
    n = 2**bits - 1
    assert torch.allclose(y, torch.round(x.clamp(-2.0, 2.0) * n / 2.0) * 2.0 / n)
    assert q.activation_grid() == (2.0 / n, -n, n) and MidTreadHalf(bits, 2.0).activation_grid() == (2.0 / n, 0, n)
    codes = (y * n / 2.0).round()
    assert codes.min() == -n and codes.max() == n
    assert torch.equal(dx, g * ((x > -2.0) & (x < 2.0)))


def test_mid_tread_2bit_levels_are_blueoils():
    y = MidTreadHalf(2, 2.0)(torch.linspace(-1, 3, 1000))
    assert torch.allclose(torch.unique(y), torch.tensor([0.0, 2 / 3, 4 / 3, 2.0]))


@pytest.mark.parametrize("bits", BITS)
def test_pact(bits):
    x = torch.linspace(-1, 4, 501)
    q = PACT(bits, alpha=2.5)
    y, dx, g, (dalpha,) = grad_of(q, x, q.alpha)
    n, a = 2**bits - 1, 2.5
    assert torch.allclose(y, torch.round(x.clamp(0, a) * n / a) * a / n)
    assert torch.equal(dx, g * ((x >= 0) & (x < a)))
    assert torch.allclose(dalpha, (g * (x >= a)).sum().reshape(1))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("signed", [True, False])
def test_lsq(bits, signed):
    if signed and bits == 1:
        with pytest.raises(ConfigError):
            LSQ(bits, signed)
        return
    q = LSQ(bits, signed).train()
    x = torch.randn(1000) * 2
    y, dx, g, (dstep,) = grad_of(q, x, q.step)
    s = q.step.detach()
    qn, qp = (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    assert torch.allclose(s, 2 * x.abs().mean() / math.sqrt(qp)), "step initialised from the first batch"
    v = x / s
    assert torch.allclose(y, torch.round(v.clamp(-qn, qp)) * s)
    inside = (v >= -qn) & (v <= qp)
    assert torch.equal(dx, g * inside)
    d = torch.where(v < -qn, -float(qn), torch.where(v > qp, float(qp), torch.round(v) - v))
    assert torch.allclose(dstep, (g * d).sum().reshape(1) / math.sqrt(x.numel() * qp), rtol=1e-4, atol=1e-6)


def test_lsq_step_is_kept_after_first_batch():
    q = LSQ(4).train()
    q(torch.randn(100))
    first = q.step.detach().clone()
    q(torch.randn(100) * 10)
    assert torch.equal(q.step.detach(), first)
    assert bool(q.initialized)


@given(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=1, max_size=64), st.integers(1, 8))
@settings(max_examples=50, deadline=None)
def test_mid_tread_codes_are_integers_in_range(values, bits):
    x = torch.tensor(values)
    q = MidTreadHalf(bits)
    codes = q(x) / q.step
    assert torch.all((codes - codes.round()).abs() < 1e-4)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1 + 1e-4


@pytest.mark.parametrize(
    "spec, cls, attrs",
    [
        ("binary", BinaryWeight, {"per_channel": False, "bits": 1}),
        ("binary:channel", BinaryWeight, {"per_channel": True}),
        ("ternary", TernaryWeight, {"bits": 2}),
        ("ternary:channel", TernaryWeight, {"per_channel": True}),
        ("dorefa:4", DoReFaWeight, {"bits": 4}),
        ("lsq:2", LSQ, {"bits": 2, "signed": True}),
        ("lsq:4:unsigned", LSQ, {"bits": 4, "signed": False}),
        ("pact:3", PACT, {"bits": 3}),
        ("mid_tread:2", MidTreadHalf, {"bits": 2, "max_value": 2.0}),
        ("mid_tread:3:1.5", MidTreadHalf, {"bits": 3, "max_value": 1.5}),
        ("mid_tread:4:signed", MidTreadHalf, {"bits": 4, "max_value": 2.0, "signed": True}),
        ("mid_tread:2:max=4.0", MidTreadHalf, {"bits": 2, "max_value": 4.0}),
        ("mid_tread:2:max_value=4", MidTreadHalf, {"bits": 2, "max_value": 4.0}),
        ("pact:2:alpha=3", PACT, {"bits": 2}),
        ("pruned_ternary:sparsity=0.6:channel", PrunedTernaryWeight, {"sparsity": 0.6, "per_channel": True}),
        ("pruned_ternary:0.6", PrunedTernaryWeight, {"sparsity": 0.6, "per_channel": False}),
        ("dorefa:bits=3", DoReFaWeight, {"bits": 3}),
    ],
)
def test_make_quantizer_from_spec(spec, cls, attrs):
    q = make_quantizer(spec, role="weight" if "weight" in cls.roles else "activation")
    assert isinstance(q, cls)
    for k, v in attrs.items():
        assert getattr(q, k) == v


def test_lsq_sign_follows_role():
    assert make_quantizer("lsq:2", role="weight").signed
    assert not make_quantizer("lsq:2", role="activation").signed


def test_make_quantizer_passes_modules_and_none():
    q = BinaryWeight()
    assert make_quantizer(q) is q
    assert make_quantizer(None) is None


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown quantizer 'nope'"),
    ("dorefa:9", "bits must be an integer in [1, 8]"),
    ("mid_tread:0", "bits must be"),
    ("binary:4", "does not take 'bits'"),
    ("ternary:1.5", "cannot read argument '1.5'"),
    ("mid_tread:2:4", "'4' could be a bit count or a range; say which, e.g. 'mid_tread:2:max=4'"),
    ("pact:2:3", "'3' could be a bit count or a range; say which, e.g. 'pact:2:alpha=3'"),
    ("dorefa:4:4", "gives its bits twice"),
    ("mid_tread:2:max=big", "max_value takes a number"),
    ("mid_tread:2:width=3", "does not take 'width'"),
    ("lsq:2:banana", "cannot read argument"),
    ("mid_tread:2:-1.0", "max_value must be positive"),
])
def test_bad_specs_raise_config_error(spec, message):
    role = "activation" if spec.startswith(("mid_tread", "pact")) else "weight"
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_quantizer(spec, role=role)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as e:
        make_quantizer("bianry")
    assert "binary" in str(e.value) and "mid_tread" in str(e.value)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75])
def test_pruned_ternary_zeroes_the_set_share_of_smallest_weights(per_channel, sparsity):
    from pixelq.quant import PrunedTernaryWeight

    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    y = PrunedTernaryWeight(sparsity, per_channel=per_channel)(w)
    rows = w.detach().abs().flatten(1) if per_channel else w.detach().abs().reshape(1, -1)
    out = y.detach().flatten(1) if per_channel else y.detach().reshape(1, -1)
    for r, o in zip(rows, out):
        zero = o == 0
        assert int(zero.sum()) == round(sparsity * r.numel())
        if zero.any() and (~zero).any():
            assert r[zero].max() < r[~zero].min()  # the smallest |w| are the pruned ones
        kept = r[~zero]
        assert torch.allclose(o[~zero].abs(), kept.mean().expand_as(kept))  # alpha = mean kept |w|
    assert set(torch.sign(y.detach()).unique().tolist()) <= {-1.0, 0.0, 1.0}
    y.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight through


def test_pruned_ternary_ramps_its_sparsity_over_training_steps():
    from pixelq.quant import PrunedTernaryWeight

    q = PrunedTernaryWeight(0.8, ramp_steps=4).train()
    w = torch.randn(100)[None].expand(2, 100).contiguous()
    zeros = [int((q(w) == 0).sum()) // 2 for _ in range(6)]
    assert zeros == [20, 40, 60, 80, 80, 80]
    q.eval()
    assert int((q(w) == 0).sum()) // 2 == 80 and int(q.steps) == 6  # eval does not advance the schedule
    assert make_quantizer("pruned_ternary:0.6:channel").per_channel and make_quantizer("pruned_ternary:0.6").target == 0.6
    with pytest.raises(ConfigError, match="sparsity must lie in"):
        PrunedTernaryWeight(1.0)


@pytest.mark.parametrize("spec, role, message", [
    ("binary", "activation", "'binary' quantizes weights, not activations.*activation quantizers: lsq, mid_tread, pact"),
    ("mid_tread:2", "weight", "'mid_tread' quantizes activations, not weights.*weight quantizers: binary, dorefa"),
    ("pact:2", "weight", "quantizes activations"),
    ("pruned_ternary:0.5", "activation", "quantizes weights"),
])
def test_a_quantizer_in_the_wrong_role_is_refused(spec, role, message):
    with pytest.raises(ConfigError, match=message):
        make_quantizer(spec, role=role)


def test_overrides_refuse_a_weight_quantizer_on_an_activation():
    from pixelq import create_model

    with pytest.raises(ConfigError, match="'binary' quantizes weights, not activations"):
        create_model("resnet20", wbits=1, abits=2, overrides={"stages.0.0.act1": "binary"})
    with pytest.raises(ConfigError, match="'mid_tread' quantizes activations, not weights"):
        create_model("resnet20", wbits=1, abits=2, overrides={"stages.0.0.conv1": "mid_tread:2"})


@pytest.mark.parametrize("bits, zero", [(2, False), (3, False), (8, True), (2, True)])
def test_grid_weights_round_to_the_alphabet(bits, zero):
    from pixelq.quant import GridWeight

    q = GridWeight(bits, zero=zero)
    w = torch.randn(5, 7, requires_grad=True)
    q.set_radius(torch.full((5,), 0.8))
    y = q(w)
    levels = 2**bits - 1 if zero else 2**bits
    alphabet = 0.8 * torch.linspace(-1, 1, levels)
    nearest = alphabet[(w.detach()[..., None] - alphabet).abs().argmin(-1)]
    assert torch.allclose(y.detach(), nearest, atol=1e-6)
    assert (alphabet.abs().min() < 1e-6) == zero  # a level at 0 exactly when asked for
    y.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    fresh = GridWeight(bits, zero=zero)
    fresh(w)
    assert torch.allclose(fresh.radius, w.detach().abs().amax(1))  # unset radius: max|w| per channel
