"""The .pxq file and the runtime API: round trip, size, damage, and agreement with PyTorch."""
import json

import numpy as np
import pytest
import torch

import pixelq
from pixelq import ConfigError, InputError, ModelFileError, create_model
from pixelq.cli import main
from pixelq.integer import load_model, payload_bytes
from pixelq.runtime import fast, fusion, load
from pixelq.runtime.reference import run_reference
from pixelq.exporting.verify import label_agreement
from conftest import trained_like


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = trained_like(create_model("resnet20", first_layer="pixel-embedding", wbits=1, abits=2,
                                      last_layer="quantized"))
    path = tmp_path_factory.mktemp("pxq") / "model.pxq"
    return model, pixelq.export(model, path), path


def test_file_round_trip_and_size(model_file):
    _, graph, path = model_file
    again = load_model(path)
    assert again.nodes == graph.nodes and again.meta == graph.meta
    assert all(np.array_equal(again.tensors[k], graph.tensors[k]) for k in graph.tensors)
    assert path.stat().st_size <= 1.1 * payload_bytes(graph)
    weights_bits = sum(graph.tensors[n.tensor_name("weight")].size * n.weight_bits
                       for n in graph.nodes if n.op in ("conv", "linear"))
    assert payload_bytes(graph) < weights_bits / 8 + 20_000  # binary weights dominate; thresholds are small


def test_runtime_agrees_with_pytorch(model_file):
    model, _, path = model_file
    runtime = load(path)
    x = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8)
    logits = model(x).detach().numpy()
    assert runtime.logits(x.numpy()).dtype == np.int32
    assert np.array_equal(runtime.predict(x.numpy()), logits.argmax(1))
    assert np.allclose(runtime.float_logits(x.numpy()), logits, rtol=1e-4, atol=1e-5)
    layers = runtime.layer_outputs(x.numpy())
    assert layers["stem.act"].shape == (5, 16, 16, 16) and layers["stem.act"].max() <= 3


@pytest.fixture(scope="module")
def int8_first_graphs(tmp_path_factory):
    """ResNet-20 with an int8 first layer, and a narrower net whose 32-channel first conv is too wide
    for the table kernel."""
    graphs = {}
    for name, kwargs in (("int8", {}), ("int8-32-channels", {"widths": (32, 64), "blocks": (1, 1)})):
        torch.manual_seed(1)
        model = trained_like(create_model("resnet20", first_layer="int8", wbits=1, abits=2, **kwargs))
        graphs[name] = pixelq.export(model, tmp_path_factory.mktemp("pxq") / f"{name}.pxq")
    return graphs


@pytest.mark.parametrize("first_layer, path", [("pixel-embedding", "int8 table"), ("int8", "int16 table"),
                                               ("int8-32-channels", "shifted planes")])
