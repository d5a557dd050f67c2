"""The committed CIFAR-10-JPEG runs: their checkpoints, exported file and runtime."""
import json
from pathlib import Path

import numpy as np
import pytest

import pixelq
from pixelq.integer import load_model
from pixelq.runtime import load
from pixelq.exporting.verify import label_agreement
from pixelq.training.checkpoint import model_from_checkpoint, read_checkpoint

RESULTS = Path(__file__).resolve().parent.parent / "results"
RUN = RESULTS / "cifar10-jpeg" / "resnet20-w1a2-pe-qlast"
FINISHED_RECIPES = sorted(p.parent for p in (RESULTS / "recipe").glob("*/metrics.json"))

pytestmark = pytest.mark.slow
committed = pytest.mark.skipif(not (RUN / "checkpoint.pt").is_file(), reason="the run's checkpoint is not committed")


@committed
def test_checkpoint_is_the_run_its_metrics_describe():
    metrics = json.loads((RUN / "metrics.json").read_text())
    model = pixelq.load_checkpoint(RUN / "checkpoint.pt")
    cfg = model.config
    assert (cfg.first_layer, cfg.wbits, cfg.abits, cfg.last_layer) == ("pixel-embedding", 1, 2, "quantized")
    assert metrics["config"]["first_layer"] == "pixel-embedding" and metrics["epochs"] == 15


@committed
def test_committed_model_file_is_a_fresh_export(tmp_path):
    """Same graph and tensors (safetensors orders its header freely, so bytes may differ)."""
    fresh = pixelq.export(pixelq.load_checkpoint(RUN / "checkpoint.pt"), tmp_path / "again.pxq")
    committed = load_model(RUN / "model.pxq")
    assert committed.nodes == fresh.nodes and committed.meta == fresh.meta
    assert all(np.array_equal(committed.tensors[k], fresh.tensors[k]) for k in fresh.tensors)


@committed
def test_runtime_agrees_on_the_embedded_test_images():
    model = pixelq.load_checkpoint(RUN / "checkpoint.pt")
    test = pixelq.load_dataset().test
    agreement = label_agreement(model, load(RUN / "model.pxq"), test.images)
    assert agreement["n"] == 1000 and agreement["differ_unexplained"] == 0


@pytest.mark.parametrize("run", FINISHED_RECIPES, ids=lambda p: p.name)
def test_finished_recipe_checkpoint_is_the_run_its_metrics_describe(run):
    """A finished recipe run's checkpoint holds the network and epoch its metrics.json reports, and
    `pixelq eval` (eval.json) reproduced the training's final top-1 on it."""
    metrics, evaluated = (json.loads((run / name).read_text()) for name in ("metrics.json", "eval.json"))
    ckpt = read_checkpoint(run / "checkpoint.pt")
    model = model_from_checkpoint(ckpt)
    assert ckpt["model"] == metrics["config"]["model"] and ckpt["epoch"] == metrics["epochs"] == metrics["config"]["epochs"]
    for key in ("first_layer", "wbits", "abits", "last_layer"):
        assert getattr(model.config, key) == metrics["config"][key]
    assert evaluated["top1"] == pytest.approx(metrics["top1"], abs=0.011)


def integer_only(run: Path) -> bool:
    """A run the integer export takes: quantized weights and a quantized first layer (a float one has no integer form)."""
    config = json.loads((run / "metrics.json").read_text())["config"]
    return config["wbits"] < 32 and config["first_layer"] != "float"


@pytest.mark.parametrize("run", [p for p in FINISHED_RECIPES if integer_only(p)], ids=lambda p: p.name)
def test_finished_quantized_recipe_exports_and_runs_as_trained(run, tmp_path):
    model = pixelq.load_checkpoint(run / "checkpoint.pt")
    pixelq.export(model, tmp_path / "model.pxq")
    runtime = load(tmp_path / "model.pxq")
    agreement = label_agreement(model, runtime, pixelq.load_dataset().test.images)
    assert agreement["n"] == 1000 and agreement["differ_unexplained"] == 0
