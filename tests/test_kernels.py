"""The C kernels against the numpy reference, and the reference against an independent oracle
(a float64 conv in PyTorch on integer-valued data), for every instruction set this CPU has."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pixelq.errors import ExportError, InputError
from pixelq.exporting.integers import check_accumulator_range
from pixelq.runtime import fast, fusion
from pixelq.runtime.reference import conv2d_reference, lut_reference, threshold_reference

pytestmark = pytest.mark.skipif(not fast.kernels_available(), reason="C kernels not built (no C compiler)")

ISAS = ["portable", "avx2", "avx512vpopcntdq", "avx512bitalg"]
WEIGHT_GRIDS = {"binary": (-1, 2, 1), "ternary": (-1, 1, 2), "dorefa3": (-7, 2, 3), "lsq4": (-8, 1, 4)}


@pytest.fixture(params=ISAS)
def isa(request):
    """The name of an instruction set this CPU has, passed to each kernel call as isa=NAME."""
    if request.param not in fast._kernels.isas():
        pytest.skip(f"this CPU has no {request.param}")
    return request.param


def random_weights(rng, shape, grid):
    lowest, stride, bits = grid
    return (lowest + stride * rng.integers(0, 2**bits, shape)).astype(np.int32)


def fast_conv(x, w, grid, stride, padding, threads=2, thresholds=None, isa=None):
    """The C conv on uint8 codes: int32 accumulators, or codes given (direction, thresholds, qmin)."""
    lowest, wstride, bits = grid
    n, h, wd_, c = x.shape
    o, k = w.shape[0], w.shape[1]
    planes_in = max(1, int(x.max(initial=0)).bit_length())
    ho, wo = (h + 2 * padding - k) // stride + 1, (wd_ + 2 * padding - k) // stride + 1
    args = (np.ascontiguousarray(x, np.uint8), n, h, wd_, c, planes_in, fast.pack_conv_weight(w, lowest, wstride, bits),
            k, k, bits, o, fast.padded_channels(o), lowest, wstride, stride, padding, ho, wo)
    if thresholds is None:
        out = np.empty((n, ho, wo, o), np.int32)
        fast._kernels.conv(*args, out, threads, isa=isa)
        return out
    direction, levels, qmin = thresholds
    d, t = fast.pad_thresholds(direction, levels)
    out = np.empty((n, ho, wo, o), np.uint8)
    fast._kernels.conv(*args, out, threads, d, t, t.shape[0], qmin, isa=isa)
    return out


def spread_thresholds(rng, acc, levels):
    """Sorted int32 thresholds (O, levels) across the range of accumulators `acc` (..., O), about a
    tenth of them beyond every accumulator (never reached) and a tenth below all (always passed):
    values far outside int16, which the int16 epilogues must clamp without changing a code."""
    span = int(np.abs(acc).max(initial=0)) + 2
    thresholds = rng.integers(-span, span + 1, (acc.shape[-1], levels))
    thresholds[rng.random(thresholds.shape) < 0.1] = 2**31 - 1
    thresholds[rng.random(thresholds.shape) < 0.1] = -2**31
    return np.sort(thresholds, axis=1).astype(np.int32)


def with_residual(codes, shortcut, stride, qmax, shift=0):
    """The fused residual add by hand: the shortcut's codes (read at `stride`) added to the first
    channels, the rest adding 0, `shift` taken off (a signed branch's codes count from 0,
    fusion.unsign_residual_branch), clipped to [0, qmax]."""
    added = np.zeros(codes.shape, np.int64)
    s = shortcut[:, ::stride, ::stride]
    added[..., :s.shape[3]] = s
    return np.clip(codes.astype(np.int64) + added - shift, 0, qmax)


def torch_oracle(x, w, stride, padding, groups=1):
    xt = torch.as_tensor(x, dtype=torch.float64).permute(0, 3, 1, 2)
    wt = torch.as_tensor(w, dtype=torch.float64).permute(0, 3, 1, 2)
    y = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding, groups=groups)
    return y.permute(0, 2, 3, 1).numpy().astype(np.int64)


@given(
    groups=st.sampled_from([2, 3, 4]), per_in=st.integers(1, 5), per_out=st.integers(1, 3), h=st.integers(3, 8),
    k=st.sampled_from([1, 3, 5]), stride=st.integers(1, 2), padding=st.integers(0, 2), seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_grouped_reference_conv_equals_float_oracle(groups, per_in, per_out, h, k, stride, padding, seed):
    """Grouped convs (per_in = 1: depthwise, with a channel multiplier per_out), weights (O, k, k, I / groups)."""
    assume(h + 2 * padding >= k)
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 4, (2, h, h, groups * per_in))
    wt = rng.integers(-3, 4, (groups * per_out, k, k, per_in))
    assert np.array_equal(conv2d_reference(x, wt, stride, padding, groups), torch_oracle(x, wt, stride, padding, groups))
    with pytest.raises(InputError, match=f"in {groups} groups"):
        conv2d_reference(x[..., 1:], wt, stride, padding, groups)


@given(
    n=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 9), c=st.sampled_from([1, 3, 17, 63, 64, 65, 130]),
    o=st.integers(1, 20), k=st.sampled_from([1, 3]), stride=st.integers(1, 2), padding=st.integers(0, 2),
    abits=st.sampled_from([1, 2, 3, 4, 8]), grid=st.sampled_from(sorted(WEIGHT_GRIDS)), seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_reference_conv_equals_float_oracle(n, h, w, c, o, k, stride, padding, abits, grid, seed):
    assume(h + 2 * padding >= k and w + 2 * padding >= k)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**abits, (n, h, w, c))
    wt = random_weights(rng, (o, k, k, c), WEIGHT_GRIDS[grid])
    assert np.array_equal(conv2d_reference(x, wt, stride, padding), torch_oracle(x, wt, stride, padding))


@given(
    n=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 9), c=st.sampled_from([1, 3, 17, 63, 64, 65, 130]),
    o=st.integers(1, 20), k=st.sampled_from([1, 3]), stride=st.integers(1, 2), padding=st.integers(0, 2),
    abits=st.sampled_from([1, 2, 3, 4, 8]), grid=st.sampled_from(sorted(WEIGHT_GRIDS)), seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fast_conv_equals_reference(isa, n, h, w, c, o, k, stride, padding, abits, grid, seed):
    assume(h + 2 * padding >= k and w + 2 * padding >= k)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**abits, (n, h, w, c)).astype(np.uint8)
    wt = random_weights(rng, (o, k, k, c), WEIGHT_GRIDS[grid])
    assert np.array_equal(fast_conv(x, wt, WEIGHT_GRIDS[grid], stride, padding, isa=isa),
                          conv2d_reference(x, wt, stride, padding))


def test_fast_conv_near_the_int32_limit(isa):
    """8-bit codes at 255 and weight codes at -128: |acc| = 9 * 2048 * 255 * 128, 60% of int32."""
    c = 2048
    x = np.full((1, 3, 3, c), 255, np.uint8)
    w = np.full((2, 3, 3, c), -128, np.int32)
    w[1] = 127
    out = fast_conv(x, w, (-128, 1, 8), 1, 0, isa=isa)
    assert out[0, 0, 0].tolist() == [-9 * c * 255 * 128, 9 * c * 255 * 127]
    assert np.array_equal(out, torch_oracle(x, w, 1, 0))


def test_accumulator_range_check():
    check_accumulator_range("ok", 9 * 2048, 255, -128, 127)
    with pytest.raises(ExportError, match="beyond int32"):
        check_accumulator_range("conv", 9 * 8192, 255, -128, 127)


@given(
    n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), c=st.sampled_from([1, 3, 4, 5, 16, 30, 64, 67]),
    o=st.integers(1, 40), k=st.sampled_from([1, 3, 5]), stride=st.integers(1, 2), padding=st.integers(0, 2),
    abits=st.sampled_from([1, 2, 4, 8]), wbits=st.sampled_from([2, 4, 8]), fused=st.booleans(),
    shortcut=st.sampled_from([None, "unsigned", "signed"]), threads=st.integers(1, 3), seed=st.integers(0, 2**16),
)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_dot_conv_equals_reference(isa, n, h, w, c, o, k, stride, padding, abits, wbits, fused, shortcut, threads, seed):
    """The dot-product conv (codes x int8 weights, no bit-planes) equals the reference: accumulators,
    or codes by thresholds plus a shortcut (onto a signed branch's codes counted from 0: 6 levels,
    3 taken off after the add). AVX2's VPMADDUBSW saturates int16 pairs, so beyond
    2 x code x |weight| <= 32767 (8-bit codes with 8-bit weights) only VNNI and portable builds run."""
    assume(h + 2 * padding >= k and w + 2 * padding >= k)
    assume(not (abits == 8 and wbits == 8 and fast._kernels.dot_isa(isa) == "avx2"))  # dot_conv_fits refuses these
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**abits, (n, h, w, c)).astype(np.uint8)
    x.flat[0] = 2**abits - 1
    wt = rng.integers(-2**(wbits - 1), 2**(wbits - 1), (o, k, k, c)).astype(np.int32)
    wt.flat[0] = -2**(wbits - 1)
    acc = conv2d_reference(x, wt, stride, padding)
    ho, wo = acc.shape[1:3]
    args = (x, n, h, w, c, fast.pack_dot_weight(wt), k, k, o, fast.padded_channels(o), stride, padding, ho, wo)
    if not fused:
        out = np.empty((n, ho, wo, o), np.int32)
        fast._kernels.dot_conv(*args, out, threads, isa=isa)
        assert np.array_equal(out, acc)
        return
    direction = rng.choice([-1, 1], o).astype(np.int8)
    shift = 3 if shortcut == "signed" else 0
    thresholds = spread_thresholds(rng, acc, 3 + shift)
    expected = threshold_reference(acc, direction, thresholds, 0)
    d, t = fast.pad_thresholds(direction, thresholds)
    out = np.empty((n, ho, wo, o), np.uint8)
    if shortcut:
        res_c = (o + 1) // 2
        codes = rng.integers(0, 4, (n, ho, wo, res_c)).astype(np.uint8)
        expected = with_residual(expected, codes, 1, 3, shift)
        fast._kernels.dot_conv(*args, out, threads, d, t, 3 + shift, 0, codes, ho, wo, res_c, 1, 3, shift, isa=isa)
    else:
        fast._kernels.dot_conv(*args, out, threads, d, t, 3, 0, isa=isa)
    assert np.array_equal(out, expected)


@given(m=st.integers(1, 50), o=st.integers(1, 40), levels=st.integers(1, 7), qmin=st.integers(0, 2),
       seed=st.integers(0, 2**16))
@settings(max_examples=50, deadline=None)
def test_threshold_kernel_equals_reference(m, o, levels, qmin, seed):
    """uint8 output codes (qmin >= 0): the runtime sends signed grids to the reference."""
    rng = np.random.default_rng(seed)
    acc = rng.integers(-500, 500, (m, o)).astype(np.int32)
    direction = rng.choice([-1, 1], o).astype(np.int8)
    thresholds = np.sort(rng.integers(-400, 400, (o, levels)), axis=1).astype(np.int32)
    out = np.empty((m, o), np.uint8)
    fast._kernels.threshold(acc, m, o, direction, thresholds, levels, qmin, out, 2)
    assert np.array_equal(out, threshold_reference(acc, direction, thresholds, qmin))


@given(tables=st.sampled_from([1, 3]), d=st.integers(1, 17), n=st.integers(1, 3), seed=st.integers(0, 2**16))
@settings(max_examples=30, deadline=None)
def test_lut_kernel_equals_reference(tables, d, n, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (n, 5, 4, 3)).astype(np.uint8)
    lut = rng.integers(0, 4, (tables, 256, d)).astype(np.uint8)
    out = np.empty((n, 5, 4, 3 * d), np.uint8)
    fast._kernels.lut(image, n * 20, 3, lut, tables, d, out, 2)
    assert np.array_equal(out, lut_reference(image, lut))


@given(tables=st.sampled_from([1, "per channel"]), count=st.integers(1, 300), c=st.sampled_from([1, 3, 16]),
       top=st.sampled_from([3, 15, 16, 255]), seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_requantizing_lut_kernel_equals_reference(tables, count, c, top, seed):
    """One code per channel (a residual stream requantized, fusion.requantize_as_lookup): codes below
    16 take the byte-shuffle path 32 at a time, a block with a larger code (top 16, 255) the plain one."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, top + 1, (count, 1, 1, c)).astype(np.uint8)
    lut = rng.integers(0, 256, (1 if tables == 1 else c, 256, 1)).astype(np.uint8)
    out = np.empty_like(codes)
    fast._kernels.lut(codes, count, c, lut, lut.shape[0], 1, out, 2)
    assert np.array_equal(out, lut_reference(codes, lut))


