"""`load(path)` -> Runtime: predict, logits and every layer's integer output for uint8 NHWC images."""
from __future__ import annotations

import time

import numpy as np

from ..errors import ConfigError, DataError, InputError, ModelFileError, PixelqError
from ..integer import IntegerModel, load_model
from .fast import FastExecutor, kernels_available
from .reference import run_reference

BACKENDS = ("auto", "c", "reference")


class Runtime:
    """Runs an IntegerModel on uint8 (N, H, W, C) numpy images, `batch_size` images at a time.

    backend "c" uses the compiled popcount kernels, "reference" the numpy executor, "auto" the
    kernels when they were built. `threads` caps the kernels' threads (default: all cores); `isa`
    picks the kernels' instruction set (default: the best this CPU has; see `available_isas`).
    `isa` names what runs: the instruction set, or "numpy reference".
    """

    def __init__(self, model: IntegerModel, threads: "int | None" = None, batch_size: int = 256,
                 backend: str = "auto", isa: "str | None" = None):
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if isa is not None and backend == "reference":
            raise ConfigError("isa chooses the C kernels' instruction set; the reference backend has none")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
        self.model, self.threads, self.batch_size = model, threads, batch_size
        self.in_channels = model.meta["in_channels"]
        # written by exports since classes and image shape were recorded; older files check channels only
        self.classes = model.meta.get("classes")
        self.image_shape = tuple(model.meta["image_shape"]) if model.meta.get("image_shape") else None
        self.integer_only = model.meta["integer_only"]
        use_c = backend == "c" or (backend == "auto" and (kernels_available() or isa is not None))
        self.backend = "c" if use_c else "reference"

        def reference(images):
            values = run_reference(model, images)
            return values[model.meta["output"]], values["pool.count"]

        if use_c:
            executor = FastExecutor(model, threads, isa=isa)
            self._execute = executor.output
            self.isa = executor.isa
        else:
            self._execute, self.isa = reference, "numpy reference"
        self._layers = None  # the unfused executor `layer_outputs` needs, built on its first call

    def _check(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise InputError(f"the runtime takes uint8 images, got {images.dtype}; pass raw pixel bytes")
        if images.ndim != 4 or images.shape[-1] != self.in_channels:
            raise InputError(f"expected images (N, H, W, {self.in_channels}), got shape {images.shape}")
        if self.image_shape and images.shape[1:] != self.image_shape:
            raise InputError(f"this model was trained on images of shape {self.image_shape} (H, W, C), got "
                             f"{images.shape[1:]}; scale them to that size first (--image-size)")
        return images

    def layer_outputs(self, images) -> dict:
        """Every node's output (integer codes / accumulators) for one batch, keyed by layer name. Run
        unfused (the accumulators too, which the fused conv + threshold kernel never writes), by an
        executor built on the first call."""
        if self._layers is None:
            self._layers = (FastExecutor(self.model, self.threads, fuse=False, isa=self.isa).run
                            if self.backend == "c" else lambda images: run_reference(self.model, images))
        return self._layers(self._check(images))

    def _run(self, images: np.ndarray) -> tuple:
        """(logits, pooled count) over all images, in batches."""
        parts, count = [], 1
        for i in range(0, len(images), self.batch_size):
            logits, count = self._execute(images[i:i + self.batch_size])
            parts.append(logits)
        logits = np.concatenate(parts) if parts else np.zeros((0, self.model.meta["num_classes"]))
        return logits.astype(np.int32 if self.integer_only else np.float32), count

    def logits(self, images) -> np.ndarray:
        """(N, classes) int32 logits (float32 if the model kept a float last layer)."""
        return self._run(self._check(images))[0]

    def float_logits(self, images) -> np.ndarray:
        """Logits in the training model's units: integer logits times the stored scale / pooled count."""
        logits, count = self._run(self._check(images))
        if not self.integer_only:
            return logits
        return logits * (np.asarray(self.model.meta["logit_scale"], np.float32) / count)

    def predict(self, images) -> np.ndarray:
        """(N,) int64 class indices; equal logits go to the lower class index, as in `evaluate`."""
        return self.logits(images).argmax(1).astype(np.int64)

    def evaluate(self, labelled) -> dict:
        """top1 (%), n and images_per_s (the runtime's own time) over (uint8 images, labels) batches."""
        correct = seen = 0
        seconds = 0.0
        for images, labels in labelled:
            start = time.perf_counter()
            predicted = self.predict(images)
            seconds += time.perf_counter() - start
            correct += int(np.sum(predicted == np.asarray(labels)))
            seen += len(predicted)
        if not seen:
            raise InputError("no images to evaluate")
        return {"top1": 100.0 * correct / seen, "n": seen, "images_per_s": seen / seconds if seconds else None}

    def classify(self, files, top: int = 5) -> list:
        """Classify image files (any format, size and mode Pillow reads; `pixelq.images.read_image`
        prepares each as the model's training images were). One dict per file, in order:
        {"file", "top": [{"class", "score"}, ...]} with the `top` most probable classes (softmax of
        `float_logits`; equal scores rank the lower class index first, as `predict`), or
        {"file", "error"} for a file that could not be read; the others are still classified."""
        from ..images import read_image  # Pillow: needed for image files only, not by a runtime-only install

        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ConfigError(f"top must be a positive integer, got {top!r}")
        if not self.image_shape:
            raise ModelFileError("this model file does not record the image size it was trained on, so image files "
                                 "cannot be prepared for it; export it again with `pixelq export`")
        names = self.classes or [str(k) for k in range(self.model.meta["num_classes"])]
        results, images, read = [], [], []
        for f in files:
            results.append({"file": str(f)})
            try:
                images.append(read_image(f, self.image_shape))
                read.append(results[-1])
            except DataError as e:
                results[-1]["error"] = str(e)
        if images:
            logits = self.float_logits(np.stack(images)).astype(np.float64)
            scores = np.exp(logits - logits.max(1, keepdims=True))
            scores /= scores.sum(1, keepdims=True)
            for result, row in zip(read, scores):
                best = np.argsort(-row, kind="stable")[:top]
                result["top"] = [{"class": names[k], "score": float(row[k])} for k in best]
        return results


def load(path, threads: "int | None" = None, backend: str = "auto", isa: "str | None" = None) -> Runtime:
    """Read a .pxq model file, or a shipped model as "zoo:NAME" (`pixelq zoo` lists them), and return
    a Runtime for it (see Runtime for the options)."""
    model = load_model(path)
    try:
        return Runtime(model, threads=threads, backend=backend, isa=isa)
    except PixelqError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as e:  # a manifest edited into nonsense
        raise ModelFileError(f"{path}: the model's layers are inconsistent ({type(e).__name__}: {e}); "
                             "export it again with `pixelq export`") from e