@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512vpopcntdq", "avx512bitalg"])
def test_fused_kernels_equal_the_reference_executor_node_by_node(model_file, int8_first_graphs, first_layer, path, isa):
    """The fast executor as logits() runs it (convs fused with their thresholds and residual adds,
    the first conv as table sums, on 32x32 images: whole rows for the row-lane convs) gives every
    node it materialises exactly the reference executor's value, for each instruction set; and so
    does the executor that keeps every layer (layer_outputs). An int8 first layer's signed codes
    (pixel - 128) reach +128 in its tables, so they are int16; with more than 16 channels, its
    bit-planes are the pixel bytes shifted to unsigned, padded with the shifted 0, the shift's
    share (then one constant per channel) folded into the thresholds."""
    if not fast.kernels_available():
        pytest.skip("C kernels not built")
    graph = model_file[1] if first_layer == "pixel-embedding" else int8_first_graphs[first_layer]
    if isa not in fast.available_isas():
        pytest.skip(f"this CPU has no {isa}")
    executor = fast.FastExecutor(graph, threads=2, isa=isa)
    stem = next(node for node in executor.plan.nodes if getattr(node, "conv_name", None) == "stem.conv")
    assert stem.name == "stem.act" and {"lut", "thresholds"} <= set(stem.tensors)  # lookup + conv + threshold
    shifted = [node.name for node in executor.plan.nodes if getattr(node, "input_shift", 0)]
    if path == "shifted planes":
        assert shifted == ["stem.act"] and executor.kernels()["stem.conv"] == "bit-planes via lookup"
    else:
        assert executor.kernels()["stem.conv"] == "table sums" and not shifted
        tables = fusion.lut_conv_table(executor.plan.tensors["stem.act.weight"], executor.plan.tensors["stem.act.lut"])
        assert tables.dtype.name == path.split()[0]  # the entries the kernel runs on (int16: sums reach +-128)
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert not executor._tail  # every node runs in the libpixelq net, a float last layer too
    values = executor.run(x)
    profile = executor.profile(x, 1)  # the net's steps timed, each node under its (conv's) name
    every_layer = fast.FastExecutor(graph, threads=2, fuse=False, isa=isa).run(x)  # as layer_outputs() runs
    reference = run_reference(graph, x)
    compared = [name for name, v in values.items() if v is not None and name in reference]
    block_outputs = {node.name for node in graph.nodes if node.name.endswith("act_out")}
    assert graph.meta["output"] in compared and len(block_outputs) >= 2 and block_outputs <= set(compared)
    assert set(profile) == {getattr(node, "conv_name", node.name) for node in executor.plan.nodes}
    assert all(seconds > 0 for seconds in profile.values())
    for name in compared:
        if np.asarray(values[name]).dtype.kind == "f":  # a float last layer: float32 sums in another order than numpy's
            np.testing.assert_allclose(values[name], reference[name], rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            assert np.array_equal(values[name], reference[name]), name
    assert values["pool.count"] == reference["pool.count"]
    assert every_layer.keys() == reference.keys()
    for name, value in every_layer.items():
        assert np.array_equal(value, reference[name]), name


def test_shifted_first_conv_keeps_thresholds_at_the_int32_limits(int8_first_graphs):
    """The shifted-planes first conv moves its thresholds by the shift's share: one at the int32 limit
    (never, or always, passed: a layer whose step dwarfs its accumulators) must stay there rather
    than wrap around (it did, and such channels then passed every level)."""
    import copy

    if not fast.kernels_available():
        pytest.skip("C kernels not built")
    graph = copy.deepcopy(int8_first_graphs["int8-32-channels"])
    thresholds = graph.tensors["stem.act.thresholds"]
    thresholds[::2] = np.iinfo(np.int32).max
    thresholds[1::4] = np.iinfo(np.int32).min
    executor = fast.FastExecutor(graph, threads=2)
    assert executor.kernels()["stem.conv"] == "bit-planes via lookup" and executor.plan.node("stem.act").input_shift
    x = np.random.default_rng(4).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(executor.run(x)["stem.act"], run_reference(graph, x)["stem.act"])


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512vpopcntdq", "avx512bitalg"])
def test_labels_equal_pytorch_on_every_instruction_set(model_file, isa):
    """The whole W1A2 network's labels against the PyTorch model, run with each build this CPU has
    (load(isa=...)); a disagreement is excused only at a tie of the integer logits."""
    if isa not in fast.available_isas():
        pytest.skip(f"this CPU has no {isa}")
    model, _, path = model_file
    runtime = load(path, isa=isa)
    assert runtime.isa == isa
    images = np.random.default_rng(5).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    agreement = label_agreement(model, runtime, images)
    assert agreement["differ_unexplained"] == 0 and agreement["same"] >= 36


def test_isa_choice_errors():
    with pytest.raises(ConfigError, match="not an instruction set pixelq knows"):
        fast.choose_isa("sse9")
    from pixelq.runtime import Runtime

    with pytest.raises(ConfigError, match="the reference backend has none"):
        Runtime(None, backend="reference", isa="avx2")  # refused before the model is read


@pytest.fixture(scope="module")
def wide_bits_graph(tmp_path_factory):
    """A ResNet-20 with 4-bit weights and activations (4-bit pixel embedding too): 16 plane pairs per
    conv, past every build's crossover to the dot-product conv."""
    torch.manual_seed(2)
    model = trained_like(create_model("resnet20", first_layer="pixel-embedding", first_layer_kwargs={"d": 4, "bits": 4},
                                      wbits=4, abits=4, last_layer="quantized"))
    return model, pixelq.export(model, tmp_path_factory.mktemp("pxq") / "w4a4.pxq")


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512vpopcntdq", "avx512bitalg"])
def test_dot_product_convs_equal_the_reference_and_pytorch(wide_bits_graph, isa):
    """Past the crossover (DOT_MIN_PAIRS in csrc/steps.c) every conv but the lookup one runs as dot products:
    every node the executor materialises equals the reference's, and the labels PyTorch's."""
    if not fast.kernels_available() or isa not in fast.available_isas():
        pytest.skip(f"this CPU has no {isa}")
    model, graph = wide_bits_graph
    executor = fast.FastExecutor(graph, threads=2, isa=isa)
    kernels = executor.kernels()
    dots = [name for name, kernel in kernels.items() if kernel.startswith("dot product")]
    assert kernels["stem.conv"] == "table sums" and len(dots) == len(kernels) - 1
    x = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    values, reference = executor.run(x), run_reference(graph, x)
    compared = [name for name, v in values.items() if v is not None and name in reference]
    assert len(compared) > len(dots)
    for name in compared:
        assert np.array_equal(values[name], reference[name]), name
    with torch.no_grad():
        expected = model(torch.as_tensor(x)).argmax(1).numpy()
    assert np.array_equal(values[graph.meta["output"]].argmax(1), expected)


def test_logits_stay_the_callers_when_the_runtime_reuses_its_arrays(model_file):
    # logits() keeps layer outputs between calls (no fresh pages per call); results must not alias them.
    _, _, path = model_file
    runtime, fresh = load(path, backend="c"), load(path, backend="reference")
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8) for n in (4, 4, 7, 2)]
    results = [runtime.logits(x) for x in batches]
    assert all(np.array_equal(r, fresh.logits(x)) for r, x in zip(results, batches))