@given(h=st.integers(1, 8), c=st.sampled_from([3, 16, 30, 64, 70]), o=st.integers(1, 40), stride=st.integers(1, 2),
       abits=st.integers(1, 3), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fused_conv_threshold_equals_reference(isa, h, c, o, stride, abits, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**abits, (2, h, h, c)).astype(np.uint8)
    wt = random_weights(rng, (o, 3, 3, c), WEIGHT_GRIDS["binary"])
    acc = conv2d_reference(x, wt, stride, 1)
    direction = rng.choice([-1, 1], o).astype(np.int8)
    levels = 2**abits - 1
    thresholds = np.sort(rng.integers(-30, 30, (o, levels)), axis=1).astype(np.int32)
    codes = fast_conv(x, wt, WEIGHT_GRIDS["binary"], stride, 1, thresholds=(direction, thresholds, 0), isa=isa)
    assert np.array_equal(codes, threshold_reference(acc, direction, thresholds, 0))


@given(n=st.integers(1, 5), h=st.integers(1, 8), c=st.sampled_from([8, 16, 24, 64]), o=st.sampled_from([16, 24, 32, 64]),
       grid=st.sampled_from(sorted(WEIGHT_GRIDS)), abits=st.integers(1, 4), k=st.sampled_from([1, 3]),
       stride=st.integers(1, 2), shortcut=st.sampled_from([0, 8, 16, 32, 64]), signed=st.booleans(),
       threads=st.integers(1, 3), seed=st.integers(0, 2**16))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_int16_epilogue_equals_reference(isa, n, h, c, o, grid, abits, k, stride, shortcut, signed, threads, seed):
    """With 16, 32 or 64 output channels the AVX-512 epilogue works in int16 lanes where the
    accumulators fit (two 16-channel positions, or 32 channels of one, per vector; thresholds
    clamped to int16): thresholds far outside that range, odd position counts, batches that do and do
    not split evenly over the threads, shortcuts of fewer channels than the output (the rest add 0).
    24 channels, 8-channel shortcuts and accumulators beyond int16 take the int32 path. A signed
    branch (`signed`, with a shortcut) has twice the levels, counted from 0 (30 for 4-bit codes, the
    most the int16 lanes take), and the shift comes off after the add."""
    rng = np.random.default_rng(seed)
    lowest, wstride, bits = WEIGHT_GRIDS[grid]
    x = rng.integers(0, 2**abits, (n, h, h, c)).astype(np.uint8)
    wt = random_weights(rng, (o, k, k, c), WEIGHT_GRIDS[grid])
    pad = k // 2
    acc = conv2d_reference(x, wt, stride, pad)
    ho = acc.shape[1]
    direction = rng.choice([-1, 1], o).astype(np.int8)
    levels = 2**abits - 1
    res_c = min(shortcut, o)
    shift = levels if signed and res_c else 0
    thresholds = spread_thresholds(rng, acc, levels + shift)
    expected = threshold_reference(acc, direction, thresholds, 0)
    args = (x, n, h, h, c, abits, fast.pack_conv_weight(wt, lowest, wstride, bits), k, k, bits, o, fast.padded_channels(o),
            lowest, wstride, stride, pad, ho, ho)
    d, t = fast.pad_thresholds(direction, thresholds)
    out = np.empty((n, ho, ho, o), np.uint8)
    if res_c:
        codes = rng.integers(0, 2**abits, (n, ho * stride, ho * stride, res_c)).astype(np.uint8)
        expected = with_residual(expected, codes, stride, levels, shift)
        fast._kernels.conv(*args, out, threads, d, t, levels + shift, 0, codes, ho * stride, ho * stride, res_c, stride,
                           levels, shift, isa=isa)
    else:
        fast._kernels.conv(*args, out, threads, d, t, levels, 0, isa=isa)
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("channels", [16, 32])
@pytest.mark.parametrize("width", [15, 16, 17, 31, 32, 33, 64, 70])
@pytest.mark.parametrize("residual", [None, "same", "downsampled", "signed"])
def test_row_convs_equal_reference(isa, channels, width, residual):
    """16 -> 16 and 32 -> 32 channels, 3x3, stride 1 (the AVX-512 BITALG build runs these with a
    row's positions in the lanes, 32 or 16 per vector): rows of whole vectors and a remainder, 2-bit
    codes, binary and 3-bit weights; shortcuts of the same shape, or (ResNet's downsampling block)
    half the channels at twice the size, read at stride 2, the other channels adding 0; or a signed
    branch's codes (-3 .. 3, counted from 0) onto a shortcut of the same shape, 3 taken off after."""
    rng = np.random.default_rng(width)
    c = channels
    for grid in ("binary", "dorefa3"):
        lowest, wstride, bits = WEIGHT_GRIDS[grid]
        x = rng.integers(0, 4, (3, 5, width, c)).astype(np.uint8)
        wt = random_weights(rng, (c, 3, 3, c), WEIGHT_GRIDS[grid])
        acc = conv2d_reference(x, wt, 1, 1)
        direction = rng.choice([-1, 1], c).astype(np.int8)
        span = int(np.abs(acc).max()) + 2
        shift = 3 if residual == "signed" else 0
        thresholds = np.sort(rng.integers(-span, span + 1, (c, 3 + shift)), axis=1).astype(np.int32)
        expected = threshold_reference(acc, direction, thresholds, 0)
        d, t = fast.pad_thresholds(direction, thresholds)
        args = (x, 3, 5, width, c, 2, fast.pack_conv_weight(wt, lowest, wstride, bits), 3, 3, bits, c, c, lowest,
                wstride, 1, 1, 5, width)
        out = np.empty((3, 5, width, c), np.uint8)
        if residual:
            s = 2 if residual == "downsampled" else 1
            shortcut = rng.integers(0, 4, (3, 5 * s, width * s, c // s)).astype(np.uint8)
            expected = with_residual(expected, shortcut, s, 3, shift)
            fast._kernels.conv(*args, out, 2, d, t, 3 + shift, 0, shortcut, 5 * s, width * s, c // s, s, 3, shift, isa=isa)
        else:
            fast._kernels.conv(*args, out, 2, d, t, 3, 0, isa=isa)
        assert np.array_equal(out, expected), grid


@given(channels=st.sampled_from([16, 32]), width=st.sampled_from([7, 32, 33]), levels=st.sampled_from([7, 8, 15, 16, 30, 31]),
       order=st.sampled_from(["sorted", "ties", "unsorted"]), grid=st.sampled_from(["binary", "dorefa3"]),
       seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_row_convs_with_many_levels_equal_reference(isa, channels, width, levels, order, grid, seed):
    """The row convs' epilogue with many levels (a 4-bit signed branch has 30): sorted thresholds are
    searched by halving, so every code is checked against the reference where thresholds fall on the
    accumulators themselves, repeat (`ties`), sit beyond every accumulator or int16 (`sorted`: from
    spread_thresholds), or are out of order (`unsorted`: no export makes them; the count per level
    still holds). 31 levels on 16 channels leave the int16 epilogue, 31 on 32 stay in the search."""
    rng = np.random.default_rng(seed)
    c = channels
    lowest, wstride, bits = WEIGHT_GRIDS[grid]
    x = rng.integers(0, 4, (2, 4, width, c)).astype(np.uint8)
    wt = random_weights(rng, (c, 3, 3, c), WEIGHT_GRIDS[grid])
    acc = conv2d_reference(x, wt, 1, 1)
    direction = rng.choice([-1, 1], c).astype(np.int8)
    if order == "ties":  # each channel's thresholds drawn from its own accumulators, some twice
        signed = acc.reshape(-1, c) * direction
        thresholds = np.sort(signed[rng.integers(0, len(signed), (c, levels)), np.arange(c)[:, None]], axis=1)
    else:
        thresholds = spread_thresholds(rng, acc, levels)
        if order == "unsorted":
            thresholds = rng.permuted(thresholds, axis=1)
    thresholds = thresholds.astype(np.int32)
    expected = threshold_reference(acc, direction, thresholds, 1)
    codes = fast_conv(x, wt, WEIGHT_GRIDS[grid], 1, 1, thresholds=(direction, thresholds, 1), isa=isa)
    assert np.array_equal(codes, expected)


@given(n=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 130),
       threads=st.integers(1, 3), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_sum_pool_kernel_equals_numpy(n, h, w, c, threads, seed):
    x = np.random.default_rng(seed).integers(0, 256, (n, h, w, c)).astype(np.uint8)
    out = np.empty((n, c), np.int64)
    fast._kernels.sum_pool(x, n, h * w, c, out, threads)
    assert np.array_equal(out, x.sum((1, 2), dtype=np.int64))


def test_kernels_name_their_instruction_sets():
    """isas() lists this CPU's builds, portable first and the default last; a call naming another
    (or an unknown keyword) is refused before anything runs."""
    names = fast._kernels.isas()
    assert names[0] == "portable" and set(names) <= set(ISAS)
    x, w = np.zeros((1, 4, 4, 8), np.uint8), fast.pack_conv_weight(np.ones((8, 3, 3, 8), np.int32), -1, 2, 1)
    args = (x, 1, 4, 4, 8, 1, w, 3, 3, 1, 8, 8, -1, 2, 1, 1, 4, 4, np.empty((1, 4, 4, 8), np.int32), 1)
    with pytest.raises(ValueError, match="instruction set avx9 is not available"):
        fast._kernels.conv(*args, isa="avx9")
    with pytest.raises(TypeError, match="one keyword argument, isa"):
        fast._kernels.conv(*args, threads=2)
    features = fast._kernels.cpu_features()
    assert all(isinstance(v, bool) for v in features.values())
    assert ("avx2" in names) == (features.get("avx2", False) and features.get("popcnt", False))


def test_conv_rejects_inconsistent_geometry():
    x = np.zeros((1, 4, 4, 8), np.uint8)
    w = fast.pack_conv_weight(np.ones((8, 3, 3, 8), np.int32), -1, 2, 1)
    with pytest.raises(ValueError, match="geometry"):
        fast._kernels.conv(x, 1, 4, 4, 8, 1, w, 3, 3, 1, 8, 8, -1, 2, 1, 0, 4, 4, np.empty((1, 4, 4, 8), np.int32), 1)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        fast._kernels.conv(x, 1, 4, 4, 8, 1, w, 3, 3, 1, 8, 8, -1, 2, 1, 1, 4, 4, np.empty((1, 4, 4, 8), np.int32), 0)


@given(h=st.integers(2, 8), c=st.sampled_from([16, 30, 32]), o=st.sampled_from([8, 16, 24, 32, 40]),
       stride=st.integers(1, 2), qmax=st.sampled_from([3, 15, 255]), signed=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_conv_with_residual_add_equals_reference(isa, h, c, o, stride, qmax, signed, seed):
    """conv -> thresholds -> + shortcut codes (subsampled by `stride`, channels past the shortcut's
    own count add 0) -> clip, in one call, against the reference ops one after another; the codes
    2-bit, or a wider residual stream's (`residual_bits` 4 or 8: qmax levels of thresholds); with
    `signed`, a signed branch's (2 qmax levels counted from 0, qmax taken off after the add)."""
    assume(not signed or 2 * qmax <= 255)
    rng = np.random.default_rng(seed)
    shift = qmax if signed else 0
    x = rng.integers(0, 4, (2, h, h, c)).astype(np.uint8)
    shortcut = rng.integers(0, qmax + 1, (2, h, h, min(c, o))).astype(np.uint8)
    wt = random_weights(rng, (o, 3, 3, c), WEIGHT_GRIDS["binary"])
    direction = rng.choice([-1, 1], o).astype(np.int8)
    thresholds = np.sort(rng.integers(-30, 30, (o, qmax + shift)), axis=1).astype(np.int32)
    codes = threshold_reference(conv2d_reference(x, wt, stride, 1), direction, thresholds, 0)
    ho = codes.shape[1]
    expected = with_residual(codes, shortcut, stride, qmax, shift)
    d, t = fast.pad_thresholds(direction, thresholds)
    out = np.empty((2, ho, ho, o), np.uint8)
    fast._kernels.conv(x, 2, h, h, c, 2, fast.pack_conv_weight(wt, -1, 2, 1), 3, 3, 1, o, fast.padded_channels(o),
                       -1, 2, stride, 1, ho, ho, out, 2, d, t, qmax + shift, 0, shortcut, h, h, shortcut.shape[3], stride,
                       qmax, shift, isa=isa)
    assert np.array_equal(out, expected)


@given(tables=st.sampled_from([1, 3]), d=st.integers(1, 21), abits=st.integers(1, 3), o=st.integers(1, 40),
       h=st.integers(1, 7), stride=st.integers(1, 2), padding=st.integers(0, 1), fused=st.booleans(),
       seed=st.integers(0, 2**16))
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_lut_conv_equals_lookup_then_conv(isa, tables, d, abits, o, h, stride, padding, fused, seed):
    """The first conv packing its planes straight from pixel values through the lookup equals the
    lookup followed by the integer conv (and thresholds)."""
    assume(h + 2 * padding >= 3)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (2, h, h + 1, 3)).astype(np.uint8)
    lut = rng.integers(0, 2**abits, (tables, 256, d))
    wt = random_weights(rng, (o, 3, 3, 3 * d), WEIGHT_GRIDS["binary"])
    acc = conv2d_reference(lut_reference(image, lut), wt, stride, padding)
    ho, wo = acc.shape[1:3]
    bits, sums = fast.lut_plane_bits(lut, abits)
    args = (image, 2, h, h + 1, 3, bits, sums, tables, d, abits, fast.pack_conv_weight(wt, -1, 2, 1), 3, 3, 1, o,
            fast.padded_channels(o), -1, 2, stride, padding, ho, wo)
    if not fused:
        out = np.empty((2, ho, wo, o), np.int32)
        fast._kernels.lut_conv(*args, out, 2, isa=isa)
        assert np.array_equal(out, acc)
        return
    direction = rng.choice([-1, 1], o).astype(np.int8)
    thresholds = spread_thresholds(rng, acc, 3)
    dpad, tpad = fast.pad_thresholds(direction, thresholds)
    out = np.empty((2, ho, wo, o), np.uint8)
    fast._kernels.lut_conv(*args, out, 2, dpad, tpad, 3, 0, isa=isa)
    assert np.array_equal(out, threshold_reference(acc, direction, thresholds, 0))


@given(tables=st.sampled_from([1, 3]), d=st.integers(1, 12), abits=st.integers(1, 2), o=st.sampled_from([1, 7, 16]),
       levels=st.sampled_from([1, 3, 7, 15]),
       h=st.integers(1, 7), k=st.sampled_from([1, 3]), stride=st.integers(1, 2), padding=st.integers(0, 1),
       colours=st.sampled_from([1, 3]), int8=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_table_conv_equals_lookup_then_conv(isa, tables, d, abits, o, levels, h, k, stride, padding, colours, int8, seed):
    """The first conv as per-(tap, colour, pixel value) table sums equals the lookup followed by the
    integer conv and thresholds, border windows (zero padding) and the unrolled 3x3x3 path alike;
    with 16 channels, positions finish in pairs in int16 (thresholds beyond int16 clamped), and an
    odd row's last one alone. An int8 first layer's signed codes (pixel - 128) need int16 entries."""
    assume(h + 2 * padding >= k and not (tables == 3 and colours == 1))
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (2, h, h + 1, colours)).astype(np.uint8)
    if int8:
        d, lut = 1, np.broadcast_to(np.arange(-128, 128).reshape(1, 256, 1), (tables, 256, 1))
    else:
        lut = rng.integers(0, 2**abits, (tables, 256, d))
    wt = random_weights(rng, (o, k, k, colours * d), WEIGHT_GRIDS["binary"])
    acc = conv2d_reference(lut_reference(image, lut), wt, stride, padding)
    ho, wo = acc.shape[1:3]
    table = fusion.lut_conv_table(wt, lut)
    assert table.dtype == (np.int16 if int8 and (wt < 0).any() else np.int8)
    direction = rng.choice([-1, 1], o).astype(np.int8)
    thresholds = spread_thresholds(rng, acc, levels)  # 15 levels: 4-bit codes, still the int16 epilogue
    dpad, tpad = fast.pad_thresholds(direction, thresholds)
    out = np.empty((2, ho, wo, o), np.uint8)
    fast._kernels.table_conv(image, 2, h, h + 1, colours, table, k, k, o, fast.padded_channels(o), stride, padding,
                             ho, wo, out, 2, dpad, tpad, levels, 0, table.itemsize, isa=isa)
    assert np.array_equal(out, threshold_reference(acc, direction, thresholds, 0))


def test_lut_conv_table_declines_what_the_kernel_cannot_hold():
    lut = np.full((1, 256, 10), 3)
    assert fusion.lut_conv_table(np.ones((17, 3, 3, 30), np.int32), lut) is None  # > 16 channels
    assert fusion.lut_conv_table(np.full((16, 3, 3, 30), 50, np.int32), lut) is None  # 27 x 1500 > int16 sums
    assert fusion.lut_conv_table(np.full((16, 3, 3, 30), 5, np.int32), lut).dtype == np.int16  # 150 > int8
    assert fusion.lut_conv_table(np.ones((16, 3, 3, 30), np.int32), lut).shape == (256, 27, 16)
    assert fusion.lut_conv_table(-np.ones((16, 3, 3, 24), np.int32), np.full((1, 256, 8), 16)).dtype == np.int8  # -128


def test_signed_zero_is_each_colours_pixel_value_of_code_zero():
    int8 = np.arange(-128, 128).reshape(1, 256, 1)  # an int8 first layer's lookup
    assert fusion.signed_zero(int8, 3).tolist() == [128, 128, 128]
    per_colour = np.stack([np.roll(int8[0], k, 0) for k in (0, 1, 2)])
    assert fusion.signed_zero(per_colour, 3).tolist() == [128, 129, 130]
    assert fusion.signed_zero(np.arange(1, 257).reshape(1, 256, 1), 3) is None


def test_dot_product_rule_follows_the_measured_crossover():
    """fast.dot_conv_fits: bit-planes up to 4 plane pairs (W2A2 on wide layers excepted), dot products
    from 5; never for weights beyond int8, nor where VPMADDUBSW's int16 pairs would saturate."""
    def node(abits, wbits, channels=16):
        return {"input_range": [0, 2**abits - 1], "weight_bits": wbits, "in_channels": channels}

    w4, w8 = np.array([-8, 7]), np.array([-128, 127])
    for isa in fast.available_isas():
        assert not fast.dot_conv_fits(node(2, 1), np.array([-1, 1]), isa)  # W1A2
        assert fast.dot_conv_fits(node(4, 4), w4, isa)  # W4A4
        assert not fast.dot_conv_fits(node(4, 4), np.array([-200, 7]), isa)  # not int8
        wide = fast.DOT_WIDE_CHANNELS[isa]
        assert fast.dot_conv_fits(node(2, 2, 64), np.array([-2, 1]), isa) == (wide is not None and 64 >= wide)
        assert fast.dot_conv_fits(node(2, 2, 16), np.array([-2, 1]), isa) == (wide is not None and 16 >= wide)
        # 8-bit codes x 8-bit weights: 2 x 255 x 128 > 32767 for VPMADDUBSW
        assert fast.dot_conv_fits(node(8, 8), w8, isa) == (fast._kernels.dot_isa(isa) != "avx2")


def test_dot_conv_near_the_int32_limit(isa):
    """8-bit codes at 255 times weights at -128 over 9 x 2048 inputs: 60% of int32, exact (VNNI and
    portable; VPMADDUBSW's int16 pairs would saturate, so the runtime never sends it these)."""
    if fast._kernels.dot_isa(isa) == "avx2":
        pytest.skip("VPMADDUBSW takes at most 2 x code x |weight| <= 32767")
    c = 2048
    x = np.full((1, 3, 3, c), 255, np.uint8)
    w = np.full((2, 3, 3, c), -128, np.int32)
    w[1] = 127
    out = np.empty((1, 1, 1, 2), np.int32)
    fast._kernels.dot_conv(x, 1, 3, 3, c, fast.pack_dot_weight(w), 3, 3, 2, 8, 1, 0, 1, 1, out, 1, isa=isa)
    assert out[0, 0, 0].tolist() == [-9 * c * 255 * 128, 9 * c * 255 * 127]
