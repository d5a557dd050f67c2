"""The C kernels against the numpy reference, and the reference against an independent oracle
(a float64 conv in PyTorch on integer-valued data), for every instruction set this CPU has."""
import ctypes

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pixelq.errors import ExportError, InputError
from pixelq.exporting.integers import check_accumulator_range
from pixelq.runtime import clib, fast, fusion
from pixelq.integer.ops import Conv
from pixelq.integer.reference import conv2d_reference, lut_reference, threshold_reference

from arm64.cases import record as record_arm64_case

pytestmark = pytest.mark.skipif(not fast.kernels_available(), reason="C kernels not built (no C compiler)")

ISAS = list(clib.ISA_NAMES)
WEIGHT_GRIDS = {"binary": (-1, 2, 1), "ternary": (-1, 1, 2), "dorefa3": (-7, 2, 3), "lsq4": (-8, 1, 4)}


@pytest.fixture(params=ISAS)
def isa(request):
    """The name of an instruction set this CPU has, passed to each kernel call as isa=NAME."""
    if request.param not in clib.isas():
        pytest.skip(f"this CPU has no {request.param}")
    return request.param


def random_weights(rng, shape, grid):
    lowest, stride, bits = grid
    return (lowest + stride * rng.integers(0, 2**bits, shape)).astype(np.int32)


def run_conv(kind, x, out, isa, threads=2, **fields):
    """clib.conv on input x (N, H, W, C) into `out`, the other fields by name. The portable build's
    calls are the ARM64 check's cases (arm64/cases.py, while PXQ_ARM64_CASES names a file)."""
    n, h, w, c = x.shape
    fields = dict(kind=kind, input=np.ascontiguousarray(x), batch=n, height=h, width=w, channels=c, threads=threads,
                  **fields)
    clib.conv(out=out, isa=isa, **fields)
    if isa == "portable":
        record_arm64_case(fields, out)
    return out


def plane_weights(w, grid):
    """A planes conv's weight fields for weight codes (O, k, k, I) on `grid`."""
    lowest, wstride, bits = grid
    o, k = w.shape[0], w.shape[1]
    return dict(weights=fast.pack_conv_weight(w, lowest, wstride, bits), kernel_h=k, kernel_w=k, weight_bits=bits,
                weight_lowest=lowest, weight_stride=wstride, out_channels=o, out_channels_padded=fast.padded_channels(o))


def dot_weights(w):
    o, k = w.shape[0], w.shape[1]
    return dict(weights=fast.pack_dot_weight(w), kernel_h=k, kernel_w=k, out_channels=o,
                out_channels_padded=fast.padded_channels(o))


def threshold_fields(direction, thresholds, qmin=0):
    d, t = fast.pad_thresholds(direction, thresholds)
    return dict(direction=d, thresholds=t, levels=t.shape[0], qmin=qmin)


def residual_fields(shortcut, stride, qmax, shift=0):
    return dict(residual=shortcut, residual_height=shortcut.shape[1], residual_width=shortcut.shape[2],
                residual_channels=shortcut.shape[3], residual_stride=stride, residual_qmax=qmax, residual_shift=shift)


def fast_conv(x, w, grid, stride, padding, threads=2, thresholds=None, isa=None):
    """The C conv on uint8 codes: int32 accumulators, or codes given (direction, thresholds, qmin)."""
    n, h, wd_, c = x.shape
    o, k = w.shape[0], w.shape[1]
    ho, wo = (h + 2 * padding - k) // stride + 1, (wd_ + 2 * padding - k) // stride + 1
    fields = dict(plane_weights(w, grid), input_planes=max(1, int(x.max(initial=0)).bit_length()), stride=stride,
                  pad=padding)
    if thresholds is None:
        return run_conv("planes", x, np.empty((n, ho, wo, o), np.int32), isa, threads, **fields)
    direction, levels, qmin = thresholds
    return run_conv("planes", x, np.empty((n, ho, wo, o), np.uint8), isa, threads, **fields,
                    **threshold_fields(direction, levels, qmin))


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


