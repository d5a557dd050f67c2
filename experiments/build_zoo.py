"""Build the model zoo shipped in the package (src/pixelq/zoo/): export each headline run's
checkpoint to .pxq and write registry.json with what was measured on it.

    python experiments/build_zoo.py              # after the runs below are finished and benchmarked
    python experiments/build_zoo.py --render     # only README's zoo table, from registry.json

For each model the registry records, all read from files the repository's commands wrote:
- top-1 on the full test split: the integer runtime's, from results/interchange/<run>.json
  (experiments/interchange_eval.py), with PyTorch's from the run's eval.json (`pixelq eval`);
- top-1 on the embedded test images (the 1,000 the package carries), measured here on the runtime,
  which the zoo test checks again after every install;
- BOPs and MACs (`pixelq bitops`), the file size, and the speed ratios of `pixelq bench --model`
  (results/bench/runtime-<run>.json);
- the run's weights-only checkpoint in results/ (for `pixelq train --init`) and its recipe.
The checkpoints are made weights-only here (the optimizer state is dropped): the runs are finished.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

import pixelq
from pixelq.files import write_json
from pixelq.integer import graph_costs, load_model, read_manifest
from pixelq.models import cost_totals
from pixelq.runtime import load
from pixelq.training import read_checkpoint, save_weights_only
from pixelq.training.checkpoint import model_from_checkpoint
from readme_section import README, fill, load as load_json


ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- zoo:start -->", "<!-- zoo:end -->"
ZOO = ROOT / "src" / "pixelq" / "zoo"
# zoo name -> (run folder, one line for the table)
HEADLINE = {
    "resnet20-w1a2-pe-qlast": ("results/recipe/resnet20-w1a2-pe-qlast",
                         "ResNet-20, pixel embedding (d=10, 2 bits), binary weights, 2-bit activations, quantized "
                         "last layer: fully integer"),
    "resnet20-w1a2-pe-qlast-r4s": ("results/recipe/resnet20-w1a2-pe-qlast-r4s",
                                   "as resnet20-w1a2-pe-qlast with a 4-bit residual stream and signed residual branches"),
}
SPEED_KEYS = {"vs_pytorch_fp32_b64": "resnet20_b64_vs_torch_fp32", "vs_onnxruntime_int8_b64": "resnet20_b64_vs_ort_int8",
              "vs_openvino_int8_b64": "resnet20_b64_vs_ov_int8", "vs_pytorch_fp32_b1": "resnet20_b1_vs_torch_fp32",
              "vs_onnxruntime_int8_b1": "resnet20_b1_vs_ort_int8", "vs_openvino_int8_b1": "resnet20_b1_vs_ov_int8"}


def same_model_file(a: Path, b: Path) -> bool:
    """Whether two .pxq files hold the same manifest and the same tensor bytes."""
    (ma, ta), (mb, tb) = read_manifest(a), read_manifest(b)
    return ma == mb and ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)


def build_entry(name: str, run: Path, description: str, embedded) -> dict:
    checkpoint = run / "checkpoint.pt"
    if read_checkpoint(checkpoint)["optimizer"] is not None:  # the run is finished: what --init and eval need
        save_weights_only(checkpoint, checkpoint)
    ckpt = read_checkpoint(checkpoint)
    pxq = ZOO / f"{name}.pxq"
    fresh = ZOO / f"{name}.pxq.new"
    pixelq.export(model_from_checkpoint(ckpt).eval(), fresh, classes=ckpt["classes"], image_shape=ckpt["data"]["image_shape"])
    if pxq.exists() and same_model_file(pxq, fresh):
        fresh.unlink()  # the same model: keep the file's bytes (safetensors orders its metadata differently each run)
    else:
        fresh.replace(pxq)
    runtime = load(pxq)
    predicted = runtime.predict(embedded.images)
    metrics = json.loads((run / "metrics.json").read_text())
    interchange = json.loads((ROOT / "results" / "interchange" / f"{run.name}.json").read_text())["forms"]
    bench_file = ROOT / "results" / "bench" / f"runtime-{run.name}.json"
    bench = json.loads(bench_file.read_text()) if bench_file.is_file() else None
    totals = cost_totals(graph_costs(load_model(pxq), tuple(ckpt["data"]["image_shape"])))
    return {
        "file": pxq.name,
        "sha256": hashlib.sha256(pxq.read_bytes()).hexdigest(),
        "description": description,
        "dataset": f"CIFAR-10-JPEG ({metrics['train_size']} train images, {interchange['pixelq_runtime']['n']} test)",
        "image_shape": ckpt["data"]["image_shape"],
        "classes": ckpt["classes"],
        "recipe": metrics["config"]["recipe"],
        "epochs": metrics["epochs"],
        "top1": round(interchange["pixelq_runtime"]["top1"], 2),
        "top1_pytorch": round(json.loads((run / "eval.json").read_text())["top1"], 2),
        "embedded_top1": round(100.0 * float(np.mean(predicted == embedded.labels)), 2),
        "embedded_n": len(embedded.labels),
        "embedded_tolerance": 0.0,  # integer-only: the same labels on every instruction set
        "macs": totals["macs"],
        "bops": totals["bops"],
        "size_bytes": pxq.stat().st_size,
        "speed": ({k: round(bench["ratios"][v], 2) for k, v in SPEED_KEYS.items() if v in bench["ratios"]}
                  | {"kernels": bench["runtime_isa"], "cpu": bench["cpu"]["model"], "cpu_flags": bench["cpu"]["flags"],
                     "source": str(bench_file.relative_to(ROOT))} if bench else None),
        "checkpoint": str(checkpoint.relative_to(ROOT)),
        "sources": [str((run / "metrics.json").relative_to(ROOT)),
                    f"results/interchange/{run.name}.json"],
    }


def render(models: dict) -> str:
    """README's zoo table, and where the numbers stand against the field once the JPEG copy is calibrated."""
    kernels = sorted({(m["speed"] or {}).get("kernels", "?") for m in models.values()})
    cpus = sorted({(m["speed"] or {}).get("cpu", "?") for m in models.values()})
    lines = [START, "", "Trained on CIFAR-10-JPEG (50,000 train images; top-1 on its 10,000 test images, on the integer "
             "runtime); speed = the baseline's time for a float ResNet-20 (PyTorch fp32; ONNX Runtime and OpenVINO "
             "running its int8 QDQ form) / pixelq's time for the network, batch 64, 1 thread, timed in turns in one run "
             f"(`pixelq bench --model` on {', '.join(cpus)}, pixelq's {', '.join(kernels)} kernels; "
             "`python experiments/build_zoo.py` writes "
             "the registry and this table).", "",
             "| `zoo:NAME` | network | top-1 % | .pxq | BOPs | vs PyTorch fp32 | vs ONNX Runtime int8 | vs OpenVINO int8 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    keys = ("vs_pytorch_fp32_b64", "vs_onnxruntime_int8_b64", "vs_openvino_int8_b64")
    for name, m in models.items():
        speed = m["speed"] or {}
        ratio = [f"{speed[k]:.2f}x" if k in speed else "not measured" for k in keys]
        lines.append(f"| `{name}` | {m['description']} | {m['top1']:.2f} | {m['size_bytes'] / 1000:.0f} KB | "
                     f"{m['bops'] / 1e6:.0f} M | {' | '.join(ratio)} |")
    calibration = load_json(ROOT / "results" / "calibration" / "summary.json")
    field = json.loads((ROOT / "experiments" / "field_numbers.json").read_text())["rows"]
    lines += ["", "The field reports, on the original (lossless) CIFAR-10: " +
              "; ".join(f"{r['network']} {r['top1']:.2f} % ({r['source']})" for r in field) + "."]
    if calibration and calibration["ours"]:
        lines[-1] += (f" Our JPEG copy costs {calibration['penalty']:.2f} points on airbench94 ({calibration['published']:.2f} % "
                      f"published, {calibration['mean']:.2f} % here over {len(calibration['ours'])} seed(s); "
                      "[docs/results.md](docs/results.md#calibration-what-the-jpeg-copy-costs)).")
    else:
        lines[-1] += " How much our JPEG copy costs against those is being measured (airbench94 calibration)."
    return "\n".join(lines + ["", END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", action="store_true", help="only re-render README's zoo table from registry.json")
    if parser.parse_args().render:
        fill(README, START, END, render(json.loads((ZOO / "registry.json").read_text())["models"]))
        return
    embedded = pixelq.load_dataset().test
    models = {name: build_entry(name, ROOT / run, text, embedded) for name, (run, text) in HEADLINE.items()}
    write_json(ZOO / "registry.json", {"models": models,
                                       "command": "python experiments/build_zoo.py"})
    fill(README, START, END, render(models))
    for name, entry in models.items():
        print(f"{name}: top-1 {entry['top1']} % (embedded {entry['embedded_top1']} % of {entry['embedded_n']}), "
              f"{entry['size_bytes']} bytes")


if __name__ == "__main__":
    main()
