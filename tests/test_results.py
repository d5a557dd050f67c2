"""The zoo's models are the committed runs they name: each registry entry's weights-only checkpoint
is the network and epoch its metrics.json reports, and exports to the very file the package ships,
which runs with PyTorch's labels."""
import json
from pathlib import Path

import numpy as np
import pytest

import pixelq
from pixelq.exporting.verify import label_agreement
from pixelq.integer import load_model
from pixelq.runtime import load
from pixelq.training.checkpoint import model_from_checkpoint, read_checkpoint
from pixelq.zoo import list_zoo, zoo_path

ROOT = Path(__file__).resolve().parent.parent
ZOO = list_zoo()

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_is_a_fresh_export_of_its_checkpoint(name, tmp_path):
    entry = ZOO[name]
    path = ROOT / entry["checkpoint"]
    ckpt = read_checkpoint(path)
    metrics = json.loads((path.parent / "metrics.json").read_text())
    assert ckpt["optimizer"] is None  # a finished run keeps its weights only
    assert ckpt["epoch"] == metrics["epochs"] == entry["epochs"] and ckpt["classes"] == entry["classes"]
    model = model_from_checkpoint(ckpt).eval()
    for key in ("first_layer", "wbits", "abits", "last_layer"):
        assert getattr(model.config, key) == metrics["config"][key]
    fresh = pixelq.export(model, tmp_path / "again.pxq", classes=ckpt["classes"], image_shape=ckpt["data"]["image_shape"])
    shipped = load_model(zoo_path(name))  # safetensors orders its header freely: compare contents, not bytes
    assert shipped.nodes == fresh.nodes and shipped.meta == fresh.meta
    assert shipped.tensors.keys() == fresh.tensors.keys()
    assert all(np.array_equal(shipped.tensors[k], fresh.tensors[k]) for k in fresh.tensors)
    agreement = label_agreement(model, load(zoo_path(name)), pixelq.load_dataset().test.images)
    assert agreement["n"] == entry["embedded_n"] and agreement["differ_unexplained"] == 0
