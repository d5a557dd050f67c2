"""CNV W1A2 side by side: Brevitas (its bnn_pynq CNV, 8-bit input layer) and pixelq (pixel embedding
first layer), trained on the same data, epochs, batch, seed and optimiser, then deployed: Brevitas's
model exported to ONNX (QCDQ) and run by ONNX Runtime, pixelq's exported to .pxq and run by the
integer runtime. (Brevitas's QCDQ export, the form ONNX Runtime accelerates, refuses binary weights;
its model is exported as traced, fake-quant arithmetic in float.)

    pip install 'pixelq[compare]'   # brevitas, in an optional extra
    python experiments/brevitas_cnv.py --data DATA [--epochs 2] [--train-subset 10000] \
        [--json results/brevitas/cnv_w1a2.json]
    python experiments/brevitas_cnv.py --render results/brevitas/cnv_w1a2.json   # docs/results.md's table from the JSON

One loop trains both (Adam, cosine schedule, pixelq's uint8 crop + flip augmentation, the same
batches): Brevitas's CNV takes the images as floats in [0, 1] (its first layer maps them to
[-1, 1] and quantizes to 8 bits), pixelq's takes the uint8 bytes. Reported: test top-1 of each,
train images/s (the whole step), and batch-64 inference time of each deployed model with the
ratio, timed in turns on one thread (`best_times`). Pause other work on the machine while it runs.
"""
import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

import pixelq
from pixelq.bench.inference import best_times, cpu_description
from pixelq.data import batches, load_dataset
from pixelq.models import fully_quantized
from pixelq.training import evaluate
from readme_section import RESULTS_PAGE, fill, load

START, END = "<!-- brevitas:start -->", "<!-- brevitas:end -->"


def brevitas_cnv(classes: int, channels: int):
    """Brevitas's own CNV W1A2 from its bnn_pynq example (8-bit input quantizer)."""
    try:
        from brevitas_examples.bnn_pynq.models.CNV import cnv
    except ImportError as e:
        raise SystemExit("this comparison needs Brevitas: pip install 'pixelq[compare]'") from e
    from configparser import ConfigParser

    cfg = ConfigParser()
    cfg["QUANT"] = {"WEIGHT_BIT_WIDTH": "1", "ACT_BIT_WIDTH": "2", "IN_BIT_WIDTH": "8"}
    cfg["MODEL"] = {"NUM_CLASSES": str(classes), "IN_CHANNELS": str(channels)}
    return cnv(cfg)


