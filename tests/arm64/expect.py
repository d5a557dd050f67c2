"""The model half of the ARM64 check (`make test-arm64`): writes into OUT the test models as .pxq
files and, for each, NAME.expected (the format check.c reads) with images and the logits the numpy
reference executor gives them, for `check model` to compare under emulation.

Models: the zoo's two ResNet-20s (pixel embedding through the table conv, bit-planes, a 4-bit
residual stream), a CNV (max pools, bit-planes at 32 channels), a W2A4 ResNet-20 (4 plane pairs and
more: the dot-product conv) and an int8 first layer with a float last layer (float logits).
    python tests/arm64/expect.py OUT
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import torch

import pixelq
from pixelq.models import create_model
from pixelq.runtime import load
from pixelq.zoo import zoo_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import trained_like  # noqa: E402

SHAPE = (32, 32, 3)
ZOO = ["resnet20-w1a2-pe-qlast", "resnet20-w1a2-pe-qlast-r4s"]
MADE = {
    "cnv": dict(model="cnv", wbits=1, abits=2, first_layer="pixel-embedding"),
    "w2a4": dict(model="resnet20", wbits=2, abits=4, first_layer="pixel-embedding", last_layer="quantized"),
    "int8-float-last": dict(model="resnet20", wbits=1, abits=2, first_layer="int8"),
}


def write_expected(path: Path, model_file: Path, images: np.ndarray) -> None:
    runtime = load(model_file, backend="reference")
    if runtime.integer_only:
        kind, logits = 0, runtime.logits(images).astype("<i4")
    else:
        kind, logits = 1, runtime.float_logits(images).astype("<f4")
    path.write_bytes(b"PXQEXPCT" + struct.pack("<4i", *images.shape) + images.tobytes() +
                     struct.pack("<2i", kind, logits.shape[1]) + logits.tobytes())


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: zoo_path(name) for name in ZOO}
    for name, settings in MADE.items():
        settings = dict(settings)
        torch.manual_seed(0)
        net = trained_like(create_model(settings.pop("model"), **settings), size=SHAPE[0])
        files[name] = folder / f"{name}.pxq"
        pixelq.export(net, files[name], image_shape=SHAPE)
    images = np.random.default_rng(1).integers(0, 256, (3, *SHAPE), dtype=np.uint8)
    for name, model_file in files.items():
        target = folder / f"{name}.pxq"
        if Path(model_file) != target:
            target.write_bytes(Path(model_file).read_bytes())
        write_expected(folder / f"{name}.expected", target, images)
        print(f"{target} and its expected logits")


if __name__ == "__main__":
    main(sys.argv[1])
