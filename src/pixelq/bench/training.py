"""Training-side benchmarks: data loading + augmentation speed, and train step time per model."""
from __future__ import annotations

import contextlib
import time

import torch

from .. import train_kernels
from ..data import batches, load_dataset
from ..models import create_model, fully_quantized
from ..training.config import TrainConfig
from ..training.loop import make_optimizer, training_step

# The networks the foundation compares: float, W1A2 with float first/last, W1A2 fully quantized;
# the fully quantized one again without pixelq's training kernels (PyTorch's ops: what they save);
# then the fully quantized one with the recipes' extra objectives (a float teacher, SAQ).
_PE_QLAST = fully_quantized()
TRAIN_VARIANTS = {
    "float": {"model": {}},
    "w1a2-float-first": {"model": {"wbits": 1, "abits": 2}},
    "w1a2-pe-qlast": {"model": _PE_QLAST},
    "w1a2-pe-qlast-pytorch-ops": {"model": _PE_QLAST, "kernels": False},
    "w1a2-pe-qlast+kd": {"model": _PE_QLAST, "teacher": True},
    "w1a2-pe-qlast+saq": {"model": _PE_QLAST, "saq_rho": 0.4},
}


def data_throughput(data: "str | None" = None, batch_size: int = 128, threads: int = 1, repeats: int = 3) -> dict:
    """Images/s of a cached load and of shuffled, augmented (crop + flip) uint8 batches."""
    torch.set_num_threads(threads)
    load_dataset(data)  # fill the cache
    t0 = time.perf_counter()
    splits = load_dataset(data)
    load_s = time.perf_counter() - t0
    images, labels = splits.train.images, splits.train.labels
    best = float("inf")
    for r in range(repeats):
        gen = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        for _ in batches(images, labels, batch_size, shuffle=True, augment=True, generator=gen):
            pass
        best = min(best, time.perf_counter() - t0)
    return {"images": len(images), "image_shape": list(images.shape[1:]), "threads": threads,
            "cached_load_s": load_s, "augment_images_per_s": len(images) / best, "batch_size": batch_size}


def decode_throughput(folders: str, images: int = 5000, batch_size: int = 128, workers: tuple = (1, 2)) -> dict:
    """JPEG/PNG decode speed on image folders: images/s of one process decoding with Pillow and with
    pixelq's decoder (libjpeg-turbo through simplejpeg for JPEG), and of a streamed pass over the
    same images with each worker count (decode + batching, no augmentation)."""
    import io

    import numpy as np
    from PIL import Image

    from ..data import open_stream
    from ..data.readers import _decode

    stream = open_stream(folders).train
    stream = stream.subset(min(images, len(stream)))
    blobs = [(name, open(name, "rb").read()) for name in stream.files]

    def pillow(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)

    per_process = {}
    for name, decode in (("pillow", pillow), ("pixelq", lambda data: _decode(data, "bench"))):
        t0 = time.perf_counter()
        for _, data in blobs:
            decode(data)
        per_process[name] = len(blobs) / (time.perf_counter() - t0)
    streamed = {}
    for count in workers:
        t0 = time.perf_counter()
        for _ in batches(stream, batch_size=batch_size, workers=count):
            pass
        streamed[count] = len(stream) / (time.perf_counter() - t0)
    return {"folders": str(folders), "images": len(blobs), "decode_images_per_s_one_process": per_process,
            "decoder_speedup_vs_pillow": per_process["pixelq"] / per_process["pillow"],
            "streamed_images_per_s_by_workers": streamed}


def train_step_throughput(model: str = "resnet20", variants: "dict | None" = None, batch_size: int = 128,
                          steps: int = 10, warmup: int = 3, rounds: int = 5, threads: "int | None" = None,
                          image_size: int = 32, compiled: bool = False) -> dict:
    """Train step time (the training loop's step: forward, loss, backward, optimizer step) of each
    variant on random uint8 batches; a variant may add a float teacher (KD) or SAQ, run PyTorch's
    ops instead of pixelq's training kernels ("kernels": False), or run its forward under
    torch.compile ("compile": True; `compiled` adds the fully quantized one so). The
    float baseline is always the plain eager model. A compiled variant's first steps (its compile
    time) are reported in `compile_s`, not in its step time.

    Variants are timed in interleaved rounds and each keeps its best round, so a noisy machine
    hurts all of them alike; `ratios` holds each variant's step time over the first variant's.
    """
    if threads:
        torch.set_num_threads(threads)
    variants = dict(variants or TRAIN_VARIANTS)
    if compiled:
        variants["w1a2-pe-qlast+compile"] = {"model": _PE_QLAST, "compile": True}
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch_size, image_size, image_size, 3), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (batch_size,), generator=gen)
    setups = {}
    for name, variant in variants.items():
        torch.manual_seed(0)
        net = create_model(model, **variant["model"]).train()
        cfg = TrainConfig(saq_rho=variant.get("saq_rho", 0.0))
        teacher = create_model(model).eval() if variant.get("teacher") else None
        forward = torch.compile(net) if variant.get("compile") else net
        setups[name] = (forward, net, make_optimizer(net, cfg), cfg, teacher, variant.get("kernels", True))

    def step(forward, net, opt, cfg, teacher, kernels):  # the training loop's own step
        with contextlib.nullcontext() if kernels else train_kernels.pytorch_ops():
            training_step(forward, net, opt, x, y, cfg, teacher)

    best = {name: float("inf") for name in variants}
    compile_s = {}
    for name, setup in setups.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            step(*setup)
        if variants[name].get("compile"):
            compile_s[name] = time.perf_counter() - t0
    for _ in range(rounds):
        for name, setup in setups.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step(*setup)
            best[name] = min(best[name], (time.perf_counter() - t0) / steps)
    first = next(iter(variants))
    return {
        "model": model, "batch_size": batch_size, "threads": torch.get_num_threads(), "steps": steps,
        "rounds": rounds, "step_s": best, "images_per_s": {k: batch_size / v for k, v in best.items()},
        "ratios": {f"{k}_step_vs_{first}": v / best[first] for k, v in best.items() if k != first},
        "variants": variants, "compile_s": compile_s,
    }
