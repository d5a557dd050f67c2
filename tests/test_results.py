"""The committed fully quantized CIFAR-10-JPEG run: its checkpoint, exported file and runtime."""
import json
from pathlib import Path

import numpy as np
import pytest

import pixelq
from pixelq.integer import load_model
from pixelq.runtime import load
from pixelq.exporting.verify import label_agreement

RUN = Path(__file__).resolve().parent.parent / "results" / "cifar10-jpeg" / "resnet20-w1a2-pe-qlast"

pytestmark = [pytest.mark.skipif(not (RUN / "checkpoint.pt").is_file(), reason="the run's checkpoint is not committed"),
              pytest.mark.slow]


def test_checkpoint_is_the_run_its_metrics_describe():
    metrics = json.loads((RUN / "metrics.json").read_text())
    model = pixelq.load_checkpoint(RUN / "checkpoint.pt")
    cfg = model.config
    assert (cfg.first_layer, cfg.wbits, cfg.abits, cfg.last_layer) == ("pixel-embedding", 1, 2, "quantized")
    assert metrics["config"]["first_layer"] == "pixel-embedding" and metrics["epochs"] == 15


def test_committed_model_file_is_a_fresh_export(tmp_path):
    """Same graph and tensors (safetensors orders its header freely, so bytes may differ)."""
    fresh = pixelq.export(pixelq.load_checkpoint(RUN / "checkpoint.pt"), tmp_path / "again.pxq")
    committed = load_model(RUN / "model.pxq")
    assert committed.nodes == fresh.nodes and committed.meta == fresh.meta
    assert all(np.array_equal(committed.tensors[k], fresh.tensors[k]) for k in fresh.tensors)


def test_runtime_agrees_on_the_embedded_test_images():
    model = pixelq.load_checkpoint(RUN / "checkpoint.pt")
    test = pixelq.load_dataset().test
    agreement = label_agreement(model, load(RUN / "model.pxq"), test.images)
    assert agreement["n"] == 1000 and agreement["differ_unexplained"] == 0
