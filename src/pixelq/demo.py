"""`pixelq demo`: a float ResNet-20 and the same network fully quantized, trained side by side.

Fully quantized = pixel-embedding first layer (shared table, d=10, 2-bit codes), binary weights
and 2-bit activations inside, binary quantized last layer. The quantized one is then exported and
run on the integer runtime. Writes OUT/report.md, OUT/report.json, OUT/pixel_embedding.png,
OUT/w1a2-pe-qlast.pxq, and each run's folder.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from . import runtime
from .data import load_dataset
from .errors import ConfigError
from .exporting import export
from .exporting.verify import label_agreement
from .models import fully_quantized
from .training import TrainConfig, load_checkpoint, train

DEMO_EPOCHS = 15
RUNS = {
    "float": dict(first_layer="float", wbits=32, abits=32, last_layer="float"),
    "w1a2-pe-qlast": fully_quantized(),
}


def plot_embedding(model, path: Path) -> None:
    """One curve per embedding dimension over pixel value 0..255 (quantized table; one panel per table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pe = model.stem.encoder
    with torch.no_grad():
        table = pe.quantized_table().cpu().numpy()
    names = ["shared"] if pe.shared else [f"channel {c}" for c in range(len(table))]
    fig, axes = plt.subplots(1, len(table), figsize=(6.5 * len(table), 3.5), squeeze=False)
    for ax, t, name in zip(axes[0], table, names):
        for j in range(t.shape[1]):
            ax.plot(range(256), t[:, j] + 0.04 * j, lw=1, label=f"dim {j}")
        ax.set_xlabel("pixel value")
        ax.set_ylabel("quantized code value (offset per dim)")
        ax.set_title(f"learned pixel embedding ({name}, d={pe.d}, {pe.bits}-bit)")
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the curves, not on them
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _images_per_s(predict, images, batch_size: int = 250) -> tuple:
    """(predictions, images/s) of `predict` over `images` in batches."""
    t0 = time.perf_counter()
    labels = np.concatenate([predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    return labels, len(images) / (time.perf_counter() - t0)


def deployment(quantized, float_model, test, out_dir: Path) -> dict:
    """Export the quantized model, run it on the integer runtime, and time it against PyTorch fp32
    running the float model on the same images in the same process."""
    path = out_dir / "w1a2-pe-qlast.pxq"
    export(quantized, path)
    rt = runtime.load(path)
    agreement = label_agreement(quantized, rt, test.images)
    with torch.no_grad():
        _, torch_speed = _images_per_s(lambda x: float_model(torch.as_tensor(x)).argmax(1).numpy(), test.images)
    labels, runtime_speed = _images_per_s(rt.predict, test.images)
    return {"runtime_top1": 100.0 * float((labels == test.labels).mean()), "test_images": len(test.images),
            "agreement_with_fake_quant": 100.0 * agreement["same"] / agreement["n"],
            "labels_differ_at_logit_ties": agreement["differ_at_logit_ties"],
            "labels_differ_at_float_ties": agreement["differ_at_float_ties"],
            "labels_differ_unexplained": agreement["differ_unexplained"],
            "runtime_images_per_s": runtime_speed, "torch_fp32_images_per_s": torch_speed,
            "speedup_vs_torch_fp32": runtime_speed / torch_speed, "file_bytes": path.stat().st_size,
            "runtime_backend": rt.backend, "threads": torch.get_num_threads()}


def render_report(rows: list, epochs: int, train_size: int, test_size: int, source: str, deployed: dict) -> str:
    lines = [
        "# pixelq demo: float vs fully quantized ResNet-20",
        "",
        f"{source}: {train_size} train images, top-1 on {test_size} test images; {epochs} epochs each, same "
        "schedule and seed.",
        "",
        "| run | top-1 % | top-5 % | model size |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['top1']:.2f} | {r['top5']:.2f} | {r['model_size_bytes'] / 1024:.1f} KiB |")
    d = deployed
    lines += ["", "Model size: weights at their bit width, other parameters at 32 bits. Training speed is not timed "
              "here (one run swings with the machine's load); `pixelq bench-train` times float against quantized "
              "steps in interleaved rounds.", "",
              "Integer-only runtime on the exported w1a2-pe-qlast (`.pxq`, "
              f"{d['file_bytes'] / 1024:.1f} KiB, {d['runtime_backend']} kernels, {d['threads']} threads):", "",
              "| top-1 % | labels equal to fake-quant PyTorch | the rest: at integer-logit ties / float ties / unexplained "
              "| images/s "
              "| PyTorch fp32 float model images/s | speed-up |",
              "|---:|---:|---:|---:|---:|---:|",
              f"| {d['runtime_top1']:.2f} | {d['agreement_with_fake_quant']:.2f} % | {d['labels_differ_at_logit_ties']} / "
              f"{d['labels_differ_at_float_ties']} / "
              f"{d['labels_differ_unexplained']} | {d['runtime_images_per_s']:.0f} | "
              f"{d['torch_fp32_images_per_s']:.0f} | {d['speedup_vs_torch_fp32']:.2f}x |",
              "", "![learned pixel embedding](pixel_embedding.png)", ""]
    return "\n".join(lines)


def run_demo(out: str = "runs/demo", data: "str | None" = None, epochs: "int | None" = None, progress: bool = True) -> list:
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"--epochs must be a positive integer, got {epochs!r}")
    out_dir = Path(out)
    epochs = epochs or DEMO_EPOCHS
    splits = load_dataset(data)
    rows = []
    for name, kwargs in RUNS.items():
        print(f"== training {name} ({epochs} epochs)", flush=True)
        cfg = TrainConfig(model="resnet20", data=data, out=str(out_dir / name), epochs=epochs, progress=progress,
                          **kwargs)
        metrics = train(cfg, data=splits, overwrite=True)  # the demo's own folder: a rerun replaces it
        rows.append({"run": name, **{k: metrics[k] for k in ("top1", "top5", "train_images_per_s", "model_size_bytes")}})
    quantized = load_checkpoint(out_dir / "w1a2-pe-qlast" / "checkpoint.pt")
    plot_embedding(quantized, out_dir / "pixel_embedding.png")
    deployed = deployment(quantized, load_checkpoint(out_dir / "float" / "checkpoint.pt"), splits.test, out_dir)
    report = render_report(rows, epochs, len(splits.train), len(splits.test),
                           data or "the embedded CIFAR-10-JPEG subset", deployed)
    (out_dir / "report.json").write_text(json.dumps({"epochs": epochs, "rows": rows, "deployment": deployed},
                                                    indent=2) + "\n")
    (out_dir / "report.md").write_text(report)
    print(report)
    return rows
