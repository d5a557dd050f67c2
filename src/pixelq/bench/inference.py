"""`pixelq bench`: the integer runtime against PyTorch fp32 (oneDNN), ONNX Runtime int8 and, where it is
installed, OpenVINO fp32 and int8 (the same float and QDQ ONNX files ONNX Runtime runs), in one run.

Every time is the best of `repeats` calls after a warm-up, all in one process with the same thread
count, the contenders of a comparison taking turns call by call, so the ratios (speed-up = baseline
time / pixelq time) survive a noisy machine better than the raw times do.

With `--isa avx2` the baselines are held to AVX2 too where they allow it (`BASELINE_ISA_ENV`, set
before they load: `pixelq bench` restarts itself with it), so that the ratios describe an AVX2-only
CPU; the result records what each baseline ran (`baseline_isas`). PyTorch takes ATEN_CPU_CAPABILITY
and its oneDNN ONEDNN_MAX_CPU_ISA; OpenVINO's CPU plugin runs its convs on its own oneDNN, which
takes the same variable (its runtime model names each primitive's ISA, which the result counts);
ONNX Runtime has no such switch: MLAS picks its kernels by CPUID at run time, and only a build from
source can leave AVX-512 out (onnxruntime issues #12479 and #20215), so it keeps the best the CPU has.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from ..exporting import export, lower_plain
from ..exporting.qdq import to_qdq
from ..integer import IntegerModel
from ..models import create_model, fully_quantized
from ..runtime import load
from ..runtime import clib
from ..runtime.fast import FastExecutor, choose_isa, pack_conv_weight, pad_thresholds, padded_channels

# The environment that holds the baselines to the runtime's instruction set, where one exists.
BASELINE_ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
ONNXRUNTIME_ISA = ("its own choice: MLAS picks its kernels by CPUID and has no switch to hold it to an instruction "
                   "set (onnxruntime issues #12479, #20215)")
DEFAULT_MODEL = fully_quantized()
# The multi-bit network of the comparison: 16 plane pairs per conv, so the runtime runs dot products.
W4A4_MODEL = fully_quantized(first_layer_kwargs={"d": 10, "bits": 4}, wbits=4, abits=4)


def best_times(fns: dict, repeats: int) -> dict:
    """{name: best seconds of `repeats` calls}. The contenders take turns, so a slow spell of the
    machine hits all of them alike; each turn is an untimed call then a timed one, so the timed
    call finds the caches warm with its own data, not the last contender's."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def calls_at(batch: int, repeats: int) -> int:
    """Turns for a batch: `repeats`, times 64 / batch up to 8x for small batches, whose calls take a
    fraction of a millisecond (a best of 10 such calls still moved a batch-1 ratio by 1.5x)."""
    return repeats * min(8, max(1, 64 // batch))


# Run by `threads_alone` in a process of its own: libpixelq on 1 and on 2 threads, in turns (best_times).
_ALONE = """
import json, sys
import numpy as np
from pixelq.bench.inference import best_times
from pixelq.runtime import clib
path, batch, repeats, isa = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] or None
models = {n: clib.Model(path, threads=n, isa=isa) for n in (1, 2)}
x = np.random.default_rng(0).integers(0, 256, (batch, *models[1].image_shape), dtype=np.uint8)
print(json.dumps(best_times({f"threads_{n}_s": (lambda m=m: m.logits(x)) for n, m in models.items()}, repeats)))
"""


def threads_alone(model_path, batch: int, repeats: int, isa: "str | None") -> dict:
    """{"threads_1_s", "threads_2_s"}: libpixelq (pxq_load, pxq_logits) on 1 and 2 threads, timed in
    a process that runs nothing else, so no other engine's thread pool (PyTorch's OpenMP, OpenVINO's
    TBB) spins on the cores between its calls."""
    done = subprocess.run([sys.executable, "-c", _ALONE, str(model_path), str(batch), str(repeats), isa or ""],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def calibrated(model: nn.Module, images: np.ndarray) -> nn.Module:
    """Batch-norm statistics from `images` (a model with random weights still needs real statistics
    to have thresholds in range), then eval mode."""
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), 64):
            model(torch.as_tensor(images[i:i + 64]))
    return model.eval()


def ort_int8_session(float_model: nn.Module, calibration: np.ndarray, threads: int, workdir: Path):
    """ONNX Runtime session of the float model after static QDQ int8 quantization
    (per-channel int8 weights, uint8 activations calibrated on `calibration`)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32_path, int8_path = workdir / "float.onnx", workdir / "int8.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter warns about its own deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(float_model, (torch.as_tensor(calibration[:1]),), str(fp32_path), dynamo=False,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "n"}},
                          opset_version=17)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    return ort_session(str(int8_path), threads)


def openvino_requests(workdir: Path, threads: int, batch_sizes, image_shape: tuple) -> dict:
    """{(form, batch): an OpenVINO infer request}, form "fp32" (float.onnx) or "int8" (int8.onnx, the
    QDQ file `ort_int8_session` wrote), each compiled for its batch of `image_shape` (H, W, C) images
    on `threads` threads; {} without the openvino package (pip install 'pixelq[bench]')."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    core, requests = ov.Core(), {}
    for form, name in (("fp32", "float.onnx"), ("int8", "int8.onnx")):
        for batch in batch_sizes:
            model = core.read_model(str(workdir / name))
            model.reshape({"image": [batch, *image_shape]})
            compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
            requests[form, batch] = compiled.create_infer_request()
    return requests


class _SignalStack(ctypes.Structure):  # Linux's stack_t
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]


