"""Where the dot-product conv overtakes the bit-plane (popcount) conv: one 3x3 conv, batch 64, one
thread, for each instruction set this CPU has, at weight x activation bits from W1A1 to W8A8.

    python experiments/kernel_crossover.py [--json results/bench/kernel_crossover.json]

Times are the best of `--repeats` calls, the two kernels taking turns (`best_times`). The rule the
runtime follows (DOT_MIN_PAIRS in src/pixelq/runtime/csrc/steps.c: dot products from a number of plane pairs,
input planes x weight bits, per build) was read off this table; run it again on another CPU to check.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from pixelq.bench.inference import best_times, cpu_description
from pixelq.runtime import available_isas
from pixelq.runtime import clib
from pixelq.runtime.fast import pack_conv_weight, pack_dot_weight, pad_thresholds, padded_channels

BITS = [(1, 1), (1, 2), (2, 2), (2, 3), (1, 4), (2, 4), (3, 3), (4, 4), (2, 8), (8, 8)]  # (weight, activation)
LAYERS = [(16, 32), (32, 16), (64, 8)]  # (channels, image size): ResNet-20's three stages on CIFAR


def layer_times(isa: str, channels: int, size: int, wbits: int, abits: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    n, c = 64, channels
    x = rng.integers(0, 2**abits, (n, size, size, c)).astype(np.uint8)
    lowest, step = (-1, 2) if wbits == 1 else (-2**(wbits - 1), 1)
    w = (lowest + step * rng.integers(0, 2**wbits, (c, 3, 3, c))).astype(np.int32)
    direction, thresholds = pad_thresholds(np.ones(c, np.int8), np.sort(rng.integers(-20, 20, (c, 3)), 1).astype(np.int32))
    out = np.empty((n, size, size, c), np.uint8)
    planes, dot = pack_conv_weight(w, lowest, step, wbits), pack_dot_weight(w)
    common = dict(input=x, batch=n, height=size, width=size, channels=c, kernel_h=3, kernel_w=3, out_channels=c,
                  out_channels_padded=padded_channels(c), stride=1, pad=1, direction=direction, thresholds=thresholds,
                  levels=3, qmin=0, out=out, threads=1, isa=isa)
    bit_planes = clib.Call(clib.ConvParams, kind="planes", input_planes=abits, weights=planes, weight_bits=wbits,
                           weight_lowest=lowest, weight_stride=step, **common)
    fns = {"bit_planes_s": lambda: bit_planes()}
    if clib.dot_isa(isa) != "avx2" or 2 * (2**abits - 1) * 2**(wbits - 1) <= 32767:  # VPMADDUBSW's int16 pairs
        dot_product = clib.Call(clib.ConvParams, kind="dot", weights=dot, **common)
        fns["dot_product_s"] = lambda: dot_product()
    return best_times(fns, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for isa in available_isas():
        for channels, size in LAYERS:
            for wbits, abits in BITS:
                times = layer_times(isa, channels, size, wbits, abits, args.repeats)
                rows.append({"isa": isa, "dot_isa": clib.dot_isa(isa), "channels": channels, "size": size,
                             "wbits": wbits, "abits": abits, "plane_pairs": wbits * abits, **times})
                dot = times.get("dot_product_s")
                print(f"{isa:<16} {channels:>3}ch {size:>2}px W{wbits}A{abits}: bit-planes {1e3 * times['bit_planes_s']:6.2f} ms"
                      f"  dot {1e3 * dot if dot else float('nan'):6.2f} ms")
    result = {"cpu": cpu_description(), "batch": 64, "threads": 1, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
