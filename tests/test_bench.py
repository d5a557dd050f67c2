"""Benchmark commands run and write what they promise (their numbers are not judged here)."""
import json

import pytest

from pixelq.bench import train_step_throughput
from pixelq.cli import main


def test_train_step_throughput_times_every_variant():
    result = train_step_throughput(batch_size=4, steps=1, warmup=1, rounds=1, image_size=8, threads=1)
    names = {"float", "w1a2-float-first", "w1a2-pe-qlast", "w1a2-pe-qlast-pytorch-ops", "w1a2-pe-qlast+kd",
             "w1a2-pe-qlast+saq"}
    assert set(result["step_s"]) == names
    assert all(v > 0 for v in result["step_s"].values())
    assert set(result["ratios"]) == {f"{n}_step_vs_float" for n in names - {"float"}}


@pytest.mark.slow
def test_train_step_throughput_times_a_compiled_variant_apart_from_its_compile():
    result = train_step_throughput(variants={"float": {"model": {}}}, batch_size=4, steps=1, warmup=2, rounds=1,
                                   image_size=8, threads=1, compiled=True)
    assert set(result["step_s"]) == {"float", "w1a2-pe-qlast+compile"}
    assert result["compile_s"]["w1a2-pe-qlast+compile"] > result["step_s"]["w1a2-pe-qlast+compile"]


def test_bench_data_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "data.json"
    assert main(["bench-data", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 5000 and result["augment_images_per_s"] > 0
    assert "images/s" in capsys.readouterr().out


@pytest.mark.slow
def test_runtime_benchmark_reports_every_ratio():
    pytest.importorskip("onnxruntime")
    from pixelq.bench import run_benchmark
    from pixelq.runtime.fast import kernels_available

    if not kernels_available():
        pytest.skip("C kernels not built")
    result = run_benchmark(batch_sizes=(1, 2), thread_counts=(1, 2), repeats=1, image_size=8)
    keys = ["conv3x3_w1a1_vs_torch_fp32", "conv3x3_w1a2_vs_torch_fp32", "resnet20_b2_vs_torch_fp32",
            "resnet20_b2_vs_ort_int8", "resnet20_b1_vs_torch_fp32", "first_layer_vs_float",
            "resnet20_b2_vs_ort_qdq_same_model", "resnet20_b1_vs_ort_int8", "resnet20_b1_libpixelq_vs_ort_int8",
            "resnet20_b2_libpixelq_vs_ort_int8"]
    if result["openvino_version"] is not None:  # the bench extra installs it
        keys += [f"resnet20_b{b}_vs_ov_{form}" for b in (1, 2) for form in ("fp32", "int8")]
        keys += [f"resnet20_b{b}_libpixelq_vs_ov_int8" for b in (1, 2)]
    for key in keys:
        assert result["ratios"][key] > 0 and result["ratios"][key + "_2t"] > 0
    assert "stages.2.2.conv2" in result["times"]["threads_1"]["layers_s"]
    alone = result["times"]["libpixelq_alone"]  # 1 and 2 threads timed in a process of their own
    assert result["ratios"]["resnet20_b2_libpixelq_2t_vs_1t_alone"] == alone["threads_1_s"] / alone["threads_2_s"] > 0


def test_bench_data_times_decoding_and_streaming_on_folders(tmp_path, capsys):
    from conftest import make_splits, write_image_dataset

    folders = write_image_dataset(tmp_path, make_splits(n_train=40, n_test=12))
    out = tmp_path / "data.json"
    assert main(["bench-data", "--folders", str(folders), "--decode-images", "30", "--json", str(out)]) == 0
    decode = json.loads(out.read_text())["decode"]
    assert decode["images"] == 30
    assert set(decode["decode_images_per_s_one_process"]) == {"pillow", "pixelq"}
    assert set(decode["streamed_images_per_s_by_workers"]) == {"1", "2"}
    assert "worker" in capsys.readouterr().out


def test_bench_on_avx2_holds_the_baselines_to_avx2(monkeypatch):
    """`pixelq bench --isa avx2` starts itself again with the environment that holds PyTorch (ATen
    and oneDNN) and OpenVINO's oneDNN to AVX2, the same arguments after it; that environment does
    hold PyTorch (where the CPU has AVX2); and the result says what was asked and what was not set."""
    import os
    import subprocess
    import sys

    from pixelq.bench.inference import BASELINE_ISA_ENV, baseline_isas

    held = BASELINE_ISA_ENV["avx2"]
    for key in held:
        monkeypatch.delenv(key, raising=False)
    started = {}

    def execve(path, argv, env):
        started.update(path=path, argv=argv, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", execve)
    with pytest.raises(SystemExit):
        main(["bench", "--isa", "avx2", "--repeats", "3"])
    assert started["argv"][1:] == ["-m", "pixelq", "bench", "--isa", "avx2", "--repeats", "3"]
    assert all(started["env"][k] == v for k, v in held.items())
    report = baseline_isas("avx2", {})
    assert report["asked"] == held and sorted(report["not_set"]) == sorted(held)
    assert "no switch" in report["onnxruntime"]
    if "avx2" in open("/proc/cpuinfo").read():
        capability = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                                    env={**os.environ, **held}, capture_output=True, text=True, check=True).stdout
        assert capability.strip() == "AVX2"


def test_signal_stack_kept_gives_the_thread_its_own_alternate_stack_back():
    """What OpenVINO's CPU plugin may leave behind (an alternate signal stack in memory it freed) is
    undone: the thread's stack is the one it had before, and what the block handed over is cleared."""
    import ctypes

    from pixelq.bench.inference import _SignalStack, signal_stack_kept

    libc = ctypes.CDLL(None, use_errno=True)

    def current():
        ss = _SignalStack()
        assert libc.sigaltstack(None, ctypes.byref(ss)) == 0
        return ss.sp, ss.flags, ss.size

    before = current()
    foreign = ctypes.create_string_buffer(65536)
    with signal_stack_kept() as held:
        ss = _SignalStack(ctypes.addressof(foreign), 0, len(foreign))
        assert libc.sigaltstack(ctypes.byref(ss), None) == 0
        assert current()[0] == ctypes.addressof(foreign)
        requests = {"fp32": object()}
        held.append(requests)
    assert current() == before and requests == {}