@contextlib.contextmanager
def signal_stack_kept():
    """Give the calling thread its alternate signal stack back after OpenVINO: every container
    appended to the yielded list (the dicts of OpenVINO requests) is cleared, its objects freed, and
    then the thread's own stack is put back.

    OpenVINO's CPU plugin gives the thread that compiles a model an alternate signal stack of its own
    (mmap'ed, for AMX: openvinotoolkit/openvino#11894) and puts the old one back when it is freed;
    freed out of order, it leaves the thread pointing at unmapped memory, and the next signal handled
    there (a SIGCHLD under the handler torch's DataLoader installs) kills the process with SIGSEGV."""
    held: list = []
    libc = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None
    saved = _SignalStack()
    if libc is None or libc.sigaltstack(None, ctypes.byref(saved)) != 0:
        libc = None  # not Linux-like: nothing to keep
    try:
        yield held
    finally:
        for container in held:
            container.clear()
        gc.collect()
        if libc is not None:
            libc.sigaltstack(ctypes.byref(saved), None)


def openvino_primitive_isas(requests: dict) -> dict:
    """{form: {isa: primitives}}: what OpenVINO's compiled models run, by the instruction set each
    primitive's type names (jit_avx2_I8, brgconv_avx512_f32, ...: avx512, avx2, or other for
    reference and ISA-free ones), from the first request of each form."""
    out = {}
    for (form, _), request in requests.items():
        if form in out:
            continue
        counts = {}
        for op in request.get_compiled_model().get_runtime_model().get_ops():
            kind = op.get_rt_info()["primitiveType"].astype(str) if "primitiveType" in op.get_rt_info() else ""
            isa = "avx512" if "avx512" in kind else "avx2" if "avx2" in kind else "other"
            counts[isa] = counts.get(isa, 0) + 1
        out[form] = counts
    return out


def baseline_isas(isa: str, openvino: dict) -> dict:
    """What each baseline ran, for the result: PyTorch's ATen capability, the cap its oneDNN was given,
    OpenVINO's primitives by instruction set, and ONNX Runtime's (not selectable)."""
    held = BASELINE_ISA_ENV.get(isa, {})
    missing = [k for k, v in held.items() if os.environ.get(k) != v]
    return {"asked": held or "none (the runtime runs the best this CPU has, and so do the baselines)",
            "not_set": missing,  # variables `pixelq bench` could not set before the baselines loaded
            "pytorch_aten": torch.backends.cpu.get_cpu_capability(),
            "pytorch_onednn": os.environ.get("ONEDNN_MAX_CPU_ISA", "its own choice"),
            "openvino_primitives": openvino_primitive_isas(openvino) if openvino else None,
            "onnxruntime": ONNXRUNTIME_ISA}


