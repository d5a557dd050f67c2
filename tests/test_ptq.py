"""Post-training quantization: GPFQ's greedy step against a direct implementation, and RTN."""
import numpy as np
import pytest
import torch

from pixelq import ConfigError
from pixelq.ptq import alphabet, gpfq_quantize, rtn_quantize


def gpfq_numpy(w, x, xq, levels):
    """GPFQ written out for one neuron at a time, straight from the formula (SPEC §6)."""
    out = np.empty_like(w)
    for i, neuron in enumerate(w):
        u = np.zeros(x.shape[0])
        for t in range(len(neuron)):
            v = xq[:, t] @ (u + neuron[t] * x[:, t]) / (xq[:, t] @ xq[:, t])
            q = levels[np.argmin(np.abs(levels - v))]
            u = u + neuron[t] * x[:, t] - q * xq[:, t]
            out[i, t] = q
    return out


def test_alphabet_is_symmetric_around_the_median_radius():
    w = torch.tensor([-4.0, -1.0, 0.5, 2.0, 3.0])
    levels = alphabet(w, 2, 1.5)
    assert torch.allclose(levels, 1.5 * 2.0 * torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    with pytest.raises(ConfigError, match="bits"):
        alphabet(w, 0, 1.0)


@pytest.mark.parametrize("seed", range(5))
def test_gpfq_equals_the_formula_neuron_by_neuron(seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, (4, 12))
    x = np.abs(rng.normal(0, 1, (40, 12)))
    xq = x + rng.normal(0, 0.05, x.shape)  # the quantized network's inputs: close, not equal
    levels = alphabet(torch.tensor(w), 3, 2.0).numpy()
    got = gpfq_quantize(torch.tensor(w), torch.tensor(x), torch.tensor(xq), torch.tensor(levels))
    assert np.allclose(got.numpy(), gpfq_numpy(w, x, xq, levels))
    assert set(np.unique(got.numpy())) <= set(levels)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gpfq_beats_round_to_nearest_on_the_layer_output(bits):
    """The point of GPFQ: a smaller output error than rounding each weight alone."""
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 64, generator=g) * 0.1
    x = torch.relu(torch.randn(512, 64, generator=g))
    levels = alphabet(w, bits, 2.0)
    err_rtn = (x @ w.T - x @ rtn_quantize(w, levels).T).norm()
    err_gpfq = (x @ w.T - x @ gpfq_quantize(w, x, x, levels).T).norm()
    assert err_gpfq < 0.95 * err_rtn  # 10-20 % smaller here (bits 2-4, C = 2)


def test_rtn_rounds_to_the_nearest_level():
    levels = torch.tensor([-1.0, -0.2, 0.4, 1.0])
    w = torch.tensor([-2.0, -0.61, -0.59, 0.1, 0.11, 5.0])
    assert torch.equal(rtn_quantize(w, levels), levels[[0, 0, 1, 1, 2, 3]])


def test_gpfq_rejects_mismatched_inputs():
    with pytest.raises(ConfigError, match="inputs"):
        gpfq_quantize(torch.zeros(2, 3), torch.zeros(5, 3), torch.zeros(4, 3), torch.tensor([-1.0, 1.0]))


