"""libpixelq on its own: its reader (pxq_load) against pixelq's, its tool, the C example, and the
reader under AddressSanitizer and UndefinedBehaviorSanitizer on damaged and hostile files."""
import dataclasses
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pixelq
from pixelq.models import create_model
from pixelq.runtime import clib, get_include, load
from pixelq.zoo import zoo_path

from conftest import trained_like
from test_bad_input import _resave_with_manifest, _zoo_manifest, hostile_edit

pytestmark = pytest.mark.skipif(not clib.available(), reason="libpixelq not built (no C compiler)")
ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "src" / "pixelq" / "runtime" / "csrc"
LIBRARY_SOURCES = [CSRC / name for name in ("kernels.c", "net.c", "steps.c", "loader.c", "vendor/sha256.c")]
ZOO = ["resnet20-w1a2-pe-qlast", "resnet20-w1a2-pe-qlast-r4s"]
CC = shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Files of the shapes the library must run: the zoo's two ResNet-20s, a CNV (max pools, 2-bit
    first layer at 32 channels via bit-planes), a W2A2 ResNet (dot products on wide layers) and an
    int8 first layer with a float last layer (which libpixelq does not run yet)."""
    folder = tmp_path_factory.mktemp("libpixelq")
    files = {name: zoo_path(name) for name in ZOO}
    for name, kwargs in (("cnv", dict(model="cnv", wbits=1, abits=2, first_layer="pixel-embedding")),
                         ("w2a2", dict(model="resnet20", wbits=2, abits=2, first_layer="pixel-embedding",
                                       last_layer="quantized")),
                         ("int8-float-last", dict(model="resnet20", wbits=1, abits=2, first_layer="int8"))):
        torch.manual_seed(0)
        net = trained_like(create_model(kwargs.pop("model"), **kwargs), size=32)
        files[name] = folder / f"{name}.pxq"
        pixelq.export(net, files[name], image_shape=(32, 32, 3))
    return files


@pytest.mark.parametrize("name", [*ZOO, "cnv", "w2a2", "int8-float-last"])
def test_the_c_reader_runs_what_the_python_runtime_runs(models, name):
    """pxq_load reads, checks and plans the file itself; its logits, labels and float logits are the
    Python runtime's (whose are the reference executor's), for every instruction set of this CPU; a
    float last layer gives float logits only (pxq_logits refuses it)."""
    images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    runtime = load(models[name], threads=2)
    for isa in clib.isas():
        model = clib.Model(models[name], threads=2, isa=isa)
        assert model.image_shape == (32, 32, 3) and model.classes == (runtime.classes or [str(k) for k in range(10)])
        if runtime.integer_only:
            assert np.array_equal(model.logits(images), runtime.logits(images)), isa
        else:
            with pytest.raises(ValueError, match="last layer is float"):
                model.logits(images)
        assert np.array_equal(model.predict(images), runtime.predict(images)), isa
        np.testing.assert_allclose(model.float_logits(images), runtime.float_logits(images), rtol=1e-5, atol=1e-6)


def test_the_c_reader_refuses_clearly(models, tmp_path):
    from pixelq.runtime import fast

    from pixelq.integer.ops import Conv

    wide = Conv(name="c", inputs=("image",), tensors=("weight",), in_channels=4, out_channels=4, kernel=3, stride=1,
                padding=1, weight_bits=1, weight_lowest=-1, weight_stride=2, input_range=(0, 300))
    spec, keep = fast.net_node(wide, {"c.weight": np.ones((4, 3, 3, 4), np.int32)}, [0])
    with pytest.raises(clib.Unsupported, match="codes wider than a byte have no C kernel yet"):
        clib.Net().add_node(spec, None, 1)
    signed = dataclasses.replace(wide, groups=4, input_range=(-2, 1))
    spec, keep = fast.net_node(signed, {"c.weight": np.ones((4, 3, 3, 1), np.int32)}, [0])
    with pytest.raises(clib.Unsupported, match="grouped convs over a lookup or signed codes"):
        clib.Net().add_node(spec, None, 1)
    with pytest.raises(clib.Model.LoadError, match="cannot open the model file"):
        clib.Model(tmp_path / "none.pxq")
    with pytest.raises(clib.Model.LoadError, match="instruction set avx9 is not available"):
        clib.Model(models["cnv"], isa="avx9")
    damaged = tmp_path / "damaged.pxq"
    data = bytearray(Path(models["cnv"]).read_bytes())
    data[-100] ^= 1
    damaged.write_bytes(bytes(data))
    with pytest.raises(clib.Model.LoadError, match="checksum mismatch"):
        clib.Model(damaged)
    damaged.write_bytes(bytes(data[:1000]))
    with pytest.raises(clib.Model.LoadError, match="truncated|header"):
        clib.Model(damaged)


def tool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from pixelq.runtime.tool import main; main()", *map(str, args)],
                          capture_output=True, text=True)


def test_pixelq_run_classifies_npy_files(models, tmp_path):
    """pixelq-run (C, on libpixelq): a label and class name per image, equal to the Python runtime's;
    --top K with scores; --json; --bench; a message and a non-zero status for every error."""
    from pixelq.runtime.tool import TOOL

    if not TOOL.is_file():
        pytest.skip("pixelq-run was not built")
    images = np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    runtime = load(models["resnet20-w1a2-pe-qlast"])
    done = tool(models["resnet20-w1a2-pe-qlast"], tmp_path / "x.npy", "--threads", "1")
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == runtime.predict(images).tolist()
    assert [r[1] for r in rows] == [runtime.classes[k] for k in runtime.predict(images)]
    done = tool(models["resnet20-w1a2-pe-qlast"], tmp_path / "x.npy", "--json", "--top", "3")
    result = json.loads(done.stdout)
    assert [r["label"] for r in result] == runtime.predict(images).tolist()
    scores = np.exp(runtime.float_logits(images) - runtime.float_logits(images).max(1, keepdims=True))
    scores /= scores.sum(1, keepdims=True)
    for r, row in zip(result, scores):
        assert [t["class"] for t in r["top"]] == [runtime.classes[k] for k in np.argsort(-row, kind="stable")[:3]]
        np.testing.assert_allclose([t["score"] for t in r["top"]], np.sort(row)[::-1][:3], atol=1e-5)
    assert "images/s" in tool(models["cnv"], tmp_path / "x.npy", "--bench", "3").stdout
    np.save(tmp_path / "small.npy", images[:, :16])
    np.save(tmp_path / "float.npy", images.astype(np.float32))
    for args, message in [((tmp_path / "none.pxq", tmp_path / "x.npy"), "cannot open the model file"),
                          ((models["cnv"], tmp_path / "small.npy"), "images of shape (32, 32, 3) expected"),
                          ((models["cnv"], tmp_path / "float.npy"), "must hold uint8 images"),
                          ((models["cnv"], tmp_path / "x.npy", "--top", "0"), "positive integer"),
                          ((models["cnv"],), "one model and one .npy file")]:
        done = tool(*args)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_the_c_example_builds_with_one_line_and_runs(tmp_path):
    """examples/classify.c, built as its comment says, against the installed header and library."""
    flags = subprocess.run([sys.executable, "-m", "pixelq.runtime.flags"], capture_output=True, text=True,
                           check=True).stdout.split()
    assert f"-I{get_include()}" in flags
    subprocess.run([CC, str(ROOT / "examples" / "classify.c"), "-o", str(tmp_path / "classify"), *flags], check=True)
    images = np.random.default_rng(3).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    images[0].tofile(tmp_path / "image.rgb")
    done = subprocess.run([str(tmp_path / "classify"), str(zoo_path(ZOO[0])), str(tmp_path / "image.rgb")],
                          capture_output=True, text=True)
    runtime = load(f"zoo:{ZOO[0]}")
    assert done.returncode == 0 and done.stdout.strip() == runtime.classes[int(runtime.predict(images)[0])]


def _sanitized(tmp_path, source: Path) -> Path:
    """`source` and the library built with AddressSanitizer and UndefinedBehaviorSanitizer."""
    binary = tmp_path / source.stem
    command = [CC, "-O1", "-g", "-std=c11", "-fopenmp", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
               f"-I{get_include()}", str(source), *map(str, LIBRARY_SOURCES), "-lz", "-lm", "-o", str(binary)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode and "sanitize" in built.stderr:
        pytest.skip(f"this compiler cannot build with the sanitizers: {built.stderr[:200]}")
    assert built.returncode == 0, built.stderr
    return binary


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_the_c_reader_under_sanitizers_survives_damaged_and_hostile_files(tmp_path):
    """Truncated, bit-flipped and overwritten copies of the shipped models (their checksum stops
    them), and hostile manifests with the checksum recomputed (hostile_edit, as the Python fuzz test
    makes them: these reach every op's checks), each loaded and, where it loads, run: never a crash,
    a leak or undefined behaviour under the sanitizers."""
    fuzz = _sanitized(tmp_path, ROOT / "tests" / "c" / "fuzz_load.c")
    rng = random.Random(0)
    hostile = []
    for k in range(120):
        manifest = _zoo_manifest()
        hostile_edit(manifest, rng.choice)
        hostile.append(tmp_path / f"hostile-{k}.pxq")
        _resave_with_manifest(zoo_path("resnet20-w1a2-pe-qlast-r4s"), hostile[-1],
                              lambda m, manifest=manifest: m.clear() or m.update(manifest))
    env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1"}
    for mutations, files in ((150, [zoo_path(name) for name in ZOO]), (2, hostile)):
        done = subprocess.run([str(fuzz), str(mutations), "7", str(tmp_path / "scratch.pxq"), *map(str, files)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        loaded, refused = map(int, done.stdout.split()[1::2])
        assert loaded + refused == len(files) * (mutations + 1) and loaded >= 1 and refused >= 1
