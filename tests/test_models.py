"""Models: the registry, shapes, layouts, gradients, precision overrides."""
import json

import pytest
import torch

from pixelq import ConfigError, InputError, create_model, list_models
from pixelq.models import FLOAT_ONLY, layer_bits, model_size_bytes
from pixelq.nn import ENCODERS, QuantConv2d
from pixelq.quant import MidTreadHalf

SMALL = {"resnet20": {}, "resnet18": {}}


MIN_SIZE = {"cnv": 32, "airbench94": 16}  # unpadded convs; three max-pools
QUANTIZABLE = [name for name in list_models() if name not in FLOAT_ONLY]


@pytest.mark.parametrize("name", QUANTIZABLE)
@pytest.mark.parametrize("channels, size, classes", [(3, 16, 10), (1, 12, 4), (4, 9, 7)])
def test_shapes_any_channels_and_size(name, channels, size, classes):
    model = create_model(name, in_channels=channels, num_classes=classes, first_layer="pixel-embedding", wbits=1,
                         abits=2, last_layer="quantized")
    size += MIN_SIZE.get(name, 0)
    x = torch.randint(0, 256, (2, size, size, channels), dtype=torch.uint8)
    assert model(x).shape == (2, classes)


@pytest.mark.parametrize("name", FLOAT_ONLY)
def test_float_only_models_train_on_any_shape_and_refuse_quantization(name):
    model = create_model(name, in_channels=1, num_classes=4)
    x = torch.randint(0, 256, (4, 20, 20, 1), dtype=torch.uint8)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert model(x).shape == (4, 4)
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in model.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="float reference network"):
        create_model(name, wbits=1, abits=2)


def test_airbench_whitening_decorrelates_the_patches():
    model = create_model("airbench94")
    images = torch.randint(0, 256, (64, 12, 12, 3), dtype=torch.uint8)
    images = (images.float() * 0.3 + images.float().roll(1, dims=2) * 0.7).to(torch.uint8)  # correlated neighbours
    model.init_whitening(images)
    with torch.no_grad():
        x = (images.permute(0, 3, 1, 2).float() - model.mean) / model.std
        out = torch.nn.functional.conv2d(x, model.whiten.weight[:12])  # the first (positive) half
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    covariance = flat.T @ flat / len(flat)
    torch.testing.assert_close(covariance, torch.eye(12, dtype=torch.float64), atol=0.05, rtol=0)


def test_cnv_refuses_images_smaller_than_its_convs_take():
    model = create_model("cnv", first_layer="pixel-embedding", wbits=1, abits=2)
    with pytest.raises(InputError, match="at least 32x32 pixels"):
        model(torch.zeros((1, 31, 40, 3), dtype=torch.uint8))


@pytest.mark.parametrize("name", QUANTIZABLE)
@pytest.mark.parametrize("first_layer", ENCODERS.names())
def test_every_parameter_gets_a_gradient(name, first_layer):
    model = create_model(name, first_layer=first_layer, wbits=1, abits=2, last_layer="quantized")
    size = max(16, MIN_SIZE.get(name, 0))
    x = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


def _layout(t: torch.Tensor) -> str:
    return "nchw" if t.is_contiguous() else "nhwc" if t.is_contiguous(memory_format=torch.channels_last) else "other"


@pytest.mark.parametrize("first_layer", ENCODERS.names())
def test_batch_norm_sees_one_layout_forward_and_backward(first_layer):
    # A batch norm whose input and gradient differ in layout runs PyTorch's serial backward kernel.
    model = create_model("resnet20", first_layer=first_layer, wbits=1, abits=2, last_layer="quantized").train()
    seen = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, [_layout(i[0])]))
            m.register_full_backward_hook(lambda m, gi, go, name=name: seen[name].append(_layout(go[0])))
    x = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)  # NHWC, as the data pipeline gives
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert len(seen) == 19 and all(v == ["nhwc", "nhwc"] for v in seen.values()), seen


def test_nhwc_and_nchw_give_the_same_logits():
    model = create_model("resnet20", first_layer="pixel-embedding", wbits=1, abits=2).eval()
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(model(x), model(x.permute(0, 2, 3, 1).contiguous()))


