"""Time the integer runtime's first layer, and the whole network, on real test images and on random
pixels: the table first conv reads a table row per pixel value, so its speed depends on the images.

    python experiments/first_layer_images.py MODEL.pxq --data DATA [--json results/bench/first_layer_images.json]

One thread, batch 64, best of --repeats per-node times (the bench's layer profile); the two image
sets are timed in turns.
"""
import argparse
import json
from pathlib import Path

import numpy as np

import pixelq
from pixelq.bench.inference import layer_profile
from pixelq.runtime import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--json", default="results/bench/first_layer_images.json")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runtime = load(args.model, threads=1)
    images = {"test_images": np.ascontiguousarray(pixelq.load_dataset(args.data).test.images[:64])}
    images["random_pixels"] = np.random.default_rng(0).integers(0, 256, images["test_images"].shape, dtype=np.uint8)
    best = {name: {} for name in images}
    for _ in range(args.rounds):
        for name, x in images.items():
            for node, s in layer_profile(runtime, x, args.repeats).items():
                best[name][node] = min(s, best[name].get(node, s))
    first = [node for node in best["test_images"] if node.startswith("stem.")]
    result = {"model": args.model, "batch": 64, "threads": 1, "repeats": args.repeats, "rounds": args.rounds}
    for name, times in best.items():
        result[name] = {"first_layer_s": sum(times[n] for n in first), "network_s": sum(times.values())}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    for name in images:
        print(f"{name}: first layer {1e3 * result[name]['first_layer_s']:.3f} ms, "
              f"network {1e3 * result[name]['network_s']:.2f} ms")


if __name__ == "__main__":
    main()
