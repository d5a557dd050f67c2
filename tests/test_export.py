"""Lowering to integers: each piece against its formula, and the whole graph against PyTorch."""
import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelq import create_model
from pixelq.errors import ConfigError, ExportError
from pixelq.exporting import lower
from pixelq.exporting.integers import freeze_input_table, weight_code_grid, weight_integers
from pixelq.integer import pack_bits, unpack_bits
from pixelq.integer.transforms import fold_batchnorm_into_thresholds
from pixelq.nn import Int8Input, NaiveInput, PixelEmbedding, ThermometerInput
from pixelq.quant import make_quantizer
from pixelq.runtime import Runtime
from pixelq.runtime.reference import run_reference
from pixelq.exporting.verify import label_agreement, layer_agreement

from conftest import ByHand, trained_like

WEIGHT_SPECS = ["binary", "binary:channel", "ternary", "ternary:channel", "pruned_ternary:0.6", "pruned_ternary:0.3:channel",
                "dorefa:1", "dorefa:2", "dorefa:4", "grid:2", "grid:4:tensor", "grid:8:zero",
                "lsq:2", "lsq:3", "lsq:8"]


@pytest.mark.parametrize("spec", WEIGHT_SPECS)
def test_weight_integers_times_scale_is_the_quantized_weight(spec):
    q = make_quantizer(spec).train()
    w = torch.randn(8, 5, 3, 3)
    expected = q(w).detach()  # also initialises an LSQ step
    codes, scale = weight_integers(q, w)
    assert codes.dtype == np.int32 and scale.shape == (8,)
    assert np.allclose(codes * scale[:, None, None, None], expected.numpy(), atol=1e-6)
    lowest, stride, bits = weight_code_grid(q)
    u = (codes - lowest) / stride
    assert np.all(u == np.round(u)) and u.min() >= 0 and u.max() < 2**bits


@given(st.integers(1, 8), st.integers(0, 300), st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_pack_unpack_round_trip(bits, count, seed):
    v = np.random.default_rng(seed).integers(0, 2**bits, count)
    packed = pack_bits(v, bits)
    assert packed.dtype == np.uint8 and len(packed) == (count * bits + 7) // 8
    assert np.array_equal(unpack_bits(packed, bits, count), v)


def test_pack_rejects_values_too_wide():
    with pytest.raises(ExportError, match="does not fit"):
        pack_bits(np.array([4]), 2)


@given(st.integers(0, 10_000), st.sampled_from([(0, 1), (0, 3), (0, 7), (-2, 1), (0, 255)]))
@settings(max_examples=60, deadline=None)
def test_thresholds_equal_round_clip_of_the_affine(seed, qrange):
    """code = clip(round((a A + b) / step)) for every integer A, any sign of a (zero included)."""
    rng = np.random.default_rng(seed)
    qmin, qmax = qrange
    channels = 12
    a = rng.normal(0, 0.05, channels)
    a[:2] = [0.0, -abs(a[2])]
    b = rng.normal(0, 1.0, channels)
    step = float(rng.uniform(0.1, 1.0))
    direction, thresholds = fold_batchnorm_into_thresholds(a, b, step, qmin, qmax)
    acc = rng.integers(-200, 200, (500, channels))
    codes = qmin + (acc[..., None] * direction[:, None] >= thresholds).sum(-1)
    exact = (a * acc + b) / step
    expected = np.clip(np.floor(exact + 0.5), qmin, qmax)  # round half up: ties are measure-zero here
    tie = np.abs(exact - np.round(exact) - 0.5) < 1e-9
    assert np.array_equal(codes[~tie], expected[~tie])


@pytest.mark.parametrize("encoder", [
    PixelEmbedding(3, d=4, bits=2, init="uniform"),
    PixelEmbedding(3, d=3, bits=1, shared=False, init="uniform"),
    NaiveInput(3, bits=3),
    ThermometerInput(3, d=5),
    Int8Input(3),
], ids=lambda e: type(e).__name__)
def test_input_table_reproduces_the_encoder(encoder):
    lut, step, qmin, qmax = freeze_input_table(encoder, 3)
    x = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8)
    expected = encoder(x).detach().numpy() / step
    got = run_reference_lut(lut, x)
    assert np.array_equal(got, np.round(expected)) and np.allclose(got, expected, atol=1e-5)
    assert lut.min() >= qmin and lut.max() <= qmax
    if isinstance(encoder, PixelEmbedding) and encoder.shared:
        assert lut.shape[0] == 1