@pytest.mark.parametrize("method, bits", [("int8", 8), ("rtn", 3), ("gpfq", 2)])
def test_cli_quantize_then_eval_export_run(tmp_path, tiny_splits, capsys, method, bits):
    """A float network, post-training quantized, is a normal checkpoint: eval, export and the integer
    runtime take it, and the runtime agrees with PyTorch."""
    import json

    from pixelq import train
    from pixelq.cli import main
    from pixelq.exporting.verify import label_agreement
    from pixelq.runtime import load
    from pixelq.training import load_checkpoint

    from conftest import run_config, write_image_dataset

    data = write_image_dataset(tmp_path, tiny_splits)
    train(run_config(tmp_path, "float", epochs=2, optimizer="sgd", lr=0.05, data=str(data)))
    out = tmp_path / method
    assert main(["quantize", str(tmp_path / "float" / "checkpoint.pt"), "--method", method, "--bits", str(bits),
                 "--calib", "24", "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    result = json.loads(printed.out)
    assert result["method"] == method and result["bits"] == bits and result["calibration_images"] == 24
    if method != "int8":  # rtn and gpfq go layer by layer, with a progress bar
        assert f"{method} {bits}-bit" in printed.err and "layer" in printed.err
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == result["top1"]
    assert main(["export", str(out / "checkpoint.pt"), "-o", str(tmp_path / "m.pxq")]) == 0
    model = load_checkpoint(out / "checkpoint.pt")
    assert label_agreement(model, load(tmp_path / "m.pxq"), tiny_splits.test.images)["differ_unexplained"] == 0
    assert main(["quantize", str(tmp_path / "float" / "checkpoint.pt"), "--out", str(out)]) == 2  # no overwrite


def test_quantize_refuses_an_already_quantized_network(tmp_path, tiny_splits):
    from pixelq import train
    from pixelq.ptq import quantize_resnet
    from pixelq.training import load_checkpoint

    from conftest import run_config

    train(run_config(tmp_path, "q", epochs=1, wbits=1, abits=2), data=tiny_splits)
    with pytest.raises(ConfigError, match="starts from a float network"):
        quantize_resnet(load_checkpoint(tmp_path / "q" / "checkpoint.pt"), torch.zeros(4, 8, 8, 3, dtype=torch.uint8))


def test_cli_quantize_calibrates_on_streamed_folders(tmp_path, tiny_splits, capsys, monkeypatch):
    """Folders too large for memory stream; calibration and the test top-1 then come from the stream."""
    import json

    import pixelq.data.streaming as streaming
    from pixelq import train
    from pixelq.cli import main

    from conftest import run_config, write_image_dataset

    data = write_image_dataset(tmp_path, tiny_splits)
    train(run_config(tmp_path, "float", epochs=1, data=str(data)))
    args = ["quantize", str(tmp_path / "float" / "checkpoint.pt"), "--calib", "12", "--data", str(data)]
    assert main([*args, "--out", str(tmp_path / "memory")]) == 0
    in_memory = json.loads(capsys.readouterr().out)
    real_open = streaming.open_data
    monkeypatch.setattr("pixelq.data.open_data", lambda *a, **k: real_open(*a, **k, memory_share=1e-12))
    with pytest.warns(UserWarning, match="streaming them from disk"):
        assert main([*args, "--out", str(tmp_path / "streamed")]) == 0
    assert json.loads(capsys.readouterr().out) == in_memory


def test_quantize_takes_per_layer_bits_from_an_overrides_file(tmp_path, tiny_splits, capsys):
    """Mixed precision after training: the overrides file training takes sets single convs' grids,
    GPFQ quantizes each to its own bits, and the result exports and runs with PyTorch's labels."""
    import json

    from pixelq import train
    from pixelq.cli import main
    from pixelq.exporting.verify import label_agreement
    from pixelq.integer import load_model
    from pixelq.runtime import load
    from pixelq.training import load_checkpoint

    from conftest import run_config, write_image_dataset

    data = write_image_dataset(tmp_path, tiny_splits)
    train(run_config(tmp_path, "float", epochs=1, data=str(data)))
    (tmp_path / "mixed.json").write_text(json.dumps({"stages.0.*.conv*": "grid:4:tensor", "stages.2.*.conv*": "grid:2:tensor"}))
    out = tmp_path / "mixed"
    assert main(["quantize", str(tmp_path / "float" / "checkpoint.pt"), "--method", "gpfq", "--bits", "3",
                 "--calib", "24", "--data", str(data), "--out", str(out), "--overrides", str(tmp_path / "mixed.json")]) == 0
    assert json.loads(capsys.readouterr().out)["overrides"]["stages.2.*.conv*"] == "grid:2:tensor"
    model = load_checkpoint(out / "checkpoint.pt")
    bits = {n: m.weight_quantizer.bits for n, m in model.named_modules() if getattr(m, "weight_quantizer", None)}
    assert bits["stages.0.1.conv1"] == 4 and bits["stages.1.0.conv2"] == 3 and bits["stages.2.0.conv1"] == 2
    for name in ("stages.0.1.conv1", "stages.2.0.conv1"):  # each conv holds at most 2^bits distinct weights
        assert len(torch.unique(model.get_submodule(name).quantized_weight())) <= 2 ** bits[name]
    assert main(["export", str(out / "checkpoint.pt"), "-o", str(tmp_path / "m.pxq")]) == 0
    graph = load_model(tmp_path / "m.pxq")
    assert graph.node("stages.2.0.conv1").weight_bits == 2 and graph.node("stages.0.0.conv1").weight_bits == 4
    assert label_agreement(model, load(tmp_path / "m.pxq"), tiny_splits.test.images)["differ_unexplained"] == 0
    (tmp_path / "bad.json").write_text(json.dumps({"stages.0.*": "binary"}))
    assert main(["quantize", str(tmp_path / "float" / "checkpoint.pt"), "--method", "gpfq", "--data", str(data),
                 "--out", str(tmp_path / "bad"), "--overrides", str(tmp_path / "bad.json")]) == 2
    assert "sets weight grids" in capsys.readouterr().err


@pytest.mark.parametrize("first_difference, explained", [
    ({"differ": 1, "ties": 1}, True),  # PyTorch's pre-activation on a rounding boundary: float32 rounds it apart
    ({"differ": 2, "ties": 1}, False),  # one code off the boundary: a real disagreement
])
def test_labels_that_differ_after_a_float_tie_are_explained(monkeypatch, first_difference, explained):
    """An int8 PTQ network has a float last layer, so its labels cannot differ at integer-logit ties;
    they can where one activation sat on a rounding boundary (seen: 3 of 1,000 images, each traced
    to one code in one layer, a float tie) - counted as explained only when the first layer whose
    codes differ differs only there."""
    from pixelq.exporting import verify

    class Model(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 0.0]]).repeat(len(x), 1)

    class Runtime:
        def logits(self, x):
            return np.tile(np.float32([0.0, 1.0]), (len(x), 1))

    report = {"stem.act": {"codes": 9, "differ": 0, "ties": 0}, "stages.0.0.act1": {"codes": 9, **first_difference},
              "stages.0.0.act_out": {"codes": 9, "differ": 5, "ties": 0}}
    monkeypatch.setattr(verify, "layer_agreement", lambda model, runtime, images: report)
    result = verify.label_agreement(Model(), Runtime(), np.zeros((3, 4, 4, 3), np.uint8))
    assert result["same"] == 0 and result["differ_at_logit_ties"] == 0
    assert (result["differ_at_float_ties"], result["differ_unexplained"]) == ((3, 0) if explained else (0, 3))