def openvino_version() -> "str | None":
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.__version__


def ort_session(model, threads: int):
    """An ONNX Runtime CPU session of `model` (a path or serialized bytes) on `threads` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def conv_layer_times(abits: int, threads: int, repeats: int, isa: str, batch: int = 64, size: int = 32,
                     channels: int = 64) -> dict:
    """One 3x3 conv, channels -> channels, batch x size x size: pixelq W1A{abits} (pack + conv +
    thresholds, as in the network) against PyTorch fp32 conv2d."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**abits, (batch, size, size, channels)).astype(np.uint8)
    weight = np.where(rng.random((channels, 3, 3, channels)) < 0.5, -1, 1).astype(np.int32)
    packed = pack_conv_weight(weight, -1, 2, 1)
    thresholds = np.sort(rng.integers(-20, 20, (channels, 2**abits - 1)), axis=1).astype(np.int32)
    direction, thresholds = pad_thresholds(np.ones(channels, np.int8), thresholds)
    out = np.empty((batch, size, size, channels), np.uint8)

    layer = clib.Call(clib.ConvParams, kind="planes", batch=batch, height=size, width=size, channels=channels,
                      input_planes=abits, weights=packed, kernel_h=3, kernel_w=3, weight_bits=1, weight_lowest=-1,
                      weight_stride=2, out_channels=channels, out_channels_padded=padded_channels(channels), stride=1,
                      pad=1, direction=direction, thresholds=thresholds, levels=thresholds.shape[0], qmin=0,
                      threads=threads, isa=isa)

    def pixelq_layer():
        layer(input=codes, out=out)

    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    x = torch.randn(batch, channels, size, size)
    with torch.no_grad():
        return best_times({"pixelq_s": pixelq_layer, "torch_fp32_s": lambda: conv(x)}, repeats)


def layer_profile(runtime, images: np.ndarray, repeats: int) -> dict:
    """Seconds per node of the executor's plan for one batch, best of `repeats`, as the runtime runs
    it (the net times its steps): a fused conv (`fusion.plan`) is timed under its conv's name and
    includes the thresholds (and the residual add, and for the first conv the lookup) fused into it."""
    return FastExecutor(runtime.model, runtime.threads, isa=runtime.isa).profile(images, repeats)


def first_layer_times(float_model: nn.Module, runtime, images: np.ndarray, repeats: int) -> dict:
    """Pixel embedding LUT + binary conv (pixelq) against the float first conv (PyTorch fp32, on
    normalised float input), one batch, through the first activation."""
    nodes = runtime.model.nodes[:3]  # lut, conv, threshold
    stem = IntegerModel(nodes, runtime.model.tensors, {**runtime.model.meta, "output": nodes[-1].name})
    executor = FastExecutor(stem, runtime.threads, isa=runtime.isa)
    x = torch.as_tensor(images)
    with torch.no_grad():
        return best_times({"pixelq_s": lambda: executor.output(images),
                           "torch_fp32_s": lambda: float_model.stem(float_model.to_nchw(x))}, repeats)


def cpu_description() -> dict:
    """The CPU the times were taken on: its model name, and the flags that matter to the contenders
    (from /proc/cpuinfo where there is one, else the kernels' own feature check)."""
    import platform

    wanted = {"avx2", "fma", "popcnt", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vpopcntdq",
              "avx512_bitalg", "avx512_vnni", "avx_vnni", "amx_int8"}
    info = {"machine": platform.machine(), "model": platform.processor() or None, "flags": None}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not info["model"]:
            info["model"] = value.strip()
        if key.strip() == "flags" and info["flags"] is None:
            info["flags"] = sorted(wanted & set(value.split()))
    if info["flags"] is None:
        info["flags"] = sorted(name for name, present in clib.cpu_features().items() if present)
    return info


