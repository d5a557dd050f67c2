"""The model zoo: every shipped model is the file its registry entry describes and scores what the
entry says on the embedded test images; names load everywhere a .pxq path does."""
import hashlib
import json

import numpy as np
import pytest

import pixelq
from pixelq.cli import main
from pixelq.errors import ConfigError
from pixelq.zoo import list_zoo, zoo_path

ZOO = list_zoo()


def test_the_zoo_ships_models():
    assert len(ZOO) >= 2


@pytest.mark.parametrize("name", ZOO)
def test_shipped_model_matches_its_registry_entry(name):
    entry = ZOO[name]
    path = zoo_path(name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert path.stat().st_size == entry["size_bytes"]
    runtime = pixelq.runtime.load(f"zoo:{name}")
    assert runtime.classes == entry["classes"] and list(runtime.image_shape) == entry["image_shape"]
    test = pixelq.load_dataset().test
    assert len(test) == entry["embedded_n"] and test.classes == entry["classes"]
    top1 = 100.0 * float(np.mean(runtime.predict(test.images) == test.labels))
    assert abs(top1 - entry["embedded_top1"]) <= entry["embedded_tolerance"] + 1e-9
    halves = [(test.images[:400], test.labels[:400]), (test.images[400:], test.labels[400:])]
    assert runtime.evaluate(halves)["top1"] == pytest.approx(top1) and runtime.evaluate(halves)["n"] == len(test)
    assert entry["checkpoint"].endswith("checkpoint.pt") and entry["top1"] > 0


def test_unknown_zoo_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="unknown zoo model 'nope'.*" + next(iter(ZOO))):
        pixelq.runtime.load("zoo:nope")


def test_zoo_names_work_in_run_inspect_and_bitops(capsys):
    name = next(iter(ZOO))
    assert main(["run", f"zoo:{name}", "--limit", "100"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 100
    assert main(["inspect", f"zoo:{name}"]) == 0
    assert main(["bitops", f"zoo:{name}"]) == 0
    assert f"{ZOO[name]['bops']:,}" in capsys.readouterr().out


def test_zoo_command_lists_every_model(capsys):
    assert main(["zoo", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ZOO
    assert main(["zoo"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in ZOO)