def run_reference_lut(lut, x):
    from pixelq.integer.reference import lut_reference

    return lut_reference(x.permute(0, 2, 3, 1).numpy(), lut).transpose(0, 3, 1, 2)


def torch_logits(model, x):
    with torch.no_grad():
        return model(x).double().numpy()


@pytest.mark.parametrize("name, kwargs", [
    ("resnet20", dict(first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized")),
    ("resnet20", dict(first_layer="pixel-embedding", first_layer_kwargs={"shared": False, "d": 4, "bits": 1},
                      wbits=2, abits=3, last_layer="quantized")),
    ("resnet20", dict(first_layer="thermometer", wbits=1, abits=2, last_layer="float",
                      overrides={"stages.1.*.conv2": "ternary:channel", "stages.2.0.conv1": "dorefa:3"})),
    ("resnet18", dict(first_layer="naive", wbits=1, abits=2, last_layer="quantized")),
    ("resnet20", dict(first_layer="int8", wbits=2, abits=2, last_layer="quantized",
                      overrides={"stages.*.conv*": "pruned_ternary:0.6:channel", "fc": "pruned_ternary:0.5"})),
    ("resnet20", dict(first_layer="int8", wbits=2, abits=4, last_layer="float",
                      overrides={"stem.conv": "grid:8:zero", "stages.0.*.conv*": "grid:3", "stages.2.*.conv*": "grid:4:tensor"})),
])
def test_integer_graph_matches_fake_quant_model_layer_by_layer(name, kwargs):
    torch.manual_seed(1)
    model = trained_like(create_model(name, **kwargs))
    graph = lower(model)
    x = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    runtime = Runtime(graph, backend="reference")
    for layer, counts in layer_agreement(model, runtime, x.numpy()).items():
        assert counts["differ"] == counts["ties"], f"{layer}: {counts}"
    values = run_reference(graph, x.numpy())
    logits = torch_logits(model, x)
    if graph.meta["integer_only"]:
        scale = np.asarray(graph.meta["logit_scale"]) / values["pool.count"]
        assert np.allclose(values["fc"] * scale, logits, rtol=1e-4, atol=1e-5)
    else:
        assert np.allclose(values["fc"], logits, rtol=1e-4, atol=1e-4)
    assert label_agreement(model, runtime, x.numpy())["differ_unexplained"] == 0


def test_layer_agreement_notices_a_wrong_threshold():
    """The check itself can fail: shift one channel's thresholds and the codes it makes differ."""
    torch.manual_seed(2)
    model = trained_like(create_model("resnet20", first_layer="pixel-embedding", wbits=1, abits=2))
    graph = lower(model)
    graph.tensors["stages.0.0.act1.thresholds"][3] -= 50
    x = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8).numpy()
    report = layer_agreement(model, Runtime(graph, backend="reference"), x)
    assert report["stages.0.0.act1"]["differ"] > report["stages.0.0.act1"]["ties"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(first_layer="float", wbits=1, abits=2), "FloatInput has no integer form"),
    (dict(first_layer="naive", wbits=1, abits=2, overrides={"stages.0.0.conv1": None}), "has float weights"),
    (dict(first_layer="bitplane", wbits=1, abits=2), "no integer form"),
    (dict(first_layer="pixel-embedding", wbits=1, abits=32), "float activation"),
    (dict(first_layer="pixel-embedding", wbits=1, abits=2, overrides={"stages.0.0.res_act": "mid_tread:3"}),
     "one activation grid"),
])
def test_unsupported_models_raise_export_error(kwargs, message):
    with pytest.raises(ExportError, match=message):
        lower(create_model("resnet20", **kwargs).eval())