def run_benchmark(model_path: "str | None" = None, batch_sizes=(1, 64), thread_counts=(1, 2), repeats: int = 5,
                  image_size: int = 32, isa: "str | None" = None) -> dict:
    """The comparison `pixelq bench` prints; see the module docstring. Without `model_path` a W1A2
    ResNet-20 with pixel embedding is built (random weights, calibrated batch norm) and exported; a
    W4A4 one (dot-product convs) is always timed next to it.
    `isa` chooses pixelq's kernels (default: the best this CPU has); the baselines run what the
    environment allows them (BASELINE_ISA_ENV: the caller sets it before they load, as `pixelq bench`
    does), which the result records (`baseline_isas`) next to the CPU's flags."""
    if not clib.available():
        raise ExportError("pixelq bench needs the C kernels; reinstall pixelq with a C compiler present")
    isa = choose_isa(isa)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(batch_sizes), image_size, image_size, 3), dtype=np.uint8)
    calibration = rng.integers(0, 256, (128, image_size, image_size, 3), dtype=np.uint8)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, signal_stack_kept() as openvino_held:
        tmp = Path(tmp)
        qdq = None  # the same W1A2 network as QDQ ONNX, when it is built here (a .pxq has no QDQ form)
        if model_path is None:
            model_path = tmp / "resnet20-w1a2-pe.pxq"
            w1a2 = calibrated(create_model("resnet20", **DEFAULT_MODEL), calibration)
            export(w1a2, model_path, image_shape=(image_size, image_size, 3))
            qdq = to_qdq(lower_plain(w1a2, (image_size, image_size, 3))).SerializeToString()
        float_model = calibrated(create_model("resnet20"), calibration)
        w4a4_path = tmp / "resnet20-w4a4-pe.pxq"
        export(calibrated(create_model("resnet20", **W4A4_MODEL), calibration), w4a4_path)
        result = {"model": str(model_path), "image_size": image_size, "repeats": repeats, "times": {}, "ratios": {},
                  "runtime_isa": isa, "openvino_version": openvino_version(), "cpu": cpu_description()}
        for threads in thread_counts:
            torch.set_num_threads(threads)
            suffix = "" if threads == 1 else f"_{threads}t"
            runtime = load(model_path, threads=threads, isa=isa)
            c_model = clib.Model(model_path, threads=threads, isa=isa)  # libpixelq alone: pxq_load, pxq_logits
            if c_model.image_shape != (image_size, image_size, 3):
                raise ExportError(f"{model_path} records images of shape {c_model.image_shape}, not the benchmark's "
                                  f"{(image_size, image_size, 3)}; export it with its image shape")
            w4a4 = load(w4a4_path, threads=threads, isa=isa)
            session = ort_int8_session(float_model, calibration, threads, tmp)
            same_model = ort_session(qdq, threads) if qdq is not None else None
            openvino = openvino_requests(tmp, threads, batch_sizes, (image_size, image_size, 3))
            openvino_held.append(openvino)  # freed together at the end, then the signal stack restored
            result["kernels"] = {name: FastExecutor(rt.model, isa=isa).kernels()
                                      for name, rt in (("w1a2", runtime), ("w4a4", w4a4))}
            result["baseline_isas"] = baseline_isas(isa, openvino)
            times = {}
            for batch in batch_sizes:
                x = images[:batch]
                with torch.no_grad():
                    times.update(best_times({f"b{batch}_torch_fp32_s": lambda: float_model(torch.as_tensor(x)),
                                             f"b{batch}_ort_int8_s": lambda: session.run(None, {"image": x}),
                                             f"b{batch}_pixelq_s": lambda: runtime.logits(x),
                                             f"b{batch}_libpixelq_s": lambda: c_model.logits(x),
                                             f"b{batch}_pixelq_w4a4_s": lambda: w4a4.logits(x),
                                             **({f"b{batch}_ort_qdq_same_model_s": lambda: same_model.run(None, {"image": x})}
                                                if same_model is not None else {}),
                                             **{f"b{batch}_ov_{form}_s": (lambda r=r: r.infer({"image": x}))
                                                for (form, b), r in openvino.items() if b == batch}},
                                            calls_at(batch, repeats)))
            for abits in (1, 2):
                layer = conv_layer_times(abits, threads, repeats, isa)
                times[f"conv3x3_w1a{abits}_pixelq_s"], times[f"conv3x3_w1a{abits}_torch_fp32_s"] = \
                    layer["pixelq_s"], layer["torch_fp32_s"]
                result["ratios"][f"conv3x3_w1a{abits}_vs_torch_fp32{suffix}"] = layer["torch_fp32_s"] / layer["pixelq_s"]
            first = first_layer_times(float_model, runtime, images[:max(batch_sizes)], repeats)
            times["first_layer_pixelq_s"], times["first_layer_torch_fp32_s"] = first["pixelq_s"], first["torch_fp32_s"]
            times["layers_s"] = layer_profile(runtime, images[:max(batch_sizes)], repeats)
            big = max(batch_sizes)
            ratios = result["ratios"]
            ratios[f"resnet20_b{big}_vs_torch_fp32{suffix}"] = times[f"b{big}_torch_fp32_s"] / times[f"b{big}_pixelq_s"]
            ratios[f"resnet20_b{big}_vs_ort_int8{suffix}"] = times[f"b{big}_ort_int8_s"] / times[f"b{big}_pixelq_s"]
            ratios[f"resnet20_b1_vs_torch_fp32{suffix}"] = times["b1_torch_fp32_s"] / times["b1_pixelq_s"]
            for form in ("fp32", "int8") if openvino else ():
                for batch in batch_sizes:
                    ratios[f"resnet20_b{batch}_vs_ov_{form}{suffix}"] = (times[f"b{batch}_ov_{form}_s"]
                                                                        / times[f"b{batch}_pixelq_s"])
            ratios[f"resnet20_b1_vs_ort_int8{suffix}"] = times["b1_ort_int8_s"] / times["b1_pixelq_s"]
            for batch in batch_sizes:  # the C library on its own, without the Python runtime around it
                for other in ("ort_int8", *(("ov_int8",) if openvino else ())):
                    ratios[f"resnet20_b{batch}_libpixelq_vs_{other}{suffix}"] = (times[f"b{batch}_{other}_s"]
                                                                                / times[f"b{batch}_libpixelq_s"])
            if same_model is not None:  # the same W1A2 network, `pixelq export --format onnx`, on ONNX Runtime
                ratios[f"resnet20_b{big}_vs_ort_qdq_same_model{suffix}"] = (times[f"b{big}_ort_qdq_same_model_s"]
                                                                           / times[f"b{big}_pixelq_s"])
            ratios[f"resnet20_w4a4_b{big}_vs_ort_int8{suffix}"] = times[f"b{big}_ort_int8_s"] / times[f"b{big}_pixelq_w4a4_s"]
            ratios[f"resnet20_w4a4_b{big}_vs_torch_fp32{suffix}"] = (times[f"b{big}_torch_fp32_s"]
                                                                    / times[f"b{big}_pixelq_w4a4_s"])
            times["layers_w4a4_s"] = layer_profile(w4a4, images[:big], repeats)
            ratios[f"first_layer_vs_float{suffix}"] = first["torch_fp32_s"] / first["pixelq_s"]
            result["times"][f"threads_{threads}"] = times
        if 2 in thread_counts:  # the thread scaling, without the other engines' pools around it
            alone = threads_alone(model_path, max(batch_sizes), repeats, isa)
            result["times"]["libpixelq_alone"] = alone
            result["ratios"][f"resnet20_b{max(batch_sizes)}_libpixelq_2t_vs_1t_alone"] = \
                alone["threads_1_s"] / alone["threads_2_s"]
    return result