def test_float_model_is_a_plain_resnet():
    model = create_model("resnet20")
    assert not any(getattr(m, "weight_quantizer", None) for m in model.modules())
    assert not any(isinstance(m, MidTreadHalf) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(0.27e6, rel=0.02)


def test_quantized_activations_are_codes_on_the_grid():
    """Every activation a conv sees, and the residual sum, is an integer multiple of the step."""
    model = create_model("resnet20", first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized").eval()
    seen = []
    for m in model.modules():
        if isinstance(m, QuantConv2d):
            m.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
    model(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    assert len(seen) == 19
    for x in seen:
        codes = x / (2 / 3)
        assert torch.allclose(codes, codes.round(), atol=1e-5) and codes.min() >= 0 and codes.max() <= 3 + 1e-5


def test_first_and_last_layer_choices():
    float_first = create_model("resnet20", first_layer="float", wbits=1, abits=2)
    assert float_first.stem.conv.weight_quantizer is None
    assert float_first.fc.weight_quantizer is None and float_first.fc.bias is not None
    full = create_model("resnet20", first_layer="int8", wbits=1, abits=2, last_layer="quantized")
    assert full.stem.conv.weight_quantizer.bits == 1
    assert full.fc.bias is None and not full.fc.weight_quantizer.per_channel


def test_overrides_set_mixed_precision():
    model = create_model("resnet20", wbits=1, abits=2, overrides={
        "stages.2.*.conv1": "dorefa:4", "stages.0.0.act1": "mid_tread:4", "stages.0.1.act1": None})
    assert all(model.stages[2][i].conv1.weight_quantizer.bits == 4 for i in range(3))
    assert model.stages[2][0].conv2.weight_quantizer.bits == 1
    assert model.stages[0][0].act1.bits == 4
    assert isinstance(model.stages[0][1].act1, torch.nn.ReLU)
    rows = {r["name"]: r["bits"] for r in layer_bits(model)}
    assert rows["stages.2.0.conv1.weight"] == 4 and rows["stages.0.0.conv2.weight"] == 1


def test_model_size_counts_bits():
    float_model = create_model("resnet20")
    binary = create_model("resnet20", first_layer="pixel-embedding", wbits=1, abits=2, last_layer="quantized")
    assert model_size_bytes(float_model) == 4 * sum(p.numel() for p in float_model.parameters())
    assert model_size_bytes(binary) < model_size_bytes(float_model) / 20


@pytest.mark.parametrize("kwargs, message", [
    ({"wbits": 9}, "wbits must be"),
    ({"abits": 0}, "abits must be"),
    ({"last_layer": "int"}, "last_layer must be"),
    ({"first_layer": "fp16"}, "unknown first layer 'fp16'"),
    ({"overrides": {"no.such.layer": "binary"}}, "matches no quantizable layer"),
    ({"depth": 3}, "unknown model arguments"),
])
def test_bad_model_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_model("resnet20", **kwargs)


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="resnet20"):
        create_model("resnet21")


@pytest.mark.parametrize("x, message", [
    (torch.rand(1, 3, 8, 8), "uint8"),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), "batch of images"),
    (torch.zeros(1, 8, 8, 5, dtype=torch.uint8), "3-channel"),
])
def test_models_reject_bad_input(x, message):
    with pytest.raises(InputError, match=message):
        create_model("resnet20")(x)


def test_layer_costs_count_macs_bits_and_bops():
    from pixelq.models import cost_totals, layer_costs

    model = create_model("resnet20", first_layer="pixel-embedding", first_layer_kwargs={"d": 4, "bits": 2}, wbits=1,
                         abits=2, last_layer="quantized", in_channels=3, num_classes=10,
                         overrides={"stages.1.0.conv1": "dorefa:4"})
    rows = {r["layer"]: r for r in layer_costs(model, (8, 8, 3))}
    stem = rows["stem.conv"]
    assert stem["macs"] == 8 * 8 * 16 * 12 * 9 and (stem["input_bits"], stem["weight_bits"]) == (2, 1)
    strided = rows["stages.1.0.conv1"]  # 16 -> 32 channels, stride 2 on 8x8: 4x4 outputs, 4-bit weights
    assert strided["macs"] == 4 * 4 * 32 * 16 * 9 and strided["weight_bits"] == 4
    assert strided["bops"] == strided["macs"] * 4 * 2 and strided["param_bits"] == 32 * 16 * 9 * 4
    assert rows["fc"]["macs"] == 64 * 10 and rows["fc"]["input_bits"] == 2
    assert cost_totals(list(rows.values()))["bops"] == sum(r["bops"] for r in rows.values())
    floats = layer_costs(create_model("resnet20", in_channels=3, num_classes=10), (8, 8, 3))
    assert all(r["weight_bits"] == 32 and r["input_bits"] == 32 for r in floats)


