"""Every graph transform, export's and the runtime's, checked by running the reference executor before
and after it: the same outputs on random images, the graph changed as the transform says."""
import copy

import numpy as np
import pytest
import torch

from pixelq import create_model, quantize_model
from pixelq.exporting import lower, lower_plain
from pixelq.integer.transforms import EXPORT_TRANSFORMS, apply, fold_batchnorm, fold_thresholds
from pixelq.runtime import fusion
from pixelq.runtime.reference import run_reference

from conftest import ByHand, trained_like

MODELS = {
    "resnet20-pe": dict(name="resnet20", first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized"),
    "resnet20-int8": dict(name="resnet20", first_layer="int8", wbits=1, abits=2, widths=(32, 64), blocks=(1, 1)),
    "resnet20-r4": dict(name="resnet20", first_layer="pixel-embedding", wbits=1, abits=2, residual_bits=4,
                        widths=(16, 32), blocks=(2, 1)),  # 4-bit residual stream, each block input requantized
    "resnet20-r4s": dict(name="resnet20", first_layer="pixel-embedding", wbits=1, abits=2, residual_bits=4,
                         signed_residual=True, widths=(16, 32), blocks=(2, 1)),  # and each branch's codes signed
    "cnv": dict(name="cnv", first_layer="pixel-embedding", wbits=1, abits=2),
    "by-hand": dict(first_layer="pixel-embedding", wbits=1, abits=2),  # biased conv, hidden linear layer
}
SIZE = {"resnet20-pe": 16, "resnet20-int8": 16, "resnet20-r4": 16, "resnet20-r4s": 16, "cnv": 32, "by-hand": 16}


@pytest.fixture(scope="module")
def plain_graphs():
    graphs = {}
    for key, kwargs in MODELS.items():
        torch.manual_seed(0)
        kwargs = dict(kwargs)
        model = quantize_model(ByHand(), **kwargs) if key == "by-hand" else create_model(kwargs.pop("name"), **kwargs)
        model = trained_like(model, size=SIZE[key])
        graphs[key] = lower_plain(model, (SIZE[key], SIZE[key], 3))
    return graphs


def _same_outputs(before, after, images):
    """Every node `after` keeps computes what it computed before (integers exactly, real values up
    to float64 rounding: folding batch norm reorders the products); the model's output among them."""
    old, new = run_reference(before, images), run_reference(after, images)
    kept = [node.name for node in after.nodes if node.name in old]
    assert before.meta["output"] in kept
    for name in kept:
        if np.issubdtype(old[name].dtype, np.floating):
            assert np.allclose(old[name], new[name], rtol=1e-9, atol=1e-9), name
        else:
            assert np.array_equal(old[name], new[name]), name
    return kept


def _ops(graph):
    return [node.op for node in graph.nodes]


# (transform, the transforms before it, the graph it applies to, what it must have changed)
CASES = [
    (fold_batchnorm, (), "resnet20-pe", lambda b, a: _ops(a).count("affine") < _ops(b).count("affine")),
    (fold_batchnorm, (), "cnv", lambda b, a: _ops(a).count("affine") * 2 == _ops(b).count("affine")),
    (fold_batchnorm, (), "by-hand", lambda b, a: _ops(a).count("affine") < _ops(b).count("affine")),
    (fold_thresholds, (fold_batchnorm,), "resnet20-pe", lambda b, a: "affine" not in _ops(a) and "quantize" not in _ops(a)),
    (fold_thresholds, (fold_batchnorm,), "cnv", lambda b, a: _ops(a).count("threshold") == _ops(b).count("quantize")),
    (fold_thresholds, (fold_batchnorm,), "by-hand", lambda b, a: "affine" not in _ops(a)),
    (fold_thresholds, (fold_batchnorm,), "resnet20-r4",  # the requantizing affine of codes too
     lambda b, a: "affine" not in _ops(a) and _ops(a).count("threshold") == _ops(b).count("quantize")),
    (fusion.requantize_as_lookup, EXPORT_TRANSFORMS, "resnet20-r4",
     lambda b, a: [n.name for n in a.nodes if n.op == "lut"][1:] == [f"stages.{i}.{j}.act_in" for i, j in
                                                                          ((0, 0), (0, 1), (1, 0))]),
    (fusion.requantize_as_lookup, EXPORT_TRANSFORMS, "resnet20-pe", lambda b, a: a.nodes == b.nodes),  # none there
    (fusion.unsign_residual_branch, (*EXPORT_TRANSFORMS, fusion.requantize_as_lookup), "resnet20-r4s",
     lambda b, a: [(n.qmin, n.qmax) for n in b.nodes if n.name.endswith("res_act")] == [(-15, 15)] * 3
     and [(n.qmin, n.qmax) for n in a.nodes if n.name.endswith("res_act.unsigned")] == [(0, 30)] * 3
     and [n.shift for n in a.nodes if n.op == "add_clip"] == [15] * 3),
    (fusion.unsign_residual_branch, EXPORT_TRANSFORMS, "resnet20-r4", lambda b, a: a.nodes == b.nodes),  # unsigned
    (fusion.fuse_lookup, (*EXPORT_TRANSFORMS, fusion.requantize_as_lookup), "resnet20-r4",  # the image's lookup only
     lambda b, a: _ops(a).count("lut") == _ops(b).count("lut") - 1 and a.node("stages.0.0.act_in").op == "lut"),
    (fusion.fuse_lookup, EXPORT_TRANSFORMS, "resnet20-pe", lambda b, a: "lut" not in _ops(a) and "fused_conv" in _ops(a)),
    (fusion.fuse_lookup, EXPORT_TRANSFORMS, "resnet20-int8", lambda b, a: "lut" not in _ops(a)),  # signed: pads with 128
    (fusion.fuse_threshold, EXPORT_TRANSFORMS, "resnet20-pe", lambda b, a: "threshold" not in _ops(a)),
    (fusion.fuse_threshold, EXPORT_TRANSFORMS, "cnv", lambda b, a: "threshold" not in _ops(a) and "max_pool" in _ops(a)),
    (fusion.fuse_residual_add, (*EXPORT_TRANSFORMS, fusion.fuse_threshold), "resnet20-pe",
     lambda b, a: "add_clip" not in _ops(a) and "subsample_pad" not in _ops(a)),
    (fusion.fuse_residual_add, (*EXPORT_TRANSFORMS, fusion.requantize_as_lookup, fusion.fuse_threshold), "resnet20-r4",
     lambda b, a: "add_clip" not in _ops(a) and a.node("stages.1.0.act_out").residual_qmax == 15),
    (fusion.fuse_residual_add, (*EXPORT_TRANSFORMS, fusion.requantize_as_lookup, fusion.unsign_residual_branch,
                                fusion.fuse_threshold), "resnet20-r4s",
     lambda b, a: "add_clip" not in _ops(a) and a.node("stages.1.0.act_out").residual_shift == 15),
    (fusion.mark_table_sums, (*EXPORT_TRANSFORMS, fusion.fuse_lookup, fusion.fuse_threshold), "resnet20-pe",
     lambda b, a: a.node("stem.act").table_sums is True and not getattr(b.node("stem.act"), "table_sums", False)),
    (fusion.mark_table_sums, (*EXPORT_TRANSFORMS, fusion.fuse_lookup), "resnet20-pe",  # no thresholds: no table
     lambda b, a: a.nodes == b.nodes),
    (fusion.shift_signed_inputs, (*EXPORT_TRANSFORMS, *fusion.FUSIONS), "resnet20-int8",
     lambda b, a: a.node("stem.act").input_shift == 128 and a.node("stem.act").input_range == (0, 255)),
    (fusion.shift_signed_inputs, EXPORT_TRANSFORMS, "resnet20-int8",  # unfused: the offset comes off the accumulators
     lambda b, a: "stem.conv.offset" in a.tensors),
]


@pytest.mark.parametrize("transform, before, key, changed", CASES,
                         ids=[f"{c[0].__name__}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_transform_keeps_every_output(plain_graphs, transform, before, key, changed):
    graph = apply(plain_graphs[key], before)
    kept = copy.deepcopy(graph.nodes), {k: v.copy() for k, v in graph.tensors.items()}
    after = transform(graph)
    assert changed(graph, after)
    assert graph.nodes == kept[0] and all(np.array_equal(graph.tensors[k], v) for k, v in kept[1].items())  # untouched
    assert {n.tensor_name(k) for n in after.nodes for k in n.tensors} == set(after.tensors)
    images = np.random.default_rng(1).integers(0, 256, (6, SIZE[key], SIZE[key], 3), dtype=np.uint8)
    _same_outputs(graph, after, images)


def test_int8_first_conv_is_shifted_only_where_no_table_holds_it(plain_graphs):
    """A signed lookup conv that the plan runs as table sums keeps its codes signed; one too wide for
    the tables (32 channels) is shifted, and not marked."""
    narrow = apply(copy.deepcopy(plain_graphs["resnet20-int8"]), EXPORT_TRANSFORMS)
    wide = fusion.plan(narrow).node("stem.act")  # 32 channels: no table
    assert wide.input_shift == 128 and not wide.table_sums
    torch.manual_seed(0)
    model = trained_like(create_model("resnet20", first_layer="int8", wbits=1, abits=2))
    planned = fusion.plan(lower(model))
    stem = planned.node("stem.act")
    assert not stem.input_shift and stem.table_sums is True


def test_lower_is_the_plain_graph_through_the_export_transforms(plain_graphs):
    torch.manual_seed(0)
    kwargs = dict(MODELS["cnv"])
    model = trained_like(create_model(kwargs.pop("name"), **kwargs), size=32)
    folded = lower(model, (32, 32, 3))
    assert _ops(folded) == _ops(apply(plain_graphs["cnv"], EXPORT_TRANSFORMS))
    assert {"affine", "quantize"}.isdisjoint(_ops(folded))
    assert all(folded.meta["bn_of"][n.name] for n in folded.nodes if n.op == "threshold")