@pytest.mark.parametrize("damage, message", [
    ("truncate", "cannot read"),
    ("flip", "checksum mismatch"),
    ("garbage", "cannot read"),
])
def test_damaged_files_raise(model_file, tmp_path, damage, message):
    data = bytearray(model_file[2].read_bytes())
    bad = tmp_path / "bad.pxq"
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "flip":
        data[-50] ^= 0xFF
    else:
        data = b"\x00" * 64
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=message):
        load(bad)


def test_wrong_version_raises(model_file, tmp_path):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(model_file[2]), framework="np") as f:
        metadata = dict(f.metadata())
    metadata["version"] = "99"
    bad = tmp_path / "v99.pxq"
    save_file(load_file(str(model_file[2])), str(bad), metadata=metadata)
    with pytest.raises(ModelFileError, match="version 99"):
        load(bad)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load(tmp_path / "none.pxq")


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((8, 8, 3), np.uint8), "expected images"),
    (np.zeros((2, 8, 8, 4), np.uint8), "expected images"),
])
def test_runtime_rejects_bad_images(model_file, images, message):
    with pytest.raises(InputError, match=message):
        load(model_file[2]).predict(images)


@pytest.mark.parametrize("threads", [0, -2, 1.5])
def test_runtime_rejects_bad_thread_counts(model_file, threads):
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        load(model_file[2], threads=threads)