def test_bitops_of_a_checkpoint_and_of_its_export_agree(tmp_path, tiny_splits, capsys):
    from conftest import run_config

    from pixelq import train
    from pixelq.cli import main

    train(run_config(tmp_path, epochs=1, first_layer="int8", wbits=1, abits=2, last_layer="quantized"), data=tiny_splits)
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    assert main(["export", ckpt, "-o", str(tmp_path / "m.pxq")]) == 0
    assert main(["bitops", ckpt, "--json", str(tmp_path / "a.json")]) == 0
    assert main(["bitops", str(tmp_path / "m.pxq"), "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["totals"] == b["totals"] and a["image_shape"] == b["image_shape"] == [8, 8, 3]
    assert [(r["macs"], r["input_bits"], r["weight_bits"]) for r in a["layers"]] == \
        [(r["macs"], r["input_bits"], r["weight_bits"]) for r in b["layers"]]
    assert a["layers"][0]["input_bits"] == 8  # the int8 first layer
    assert "total" in capsys.readouterr().out


class HandWritten(torch.nn.Module):
    """A small CNN as a user would write it: no pixelq in sight."""

    def __init__(self, classes=4):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 32), nn.ReLU(),
                                  nn.Linear(32, classes))

    def forward(self, x):
        return self.head(self.features(x))


def test_quantize_model_turns_a_hand_written_cnn_into_its_quantized_twin():
    from pixelq import quantize_model
    from pixelq.nn import PixelEmbedding, QuantLinear

    torch.manual_seed(0)
    float_model = HandWritten()
    twin = quantize_model(float_model, first_layer="pixel-embedding", first_layer_kwargs={"d": 4}, wbits=1, abits=2)
    assert isinstance(float_model.features[0], torch.nn.Conv2d) and not isinstance(float_model.features[0], QuantConv2d)
    first = twin.body.features[0]
    assert isinstance(first.encoder, PixelEmbedding) and first.conv.in_channels == 12
    assert first.conv.weight_quantizer.bits == 1
    conv2 = twin.body.features[3]
    assert isinstance(conv2, QuantConv2d) and conv2.weight_quantizer.bits == 1
    assert torch.equal(conv2.weight, float_model.features[3].weight)  # trained weights carried over
    assert isinstance(twin.body.features[2], MidTreadHalf) and isinstance(twin.body.head[3], MidTreadHalf)
    assert isinstance(twin.body.head[2], QuantLinear) and twin.body.head[2].weight_quantizer.bits == 1
    assert twin.body.head[4].weight_quantizer is not None
    x = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    torch.nn.functional.cross_entropy(twin(x), y).backward()
    assert all(p.grad is not None for p in twin.parameters())
    with pytest.raises(InputError, match="uint8"):
        twin(x.float())
    kept = quantize_model(float_model, wbits=1, abits=2, last_layer="float", first_layer="int8")
    assert kept.body.head[4].weight_quantizer is None
    assert torch.equal(kept.body.features[0].conv.weight, float_model.features[0].weight)


def test_quantize_model_at_float_precision_is_the_same_function():
    from pixelq import quantize_model
    from pixelq.nn import FloatInput

    torch.manual_seed(0)
    float_model = HandWritten().eval()
    twin = quantize_model(float_model, first_layer="float", wbits=32, abits=32, last_layer="float").eval()
    x = torch.randint(0, 256, (3, 12, 12, 3), dtype=torch.uint8)
    expected = float_model(FloatInput(3)(x.permute(0, 3, 1, 2)))
    torch.testing.assert_close(twin(x), expected)


def test_quantize_model_overrides_and_errors():
    from pixelq import quantize_model

    twin = quantize_model(HandWritten(), overrides={"body.features.3": "dorefa:4"})
    assert twin.body.features[3].weight_quantizer.bits == 4
    with pytest.raises(ConfigError, match="matches no quantizable layer"):
        quantize_model(HandWritten(), overrides={"body.nothing": "binary"})
    with pytest.raises(ConfigError, match="takes 3 channels, not in_channels=1"):
        quantize_model(HandWritten(), in_channels=1)
    with pytest.raises(ConfigError, match="needs a network"):
        quantize_model(torch.nn.Linear(3, 2))


@pytest.mark.parametrize("name,kwargs", [("resnet20", {}), ("cnv", {}), ("resnet20", {"wbits": 1, "abits": 2})])
def test_frozen_for_inference_folds_float_batch_norm_and_keeps_the_logits(name, kwargs):
    from pixelq.models.tracing import frozen_for_inference

    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **kwargs).train()
    with torch.no_grad():  # running statistics away from their initial 0 / 1
        for _ in range(3):
            model(torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = frozen_for_inference(model)
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), model(x), rtol=1e-4, atol=1e-5)
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    quantized = sum(m.weight_quantizer is not None for m in convs)
    assert norms == quantized  # every float conv's batch norm folded; a quantized conv's kept
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original untouched
