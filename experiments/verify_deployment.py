"""Export a checkpoint and check the integer runtime against the PyTorch fake-quant model.

    python experiments/verify_deployment.py RUN_DIR --data DATA [--layer-images 200]

Writes RUN_DIR/model.pxq and RUN_DIR/deployment.json: labels of runtime vs PyTorch on the whole
test split (disagreements split into integer-logit ties and unexplained), top-1 of each, file size,
and per-layer code agreement on the first --layer-images test images.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import pixelq
from pixelq.integer import payload_bytes
from pixelq.runtime import load
from pixelq.exporting.verify import label_agreement, layer_agreement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--layer-images", type=int, default=200)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    model = pixelq.load_checkpoint(run / "checkpoint.pt")
    integer_model = pixelq.export(model, run / "model.pxq")
    runtime = load(run / "model.pxq", threads=args.threads)
    test = pixelq.load_dataset(args.data).test
    t0 = time.perf_counter()
    runtime_labels = runtime.predict(test.images)
    runtime_s = time.perf_counter() - t0
    with torch.no_grad():
        torch_labels = np.concatenate([model(torch.as_tensor(test.images[i:i + 500])).argmax(1).numpy()
                                       for i in range(0, len(test), 500)])
    layers = layer_agreement(model, runtime, test.images[: args.layer_images])
    result = {
        "checkpoint": str(run / "checkpoint.pt"), "test_images": len(test),
        "runtime_top1": 100.0 * float((runtime_labels == test.labels).mean()),
        "fake_quant_top1": 100.0 * float((torch_labels == test.labels).mean()),
        "labels": label_agreement(model, runtime, test.images),
        "layer_images": args.layer_images,
        "layers_with_differences": {k: v for k, v in layers.items() if v["differ"]},
        "codes_compared": sum(v["codes"] for v in layers.values()),
        "codes_differ": sum(v["differ"] for v in layers.values()),
        "codes_differ_at_ties": sum(v["ties"] for v in layers.values()),
        "file_bytes": (run / "model.pxq").stat().st_size, "payload_bytes": payload_bytes(integer_model),
        "runtime_backend": runtime.backend, "runtime_images_per_s": len(test) / runtime_s,
    }
    (run / "deployment.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