def test_fast_conv_with_every_bit_set(isa):
    """Every code and weight bit set, many words per shift level: a 5x5 conv over 64 channels of 2-bit
    codes and 2-bit weights adds 50 window words of 64 set bits at the middle level (two plane pairs),
    past where byte counts of 8 per word overflow unless they are widened in time (every 31 words)."""
    x = np.full((1, 5, 5, 64), 3, np.uint8)
    w = np.full((16, 5, 5, 64), 1, np.int32)  # lsq 2-bit grid: -2 + u, u = 3
    out = fast_conv(x, w, (-2, 1, 2), 1, 0, isa=isa)
    assert out.ravel().tolist() == [25 * 64 * 3] * 16
    assert np.array_equal(out, conv2d_reference(x, w, 1, 0))


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
    assume(not (abits == 8 and wbits == 8 and clib.dot_isa(isa) == "avx2"))  # the runtime never sends it these
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**abits, (n, h, w, c)).astype(np.uint8)
    x.flat[0] = 2**abits - 1
    wt = rng.integers(-2**(wbits - 1), 2**(wbits - 1), (o, k, k, c)).astype(np.int32)
    wt.flat[0] = -2**(wbits - 1)
    acc = conv2d_reference(x, wt, stride, padding)
    ho, wo = acc.shape[1:3]
    fields = dict(dot_weights(wt), stride=stride, pad=padding)
    if fused:
        direction = rng.choice([-1, 1], o).astype(np.int8)
        shift = 3 if shortcut == "signed" else 0
        thresholds = spread_thresholds(rng, acc, 3 + shift)
        expected = threshold_reference(acc, direction, thresholds, 0)
        fields.update(threshold_fields(direction, thresholds))
        if shortcut:
            codes = rng.integers(0, 4, (n, ho, wo, (o + 1) // 2)).astype(np.uint8)
            expected = with_residual(expected, codes, 1, 3, shift)
            fields.update(residual_fields(codes, 1, 3, shift))
    else:
        expected = acc
    out = np.empty((n, ho, wo, o), np.uint8 if fused else np.int32)
    assert np.array_equal(run_conv("dot", x, out, isa, threads, **fields), expected)


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
    clib.threshold(acc=acc, positions=m, channels=o, direction=direction, thresholds=thresholds, levels=levels,
                   qmin=qmin, out=out, threads=2)
    assert np.array_equal(out, threshold_reference(acc, direction, thresholds, qmin))


@given(tables=st.sampled_from([1, 3]), d=st.integers(1, 17), n=st.integers(1, 3), seed=st.integers(0, 2**16))
@settings(max_examples=30, deadline=None)
def test_lut_kernel_equals_reference(tables, d, n, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (n, 5, 4, 3)).astype(np.uint8)
    lut = rng.integers(0, 4, (tables, 256, d)).astype(np.uint8)
    out = np.empty((n, 5, 4, 3 * d), np.uint8)
    clib.lookup(image=image, positions=n * 20, channels=3, tables=lut, tables_count=tables, depth=d, out=out, threads=2)
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
    clib.lookup(image=codes, positions=count, channels=c, tables=lut, tables_count=lut.shape[0], depth=1, out=out,
                threads=2)
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
    fields = dict(plane_weights(wt, WEIGHT_GRIDS[grid]), input_planes=abits, stride=stride, pad=pad,
                  **threshold_fields(direction, thresholds))
    if res_c:
        codes = rng.integers(0, 2**abits, (n, ho * stride, ho * stride, res_c)).astype(np.uint8)
        expected = with_residual(expected, codes, stride, levels, shift)
        fields.update(residual_fields(codes, stride, levels, shift))
    out = run_conv("planes", x, np.empty((n, ho, ho, o), np.uint8), isa, threads, **fields)
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
        fields = dict(plane_weights(wt, WEIGHT_GRIDS[grid]), input_planes=2, stride=1, pad=1,
                      **threshold_fields(direction, thresholds))
        if residual:
            s = 2 if residual == "downsampled" else 1
            shortcut = rng.integers(0, 4, (3, 5 * s, width * s, c // s)).astype(np.uint8)
            expected = with_residual(expected, shortcut, s, 3, shift)
            fields.update(residual_fields(shortcut, s, 3, shift))
        out = run_conv("planes", x, np.empty((3, 5, width, c), np.uint8), isa, **fields)
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
    clib.sum_pool(codes=x, batch=n, positions=h * w, channels=c, out=out, threads=threads)
    assert np.array_equal(out, x.sum((1, 2), dtype=np.int64))


def small_conv(**change):
    """A valid 3x3 binary planes conv, 8 -> 8 channels on a 4x4 input, as ConvParams fields, with `change`."""
    fields = dict(kind="planes", input=np.zeros((1, 4, 4, 8), np.uint8), batch=1, height=4, width=4, channels=8,
                  input_planes=1, out=np.empty((1, 4, 4, 8), np.int32), threads=1, stride=1, pad=1,
                  **plane_weights(np.ones((8, 3, 3, 8), np.int32), WEIGHT_GRIDS["binary"]))
    return {**fields, **change}


def test_kernels_name_their_instruction_sets():
    """isas() lists this CPU's builds, portable first and the default last; a call naming another is
    refused before anything runs."""
    names = clib.isas()
    assert names[0] == "portable" and set(names) <= set(ISAS)
    clib.conv(**small_conv())
    with pytest.raises(ValueError, match="instruction set avx9 is not available"):
        clib.conv(**small_conv(isa="avx9"))
    with pytest.raises(ValueError, match="not available"):
        clib.dot_isa("avx9")
    features = clib.cpu_features()
    assert all(isinstance(v, bool) for v in features.values())
    assert ("avx2" in names) == (features.get("avx2", False) and features.get("popcnt", False))


@pytest.mark.parametrize("struct", list(clib.STRUCTS))
def test_bindings_match_the_headers_layout(struct):
    """Every field of the ctypes mirror sits where the C struct has it, and the sizes agree (a field
    the header gained and the binding lacks changes the size)."""
    name = clib.STRUCTS[struct].encode()
    assert clib.lib.pxq_struct_size(name) == ctypes.sizeof(struct)
    for field, _ in struct._fields_:
        assert clib.lib.pxq_field_offset(name, field.encode()) == getattr(struct, field).offset, field
    assert clib.lib.pxq_field_offset(name, b"no_such_field") == -1


def test_conv_checks_every_size_and_field():
    """The library checks each array's size against the geometry and the binding each dtype it fixes
    and each field's name: a wrong one is an error naming it, before anything runs."""
    with pytest.raises(ValueError, match="planes conv: out has 1024 bytes, expected 512"):
        clib.conv(**small_conv(out=np.empty((1, 4, 4, 8), np.int64)))
    with pytest.raises(ValueError, match="input has 64 bytes, expected 128"):
        clib.conv(**small_conv(input=np.zeros((1, 4, 4, 4), np.uint8)))
    with pytest.raises(ValueError, match="weights has"):
        clib.conv(**small_conv(kernel_h=1, kernel_w=1))
    with pytest.raises(ValueError, match="input must be uint8"):
        clib.conv(**small_conv(input=np.zeros((1, 4, 4, 8), np.int8)))
    with pytest.raises(ValueError, match="C-contiguous"):
        clib.conv(**small_conv(input=np.zeros((1, 4, 8, 8), np.uint8)[:, :, ::2]))
    with pytest.raises(TypeError, match="no field 'strides'"):
        clib.conv(**small_conv(strides=1))
    with pytest.raises(ValueError, match="threads must be >= 1"):
        clib.conv(**small_conv(threads=0))
    with pytest.raises(ValueError, match="thresholds is missing"):
        clib.conv(**small_conv(direction=np.ones(8, np.int8), levels=1, out=np.empty((1, 4, 4, 8), np.uint8)))
    with pytest.raises(ValueError, match="residual add needs thresholds"):
        clib.conv(**small_conv(residual=np.zeros((1, 4, 4, 8), np.uint8), residual_height=4, residual_width=4,
                               residual_channels=8, residual_stride=1))
    with pytest.raises(ValueError, match="unknown kind 7"):
        clib.conv(**small_conv(kind=7))
    with pytest.raises(ValueError, match="does not fit"):
        clib.conv(**small_conv(pad=0, height=2, input=np.zeros((1, 2, 4, 8), np.uint8)))
    with pytest.raises(ValueError, match="overflows"):
        clib.conv(**small_conv(batch=2**31 - 1, height=2**31 - 1, width=2**31 - 1, channels=2**31 - 1))


@pytest.mark.parametrize("stride,pad", [(1, 2), (2, 1), (1, 0), (2, 0), (3, 1), (1, 3)])
def test_swapped_stride_and_pad_cannot_pass(stride, pad):
    """The output's size is computed in the library from the input, kernel, stride and pad: the same
    call with stride and pad swapped writes a different number of positions, so its output buffer
    (sized for the right geometry) is refused (or, where the pad was 0, the stride of 0); geometry
    passed in the right fields runs and equals the reference."""
    rng = np.random.default_rng(stride * 10 + pad)
    x = rng.integers(0, 4, (2, 9, 9, 8)).astype(np.uint8)
    w = random_weights(rng, (8, 5, 5, 8), WEIGHT_GRIDS["binary"])
    expected = conv2d_reference(x, w, stride, pad)
    fields = dict(plane_weights(w, WEIGHT_GRIDS["binary"]), input_planes=2)
    out = run_conv("planes", x, np.empty(expected.shape, np.int32), None, stride=stride, pad=pad, **fields)
    assert np.array_equal(out, expected)
    with pytest.raises(ValueError, match="out has|stride >= 1"):
        run_conv("planes", x, np.empty(expected.shape, np.int32), None, stride=pad, pad=stride, **fields)


def test_small_kernels_check_their_sizes():
    acc, direction, thresholds = np.zeros((4, 8), np.int32), np.ones(8, np.int8), np.zeros((8, 3), np.int32)
    with pytest.raises(ValueError, match="threshold: out has"):
        clib.threshold(acc=acc, positions=4, channels=8, direction=direction, thresholds=thresholds, levels=3,
                       qmin=0, out=np.empty((4, 7), np.uint8), threads=1)
    with pytest.raises(ValueError, match="lookup: needs one table, or one per colour"):
        clib.lookup(image=np.zeros((4, 3), np.uint8), positions=4, channels=3, tables=np.zeros((2, 256, 1), np.uint8),
                    tables_count=2, depth=1, out=np.empty((4, 3), np.uint8), threads=1)
    with pytest.raises(ValueError, match="sum_pool: codes has"):
        clib.sum_pool(codes=np.zeros((2, 5, 3), np.uint8), batch=2, positions=4, channels=3,
                      out=np.empty((2, 3), np.int64), threads=1)


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
    out = np.empty((2, ho, ho, o), np.uint8)
    run_conv("planes", x, out, isa, **plane_weights(wt, WEIGHT_GRIDS["binary"]), input_planes=2, stride=stride, pad=1,
             **threshold_fields(direction, thresholds), **residual_fields(shortcut, stride, qmax, shift))
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
    fields = dict(plane_weights(wt, WEIGHT_GRIDS["binary"]), lookup_bits=bits, lookup_sums=sums, lookup_tables=tables,
                  lookup_depth=d, input_planes=abits, stride=stride, pad=padding)
    expected = acc
    if fused:
        direction = rng.choice([-1, 1], o).astype(np.int8)
        thresholds = spread_thresholds(rng, acc, 3)
        expected = threshold_reference(acc, direction, thresholds, 0)
        fields.update(threshold_fields(direction, thresholds))
    out = run_conv("lookup", image, np.empty((2, ho, wo, o), np.uint8 if fused else np.int32), isa, **fields)
    assert np.array_equal(out, expected)


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
    out = run_conv("table", image, np.empty((2, ho, wo, o), np.uint8), isa, weights=table, table_entry_bytes=table.itemsize,
                   kernel_h=k, kernel_w=k, out_channels=o, out_channels_padded=fast.padded_channels(o), stride=stride,
                   pad=padding, **threshold_fields(direction, thresholds))
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
    """The kernel pxq_net_add_node chooses for a conv (csrc/steps.c): bit-planes up to 4 plane pairs
    (W2A2 on layers as wide as the build's crossover says excepted), dot products from 5; never for
    weights beyond int8, nor where VPMADDUBSW's int16 pairs would saturate."""
    def kernel(isa, abits, wbits, weights, channels=16):
        lowest = int(min(weights))
        node = Conv(name="c", inputs=("image",), tensors=("weight",), in_channels=channels, out_channels=8, kernel=1,
                    stride=1, padding=0, weight_bits=wbits, weight_lowest=lowest, weight_stride=1,
                    input_range=(0, 2**abits - 1))
        weight = np.resize(np.asarray(weights, np.int32), (8, 1, 1, channels))
        net = clib.Net()
        spec, keep = fast.net_node(node, {"c.weight": weight}, [0])
        net.add_node(spec, isa, 1)
        return fast.KERNELS[net.step_kernel(0)[0]]

    wide = {"portable": None, "avx2": 64, "avx512vpopcntdq": 1, "avx512bitalg": 32,  # measured per build
            "neon": None, "neon-dotprod": None}  # not measured on ARM hardware
    for isa in fast.available_isas():
        assert kernel(isa, 2, 1, [-1, 0]) == "bit-planes"  # W1A2 (grid -1 + u)
        assert kernel(isa, 4, 4, [-8, 7]) == "dot product"  # W4A4
        assert kernel(isa, 4, 8, [-200, 7]) == "bit-planes"  # not int8
        for channels in (16, 64):
            expected = wide[isa] is not None and channels >= wide[isa]
            assert (kernel(isa, 2, 2, [-2, 1], channels) == "dot product") == expected, (isa, channels)
        # 8-bit codes x 8-bit weights: 2 x 255 x 128 > 32767 for VPMADDUBSW; codes past 127 for SDOT
        assert (kernel(isa, 8, 8, [-128, 127]) == "dot product") == (clib.dot_isa(isa) not in ("avx2", "neon-dotprod"))


def test_dot_conv_near_the_int32_limit(isa):
    """8-bit codes at 255 times weights at -128 over 9 x 2048 inputs: 60% of int32, exact (VNNI and
    portable; VPMADDUBSW's int16 pairs would saturate, so the runtime never sends it these)."""
    if clib.dot_isa(isa) == "avx2":
        pytest.skip("VPMADDUBSW takes at most 2 x code x |weight| <= 32767")
    c = 2048
    x = np.full((1, 3, 3, c), 255, np.uint8)
    w = np.full((2, 3, 3, c), -128, np.int32)
    w[1] = 127
    out = run_conv("dot", x, np.empty((1, 1, 1, 2), np.int32), isa, 1, **dot_weights(w), stride=1, pad=0)
    assert out[0, 0, 0].tolist() == [-9 * c * 255 * 128, 9 * c * 255 * 127]


def test_net_runs_its_steps_in_order_and_checks_them():
    """A libpixelq net: each step reads earlier values by number (0: the images), is checked when
    added (inputs that exist and have the types it takes) and when run (shapes), and keeps its own
    copies of the arrays it was given."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (2, 6, 5, 8)).astype(np.uint8)
    weight = rng.integers(-3, 4, (5, 16)).astype(np.int32)
    net = clib.Net()
    with pytest.raises(ValueError, match="input 0 names value 3"):
        net.add("sum_pool", [3], threads=1)
    with pytest.raises(ValueError, match="input 0 has type 0, the op takes 1"):
        net.add("threshold", [0], threshold=dict(direction=np.ones(8, np.int8), thresholds=np.zeros((8, 1), np.int32),
                                                 levels=1, threads=1))
    with pytest.raises(ValueError, match="add_clip needs 0 <= qmin <= qmax <= 255"):
        net.add("add_clip", [0, 0], qmin=0, qmax=300)
    pooled = net.add("max_pool", [0], kernel=2, stride=2)
    shortcut = net.add("subsample_pad", [0], stride=2, extra_channels=8)
    summed = net.add("add_clip", [pooled, pooled], qmin=1, qmax=5, shift=1)
    sums = net.add("sum_pool", [shortcut], threads=2)
    logits = net.add("linear", [sums], weight=weight, rows=5, cols=16)
    original, weight[:] = weight.copy(), 0  # the net holds its own copy
    with pytest.raises(ValueError, match="no value 1 from a finished run"):
        net.value(pooled)
    net.run(x)
    pool = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(1, 2))[:, ::2, ::2].max((-2, -1))
    assert np.array_equal(net.value(pooled), pool)
    assert np.array_equal(net.value(summed), np.clip(2 * pool.astype(int) - 1, 1, 5))
    padded = np.pad(x[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (0, 8)))
    assert np.array_equal(net.value(shortcut), padded)
    assert net.pool_count() == 3 * 3
    assert np.array_equal(net.value(sums), padded.sum((1, 2), dtype=np.int64))
    assert np.array_equal(net.value(logits), padded.sum((1, 2), dtype=np.int64) @ original.T.astype(np.int64))
    with pytest.raises(ValueError, match="images must be uint8"):
        net.run(x.astype(np.int8))
    with pytest.raises(ValueError, match="a 2x2 pool does not fit"):
        net.run(np.ascontiguousarray(x[:, :1]))