def test_cli_export_run_inspect(tmp_path, tiny_splits, capsys):
    from conftest import write_image_dataset

    data = write_image_dataset(tmp_path, tiny_splits)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--first-layer", "pixel-embedding", "--pe-dim", "4", "--wbits", "1",
                 "--abits", "2", "--last-layer", "quantized", "--epochs", "1", "--batch-size", "16",
                 "--out", str(out), "--quiet", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["export", str(out / "checkpoint.pt"), "-o", str(tmp_path / "m.pxq")]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["bytes"] <= 1.1 * exported["payload_bytes"] and exported["integer_only"]
    assert main(["run", str(tmp_path / "m.pxq"), "--data", str(data)]) == 0
    ran = json.loads(capsys.readouterr().out)
    runtime, model = load(tmp_path / "m.pxq"), pixelq.load_checkpoint(out / "checkpoint.pt")
    assert label_agreement(model, runtime, tiny_splits.test.images)["differ_unexplained"] == 0
    expected = 100.0 * (runtime.predict(tiny_splits.test.images) == tiny_splits.test.labels).mean()
    assert ran["n"] == 24 and ran["top1"] == pytest.approx(expected)
    for form, quantize_nodes in (("onnx", True), ("onnx-integer", False)):  # QDQ, and the integer graph in float ops
        assert main(["export", str(out / "checkpoint.pt"), "-o", str(tmp_path / f"{form}.onnx"), "--format", form]) == 0
        assert json.loads(capsys.readouterr().out)["format"] == form
        ops = {node.op_type for node in pytest.importorskip("onnx").load(str(tmp_path / f"{form}.onnx")).graph.node}
        assert ("QuantizeLinear" in ops) == quantize_nodes and "Conv" in ops
    assert main(["inspect", str(tmp_path / "m.pxq"), "--json", str(tmp_path / "inspect.json")]) == 0
    printed = capsys.readouterr().out
    assert "stem.encoder" in printed and "8x8x3 -> 8x8x12" in printed and "8x8x32 -> 4x4x32" not in printed
    table = {r["layer"]: r for r in json.loads((tmp_path / "inspect.json").read_text())["table"]}
    assert table["stem.encoder"]["shape"] == [8, 8, 12] and table["stem.encoder"]["bits"] == 2
    assert table["stem.conv"]["shape"] == [8, 8, 16] and table["stem.conv"]["macs"] == 8 * 8 * 16 * 12 * 9
    assert table["stages.1.0.conv1"]["shape"] == [4, 4, 32] and table["stem.conv"]["bits"] is None
    assert table["pool"]["shape"] == [64] and table["fc"]["shape"] == [3]
    if fast.kernels_available():  # each conv's kernel under the chosen instruction set
        assert table["stem.conv"]["kernel"] == "table sums" and table["stem.encoder"]["kernel"] is None
        assert table["stages.0.0.conv1"]["kernel"] == "bit-planes (2x1 popcount passes)"
        assert main(["inspect", str(tmp_path / "m.pxq"), "--isa", "portable"]) == 0
        assert "kernel (portable)" in capsys.readouterr().out
        assert main(["inspect", str(tmp_path / "m.pxq"), "--isa", "avx9"]) == 2
        assert "isa 'avx9' is not an instruction set pixelq knows" in capsys.readouterr().err
        assert main(["run", str(tmp_path / "m.pxq"), "--data", str(data), "--isa", "portable"]) == 0
        assert json.loads(capsys.readouterr().out)["isa"] == "portable"
    assert main(["run", str(tmp_path / "missing.pxq")]) == 2


def test_the_runtime_runs_with_torch_blocked(model_file, tmp_path):
    """A deployment needs numpy, not torch (nor Pillow, which only image files need): load and run a
    .pxq, and a zoo model by name, in a process where `import torch` and `import PIL` fail."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; sys.modules['PIL'] = None\n"
            "import numpy as np, pixelq.runtime, pixelq.integer\n"
            "pixelq.runtime.load('zoo:resnet20-w1a2-pe-qlast')\n"
            "rt = pixelq.runtime.load(sys.argv[1])\n"
            "images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)\n"
            "print(rt.predict(images).tolist())\n"
            "assert 'torch' not in {m.split('.')[0] for m, v in sys.modules.items() if v is not None}\n")
    path = model_file[2]
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert json.loads(done.stdout) == load(path).predict(images).tolist()