class FloatImages(torch.nn.Module):
    """uint8 NHWC -> float NCHW in [0, 1], as Brevitas's examples feed their models."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.permute(0, 3, 1, 2).float() / 255.0)


def train(model, data, args) -> float:
    """The shared loop; returns train images/s."""
    torch.manual_seed(args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * (len(data.train.labels) // args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    seen, seconds = 0, 0.0
    for epoch in range(args.epochs):
        model.train()
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        for x, y in batches(data.train.images, data.train.labels, args.batch_size, shuffle=True, augment=True,
                            generator=gen, drop_last=True):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seconds += time.perf_counter() - t0
            seen += len(y)
        print(f"  epoch {epoch + 1}: loss {loss.item():.3f}", flush=True)
    return seen / seconds


def render(result: dict) -> str:
    """docs/results.md's side-by-side table."""
    b, p = result["runs"]["brevitas"], result["runs"]["pixelq"]
    inf = result["inference_b64_1thread"]
    return "\n".join([
        START, "",
        f"CNV W1A2, Brevitas vs pixelq (`python experiments/brevitas_cnv.py`, `results/brevitas/cnv_w1a2.json`): "
        f"{result['train_images']} training images of {Path(result['data']).name}, {result['epochs']} epochs, batch "
        f"{result['batch_size']}, Adam {result['lr']} with a cosine schedule, seed {result['seed']}, the same batches; "
        f"top-1 on {result['test_images']} test images; inference at batch 64 on 1 thread, best of 10, timed in turns.",
        "", "| | first layer | top-1 | train images/s | deployed as | batch-64 inference |", "|---|---|---:|---:|---|---:|",
        f"| Brevitas (bnn_pynq CNV) | 8-bit input quantizer | {b['top1']:.2f} % | {b['train_images_per_s']:.0f} | "
        f"ONNX, run by ONNX Runtime | {1000 * inf['brevitas_onnxruntime_s']:.1f} ms |",
        f"| pixelq (`cnv`) | pixel embedding (d 10, 2 bits) | {p['top1']:.2f} % | {p['train_images_per_s']:.0f} | "
        f".pxq, integer runtime (`{inf['pixelq_isa']}`) | {1000 * inf['pixelq_runtime_s']:.1f} ms "
        f"({inf['pixelq_vs_brevitas']:.1f}x) |", "",
        "Brevitas's QCDQ export (the form ONNX Runtime accelerates) refuses binary weights, so its model runs in ONNX "
        "Runtime as traced: its fake-quant arithmetic in float (labels equal to PyTorch's on "
        f"{100 * inf['brevitas_onnx_labels_equal_torch']:.0f} % of the timed batch). A short schedule on part of the "
        "data, and one optimiser for both rather than each library's own recipe (Brevitas's bnn_pynq trains "
        "500 epochs): it compares the two at equal cost, not at their best accuracy.", "", END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", type=Path, help="only fill docs/results.md's table from this JSON")
    parser.add_argument("--data", help="data set (default: pixelq's embedded CIFAR-10 subset)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-subset", type=int, help="a stratified subset of N training images")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.render:
        fill(RESULTS_PAGE, START, END, render(load(args.render)))
        return
    torch.set_num_threads(2)
    data = load_dataset(args.data)
    if args.train_subset:
        data = dataclasses.replace(data, train=data.train.subset(args.train_subset))
    classes, channels = len(data.train.classes), data.train.images.shape[-1]
    models = {
        "brevitas": FloatImages(brevitas_cnv(classes, channels)),
        "pixelq": pixelq.create_model("cnv", in_channels=channels, num_classes=classes,
                                      **fully_quantized()),
    }
    result = {"data": args.data or "embedded subset", "train_images": len(data.train.labels),
              "test_images": len(data.test.labels), "epochs": args.epochs, "batch_size": args.batch_size,
              "lr": args.lr, "seed": args.seed, "cpu": cpu_description(), "runs": {}}
    for name, model in models.items():
        print(f"{name}: training", flush=True)
        rate = train(model, data, args)
        top1 = evaluate(model.eval(), data.test.images, data.test.labels)["top1"]
        result["runs"][name] = {"top1": top1, "train_images_per_s": rate}
        print(f"{name}: top-1 {top1:.2f} %, {rate:.0f} train images/s", flush=True)
    torch.set_num_threads(1)
    x = data.test.images[:64]
    with tempfile.TemporaryDirectory() as tmp:
        import onnxruntime as ort
        import warnings

        # Brevitas's QCDQ export refuses binary weights ("Binary quant not supported") and its QONNX
        # form needs FINN or qonnx's Python executor, so ONNX Runtime runs the model as traced: its
        # fake-quant arithmetic (round, clamp, sign) in float.
        onnx_path = Path(tmp) / "brevitas_cnv.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(models["brevitas"].model.eval(), (torch.rand(1, channels, 32, 32),), str(onnx_path),
                              dynamo=False, input_names=["image"], dynamic_axes={"image": {0: "n"}}, opset_version=17)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        floats = np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32) / 255.0
        ort_labels = session.run(None, {input_name: floats})[0].argmax(1)
        torch_labels = models["brevitas"](torch.as_tensor(x)).argmax(1).numpy()
        pxq_path = Path(tmp) / "pixelq_cnv.pxq"
        pixelq.export(models["pixelq"].eval(), pxq_path, image_shape=(32, 32, channels))
        runtime = pixelq.runtime.load(pxq_path, threads=1)
        times = best_times({"brevitas_onnxruntime_s": lambda: session.run(None, {input_name: floats}),
                            "pixelq_runtime_s": lambda: runtime.logits(x)}, 10)
    result["inference_b64_1thread"] = {**times, "pixelq_vs_brevitas": times["brevitas_onnxruntime_s"] /
                                       times["pixelq_runtime_s"],
                                       "brevitas_onnx_labels_equal_torch": float((ort_labels == torch_labels).mean()),
                                       "pixelq_isa": runtime.isa}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        fill(RESULTS_PAGE, START, END, render(result))


if __name__ == "__main__":
    main()