def test_a_signed_residual_branch_adds_to_unsigned_shortcut_codes():
    """A float ResNet adds negative residuals: a signed res_act on the output's step exports, and the
    integer runtime (reference and C) keeps PyTorch's codes layer by layer."""
    from pixelq.quant import LSQ

    torch.manual_seed(2)
    model = create_model("resnet20", first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized")
    step = model.stages[0][0].act_out.step
    for stage in model.stages:
        for block in stage:
            signed = LSQ(3, signed=True)
            signed.step.data.fill_(step)
            signed.initialized.fill_(True)
            block.res_act = signed  # codes -4..3 on the same step as the unsigned 0..3 shortcut
    model = trained_like(model)
    graph = lower(model)
    assert graph.node("stages.0.0.res_act").qmin == -4
    x = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    for backend in ("reference", "c") if fast_available() else ("reference",):
        report = layer_agreement(model, Runtime(graph, backend=backend), x.numpy())
        for layer, counts in report.items():
            assert counts["differ"] == counts["ties"], f"{backend} {layer}: {counts}"
    bad = create_model("resnet20", first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized")
    bad.stages[0][0].res_act = LSQ(3, signed=True)  # its own step (1.0): not the output's grid
    with pytest.raises(ExportError, match="one step"):
        lower(trained_like(bad))


@pytest.mark.parametrize("name, kwargs", [
    ("resnet20", dict(first_layer="pixel-embedding", first_layer_kwargs={"d": 4}, wbits=1, abits=2,
                      last_layer="quantized", residual_bits=4)),
    ("resnet18", dict(first_layer="naive", wbits=1, abits=2, last_layer="float", residual_bits=8,
                      widths=(16, 16, 32, 32))),
])
def test_a_residual_stream_wider_than_the_conv_inputs_deploys_layer_by_layer(name, kwargs):
    """residual_bits above abits: the block input requantized for the convs is a threshold node on
    codes, the adds carry the wider codes, and the runtime (reference and C) keeps PyTorch's codes."""
    torch.manual_seed(4)
    model = trained_like(create_model(name, **kwargs))
    graph = lower(model)
    wide, narrow = 2 ** kwargs["residual_bits"] - 1, 3
    requantize = graph.node("stages.0.0.act_in")
    assert requantize.op == "threshold" and requantize.qmax == narrow
    assert graph.node(requantize.inputs[0]).qmax == wide  # the stem's codes
    assert graph.node("stages.1.1.act_out").op == "add_clip" and graph.node("stages.1.1.act_out").qmax == wide
    assert graph.node("stages.1.1.act1").qmax == narrow
    assert_runtimes_keep_pytorchs_codes(model, graph, "stages.0.0.act_in")
    if fast_available():  # what `pixelq inspect` shows: the plan's byte lookup, not the file's threshold
        from pixelq.runtime.fast import FastExecutor

        assert FastExecutor(graph).kernels()["stages.0.0.act_in"] == "byte lookup"


@pytest.mark.parametrize("residual_bits, fused", [(2, True), (4, True), (7, True), (8, False)])
def test_a_signed_residual_branch_deploys_layer_by_layer_and_fuses(residual_bits, fused):
    """signed_residual: each block's res_act is a threshold of signed codes (-n .. n) that the add
    clips onto the stream's unsigned ones. The reference and C runtimes keep PyTorch's codes layer
    by layer, and where the stream plus the branch's shift fit a byte (up to 7 bits) the fast plan
    leaves no add of its own: the branch's codes count from 0 and the fused conv takes n off after
    adding the shortcut (fusion.unsign_residual_branch); an 8-bit stream runs the add on its own."""
    torch.manual_seed(5)
    model = trained_like(create_model("resnet20", first_layer="pixel-embedding", wbits=1, abits=2,
                                      last_layer="quantized", residual_bits=residual_bits, signed_residual=True))
    graph = lower(model)
    n = 2**residual_bits - 1
    branch = graph.node("stages.1.0.res_act")
    assert (branch.op, branch.qmin, branch.qmax) == ("threshold", -n, n)
    assert graph.node("stages.1.0.act_out").qmin == 0
    assert_runtimes_keep_pytorchs_codes(model, graph, "stages.1.0.res_act")
    if fast_available():
        from pixelq.runtime.fast import FastExecutor

        plan = FastExecutor(graph).plan
        assert ("add_clip" not in [node.op for node in plan.nodes]) == fused
        if fused:
            assert plan.node("stages.1.0.act_out").residual_shift == n
    with pytest.raises(ConfigError, match="signed_residual"):
        create_model("resnet20", signed_residual=True)  # a float network's branch is signed already
    with pytest.raises(ConfigError, match="signed_residual"):
        create_model("cnv", wbits=1, abits=2, signed_residual=True)


@pytest.mark.parametrize("residual_bits", [None, 4])
def test_input_offsets_fold_into_the_block_inputs_thresholds(residual_bits):
    """input_offsets: each block's learned offsets (non-zero here) move the thresholds of its act_in,
    which the export folds into one threshold node on the stream's codes (no node of their own), and
    the reference and C runtimes keep PyTorch's codes layer by layer; with the offsets at 0 the
    thresholds are those of the plain requantization."""
    torch.manual_seed(6)
    kwargs = dict(first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized",
                  residual_bits=residual_bits, signed_residual=residual_bits is not None, input_offsets=True)
    model = create_model("resnet20", **kwargs)
    offsets = [m.offset_in.bias for stage in model.stages for m in stage]
    assert len(offsets) == 9 and all(not b.detach().any() for b in offsets)
    at_zero = lower(trained_like(model)).tensors["stages.1.2.act_in.thresholds"].copy()
    with torch.no_grad():
        for b in offsets:
            b.uniform_(-0.6, 0.6)
    model = trained_like(model)
    graph = lower(model)
    assert not [n for n in graph.nodes if "offset" in n.name]
    moved = graph.node("stages.1.2.act_in")
    assert moved.op == "threshold" and not np.array_equal(graph.tensors["stages.1.2.act_in.thresholds"], at_zero)
    assert_runtimes_keep_pytorchs_codes(model, graph, "stages.1.2.act_in")
    with pytest.raises(ConfigError, match="input_offsets"):
        create_model("resnet20", input_offsets=True)  # a float network has no input quantizer to move


def test_residual_bits_below_abits_or_on_a_model_without_residuals_is_refused():
    with pytest.raises(ConfigError, match="residual_bits must be at least abits"):
        create_model("resnet20", wbits=1, abits=4, residual_bits=2)
    with pytest.raises(ConfigError, match=r"residual_bits must be 1..8 or 32 \(float\), got 9"):
        create_model("resnet20", wbits=1, abits=2, residual_bits=9)
    with pytest.raises(ConfigError, match="float only when abits is"):
        create_model("resnet20", wbits=1, abits=2, residual_bits=32)
    with pytest.raises(ConfigError, match="residual_bits"):
        create_model("cnv", wbits=1, abits=2, residual_bits=4)


def fast_available():
    from pixelq.runtime.fast import kernels_available

    return kernels_available()


def assert_runtimes_keep_pytorchs_codes(model, graph, compared: str) -> None:
    """On random 16x16 images, the reference and (where built) C runtimes keep PyTorch's codes at
    every layer, `compared` among them, bar float ties, and its labels bar integer-logit ties."""
    x = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8).numpy()
    for backend in ("reference", "c") if fast_available() else ("reference",):
        runtime = Runtime(graph, backend=backend)
        report = layer_agreement(model, runtime, x)
        assert compared in report
        for layer, counts in report.items():
            assert counts["differ"] == counts["ties"], f"{backend} {layer}: {counts}"
        assert label_agreement(model, runtime, x)["differ_unexplained"] == 0


# ---- Models beyond ResNet: traced, lowered op by op, run by the runtime with PyTorch's labels ----

def _deploys(model, image_shape, n=8, tmp_path=None):
    """Export `model` for images of `image_shape`, run the runtime (C kernels where built) on random
    images: labels as PyTorch's (bar integer-logit ties) and every layer's codes as its codes up to
    the first layer where any differ, all of those at float ties (a code that differs at a tie
    then changes what the layers after it see, so they are not compared)."""
    import pixelq
    from pixelq.runtime import load

    path = tmp_path / "model.pxq"
    graph = pixelq.export(model, path, image_shape=image_shape)
    runtime = load(path)
    x = np.random.default_rng(0).integers(0, 256, (n, *image_shape), dtype=np.uint8)
    assert label_agreement(model, runtime, x)["differ_unexplained"] == 0
    report = layer_agreement(model, runtime, x[:2])
    first = next((report[n.name] for n in graph.nodes if report.get(n.name, {}).get("differ")), None)
    assert first is None or first["differ"] == first["ties"], first
    return graph


def test_cnv_exports_and_runs_with_pytorchs_labels(tmp_path):
    torch.manual_seed(3)
    model = trained_like(create_model("cnv", first_layer="pixel-embedding", first_layer_kwargs={"d": 4}, wbits=1,
                                      abits=2), size=32)
    graph = _deploys(model, (32, 32, 3), tmp_path=tmp_path)
    ops = [n.op for n in graph.nodes]
    assert ops.count("max_pool") == 2 and ops.count("conv") == 8 and ops[-2:] == ["sum_pool", "linear"]
    assert graph.node("classifier.0").kernel == 1  # the hidden linear layers run as 1x1 convs
    with pytest.raises(ExportError, match="needs the image size"):
        lower(model)


def test_resnet18_exports_at_64_pixels(tmp_path):
    torch.manual_seed(4)
    model = trained_like(create_model("resnet18", first_layer="pixel-embedding", wbits=1, abits=2,
                                      last_layer="quantized"), size=64)
    graph = _deploys(model, (64, 64, 3), n=4, tmp_path=tmp_path)
    assert graph.node("stages.1.0.shortcut_conv").kernel == 1


@pytest.mark.parametrize("last_layer", ["quantized", "float"])
def test_a_model_written_by_hand_deploys_through_quantize_model(tmp_path, last_layer):
    from pixelq import quantize_model

    torch.manual_seed(5)
    twin = trained_like(quantize_model(ByHand(), first_layer="pixel-embedding", first_layer_kwargs={"d": 4},
                                       wbits=1, abits=2, last_layer=last_layer), size=16)
    graph = _deploys(twin, (16, 16, 3), n=16, tmp_path=tmp_path)
    assert [n.op for n in graph.nodes][:4] == ["lut", "conv", "threshold", "max_pool"]
    assert graph.node("body.fc1").kernel == 8  # pooling + hidden linear: one conv over the 8x8 map
    assert graph.meta["integer_only"] == (last_layer == "quantized")


class _Separable(torch.nn.Module):
    """Depthwise-separable and grouped convs: a depthwise 3x3 (stride 2), a pointwise 1x1, a 3x3 in 4 groups."""

    def __init__(self):
        super().__init__()
        nn = torch.nn

        def block(i, o, k, s=1, groups=1):
            return [nn.Conv2d(i, o, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(*block(3, 16, 3), *block(16, 16, 3, 2, groups=16), *block(16, 32, 1),
                                      *block(32, 32, 3, groups=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x):
        return self.features(x)


def test_depthwise_and_grouped_convs_deploy(tmp_path):
    """Grouped convs export (weights (O, k, k, I / groups)), run on the runtime (libpixelq: dot products
    of the block-diagonal weight, on every instruction set) with PyTorch's labels and codes, and in
    both ONNX forms with the runtime's labels."""
    ort = pytest.importorskip("onnxruntime")
    from pixelq import quantize_model
    from pixelq.exporting import lower_plain
    from pixelq.exporting.onnx import to_onnx
    from pixelq.exporting.qdq import to_qdq

    torch.manual_seed(8)
    twin = trained_like(quantize_model(_Separable(), first_layer="pixel-embedding", wbits=1, abits=2,
                                       last_layer="quantized"), size=16)
    graph = _deploys(twin, (16, 16, 3), n=16, tmp_path=tmp_path)
    groups = {n.name: n.groups for n in graph.nodes if n.op == "conv"}
    assert sorted(groups.values()) == [1, 1, 4, 16]
    assert graph.node("body.features.3").groups == 16 and graph.tensors["body.features.3.weight"].shape == (16, 3, 3, 1)
    if fast_available():
        from pixelq.runtime import clib
        from pixelq.runtime.fast import FastExecutor
        from pixelq.runtime.reference import run_reference

        x = np.random.default_rng(3).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
        reference = run_reference(graph, x)
        for isa in clib.isas():
            executor = FastExecutor(graph, isa=isa, fuse=False)
            assert executor.kernels()["body.features.3"].startswith("dot product"), isa
            values = executor.run(x)
            for name in ("body.features.3", "body.features.9"):
                assert np.array_equal(values[name], reference[name]), (isa, name)
    x = np.random.default_rng(2).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    labels = Runtime(graph, backend="reference").predict(x)
    for proto in (to_onnx(graph), to_qdq(lower_plain(twin, (16, 16, 3)))):
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        assert (session.run(None, {"image": x})[0].argmax(1) == labels).mean() >= 0.9


def test_unsupported_ops_name_the_op_and_the_module():
    from pixelq import quantize_model

    gated = ByHand()
    gated.relu2 = torch.nn.Sigmoid()  # quantize_model leaves it float
    with pytest.raises(ExportError, match=r"Sigmoid in body.relu2 has no integer form"):
        lower(quantize_model(gated, wbits=1, abits=2).eval(), image_shape=(16, 16, 3))
    with pytest.raises(ExportError, match=r"does not run on uint8 images of shape \(1, 1, 3\)"):
        lower(quantize_model(ByHand(), wbits=1, abits=2).eval(), image_shape=(1, 1, 3))
    dilated = ByHand()
    dilated.conv2 = torch.nn.Conv2d(16, 32, 3, padding=2, dilation=2)
    with pytest.raises(ExportError, match=r"QuantConv2d in body.conv2 has no integer form: dilated"):
        lower(quantize_model(dilated, wbits=1, abits=2).eval(), image_shape=(16, 16, 3))


@pytest.mark.parametrize("name, kwargs, size, exact, rare", [
    ("resnet20", dict(first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized"), 16, 0.5, 1e-3),
    # 15 levels in each res_act: five times the boundaries for the rounded bias to miss
    ("resnet20", dict(first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized", residual_bits=4), 16,
     0.15, 1e-3),
    # 30 levels in each signed res_act (codes -15 .. 15, shifted by the zero point 15): twice those
    ("resnet20", dict(first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized", residual_bits=4,
                      signed_residual=True), 16, 0.15, 2e-3),
    ("resnet20", dict(first_layer="int8", wbits=2, abits=2, last_layer="float"), 16, 0.5, 1e-3),
    ("cnv", dict(first_layer="pixel-embedding", first_layer_kwargs={"d": 4}, wbits=1, abits=2), 32, 0.5, 1e-3),
])
def test_qdq_export_runs_on_onnx_runtimes_int8_kernels(name, kwargs, size, exact, rare, tmp_path):
    """QDQ ONNX: ONNX Runtime fuses every conv into QLinearConv (and the residual
    adds into QLinearAdd); every layer's codes are the reference executor's on the plain graph
    (compared until the first that differs, which must be rare and past the `exact` fraction of the
    layers: the bias is rounded to 1/254 of an accumulator unit; at most a `rare` fraction of that
    layer's codes differ), and the labels PyTorch's."""
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from pixelq.exporting import lower_plain
    from pixelq.exporting.qdq import to_qdq

    torch.manual_seed(6)
    model = trained_like(create_model(name, **kwargs), size=size)
    plain = lower_plain(model, image_shape=(size, size, 3))
    proto = to_qdq(plain)
    layers = [n.name for n in plain.nodes if n.op in ("quantize", "add_clip")]
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UINT8, None) for n in layers)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    convs = sum(n.op == "conv" for n in plain.nodes)
    assert fused.count("QLinearConv") == convs and "Conv" not in fused  # signed codes too (zero point 128)
    assert fused.count("QLinearAdd") == sum(n.op == "add_clip" for n in plain.nodes)
    x = np.random.default_rng(1).integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    logits, *codes = session.run(None, {"image": x})
    reference = run_reference(plain, x)
    zero = {n.name: max(0, -n.qmin) for n in plain.nodes if n.name in layers}  # signed codes travel shifted
    differ = [float((c.astype(np.int64) - zero[n] != reference[n].transpose(0, 3, 1, 2)).mean())
              for n, c in zip(layers, codes)]
    first = next((i for i, d in enumerate(differ) if d > 0), len(differ))  # later layers see what it changed
    assert first > exact * len(layers) and (first == len(differ) or differ[first] <= rare), list(zip(layers, differ))[max(first - 1, 0):first + 3]
    with torch.no_grad():
        expected = model(torch.as_tensor(x)).argmax(1).numpy()
    assert (logits.argmax(1) == expected).mean() >= 0.95


@pytest.mark.parametrize("name, kwargs, size", [
    ("resnet20", dict(first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized"), 16),
    ("resnet20", dict(first_layer="int8", wbits=2, abits=2, last_layer="float"), 16),
    ("resnet20", dict(first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized", residual_bits=4), 16),
    ("resnet20", dict(first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized", signed_residual=True), 16),
    ("resnet18", dict(first_layer="pixel-embedding", first_layer_kwargs={"shared": False}, wbits=1, abits=2), 16),
    ("cnv", dict(first_layer="pixel-embedding", first_layer_kwargs={"d": 4}, wbits=1, abits=2), 32),
])
def test_onnx_export_computes_what_the_integer_runtime_does(name, kwargs, size):
    """The integer graph in standard ONNX ops, run by ONNX Runtime: the runtime's logits (to float32
    rounding) and labels, for per-colour and shared tables, float and integer last layers."""
    ort = pytest.importorskip("onnxruntime")
    from pixelq.exporting.onnx import to_onnx

    torch.manual_seed(6)
    model = trained_like(create_model(name, **kwargs), size=size)
    graph = lower(model, image_shape=(size, size, 3))
    session = ort.InferenceSession(to_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).integers(0, 256, (6, size, size, 3), dtype=np.uint8)
    logits = session.run(None, {"image": x})[0]
    runtime = Runtime(graph, backend="reference")
    np.testing.assert_allclose(logits, runtime.float_logits(x), rtol=1e-5, atol=1e-6)
    assert np.array_equal(logits.argmax(1), runtime.predict(x))


@pytest.mark.parametrize("name, kwargs, size", [
    ("resnet20", dict(first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized"), 32),
    ("resnet20", dict(first_layer="int8", wbits=2, abits=2, last_layer="float"), 32),
    ("resnet20", dict(first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized", residual_bits=4), 32),
    ("resnet20", dict(first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized", residual_bits=4,
                      signed_residual=True), 32),
    ("cnv", dict(first_layer="pixel-embedding", first_layer_kwargs={"d": 4}, wbits=1, abits=2), 32),
])
def test_qonnx_export_runs_in_qonnx_with_pytorchs_labels(name, kwargs, size):
    """The QONNX form (BipolarQuant / Quant weights, MultiThreshold activations, the lookup as a
    Gather), executed by the qonnx package as exported - batch 1, every tensor's shape in the file,
    the image typed UINT8, as FINN expects - on real test images: the runtime's logits, and
    PyTorch's labels bar integer-logit ties."""
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    import pixelq
    from pixelq.exporting.onnx import to_onnx

    torch.manual_seed(7)
    model = trained_like(create_model(name, **kwargs), size=size)
    graph = lower(model, image_shape=(size, size, 3))
    graph.meta["image_shape"] = [size, size, 3]  # what `export` records
    x = pixelq.load_dataset().test.images[:6]  # real CIFAR-10 images
    wrapper = ModelWrapper(to_onnx(graph, qonnx=True))
    ops = {n.op_type for n in wrapper.graph.node}
    assert {"MultiThreshold", "Gather"} <= ops and ops & {"BipolarQuant", "Quant"}
    assert wrapper.get_tensor_shape("image") == [1, size, size, 3] and str(wrapper.get_tensor_datatype("image")) == "UINT8"
    logits = np.concatenate([execute_onnx(wrapper, {"image": x[i:i + 1]})["logits"] for i in range(len(x))])
    runtime = Runtime(graph, backend="reference")
    np.testing.assert_allclose(logits, runtime.float_logits(x), rtol=1e-5, atol=1e-6)
    assert label_agreement(model, runtime, x)["differ_unexplained"] == 0
    assert np.array_equal(logits.argmax(1), runtime.predict(x))


def test_onnx_writers_refuse_what_they_cannot_write(tmp_path):
    """An unknown ONNX form, and codes wider than the byte QDQ holds them in, are ExportErrors."""
    pytest.importorskip("onnx")
    from pixelq.exporting import lower_plain
    from pixelq.exporting.onnx import save_onnx
    from pixelq.exporting.qdq import to_qdq

    torch.manual_seed(9)
    model = trained_like(create_model("resnet20", first_layer="pixel-embedding", wbits=1, abits=2), size=16)
    plain = lower_plain(model, image_shape=(16, 16, 3))
    with pytest.raises(ExportError, match="unknown ONNX form 'onnx-qdq'"):
        save_onnx(plain, tmp_path / "m.onnx", "onnx-qdq")
    assert not (tmp_path / "m.onnx").exists()
    i, wide = next((i, n) for i, n in enumerate(plain.nodes) if n.op == "quantize")
    plain.nodes[i] = dataclasses.replace(wide, qmin=-200, qmax=100)
    with pytest.raises(ExportError, match=f"{wide.name}: codes -200..100 span more than a byte"):
        to_qdq(plain)


def test_every_registered_op_has_all_its_parts():
    """An op is one class in pixelq.integer.ops, its nodes its instances: each registered op is a
    frozen dataclass whose attributes are typed fields with rules, states its tensors and how each is
    stored, checks its nodes, gives its output shape and MACs, and has a reference computation of its
    own; every op an exported file's graph holds writes its integer ONNX form itself (the plan's
    fused_conv and the plain graph's affine and quantize have none) and every op of the plain graph
    its QDQ form (the thresholds and the plan's fused_conv have none); a node goes to a file's entry
    and back unchanged, and an entry with a key its op does not have is refused."""
    import inspect

    from pixelq.integer.ops import OPS, RULES, Node, node_from_dict

    for name, cls in OPS.items():
        assert cls.op == name and issubclass(cls, Node) and dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen, name
        assert cls.reference is not Node.reference, name  # fused_conv too: the runtime's plan, in the file
        assert (cls.onnx is Node.onnx) == (name in ("fused_conv", "affine", "quantize")), name
        assert (cls.qdq is Node.qdq) == (name in ("fused_conv", "threshold")), name  # QDQ: the plain graph
        assert all(f.metadata["rule"] in RULES for f in cls.attributes().values())
        assert cls.output_shape is not Node.output_shape, name
        values = {"weight_lowest": -1, "weight_stride": 2, "weight_bits": 1, "qmin": 0, "qmax": 3,
                  "lut_range": (0, 3), "input_range": (0, 3), "conv_name": "c", "step": 0.5}
        attrs = {k: values.get(k, 1) for k, f in cls.attributes().items() if f.default is dataclasses.MISSING}
        node = cls(name="n", inputs=("image",) * cls.INPUTS, tensors=(), **attrs,
                   **({k: values[k] for k in ("lut_range", "qmin", "qmax", "step") if name == "fused_conv"}))
        for key in cls.TENSORS:
            enc = node.encoding(key)
            assert enc["packed"] or np.dtype(enc["dtype"]), (name, key)
            if key in cls.stored:  # what the op stores raw is never packed as if it were weights
                assert enc == {"packed": False, "dtype": cls.stored[key]}, (name, key)
        assert node_from_dict(node.to_dict()) == node, name
        with pytest.raises(ValueError, match="has no attribute strides"):
            node_from_dict({**node.to_dict(), "strides": 2})
        assert inspect.signature(cls.macs).parameters.keys() == {"self", "in_shape", "out_shape", "tensors"}
