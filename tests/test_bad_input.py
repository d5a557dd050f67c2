"""Hostile-but-fair input: every hole a probe found, each reproduced, each answered with a clear
`pixelq` error (or the right behaviour) and nothing lost."""
import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numpy as np
import pytest
import torch

from pixelq import CheckpointError, ConfigError, DataError, ExportError, InputError, ModelFileError, TrainingError
from pixelq import create_model, evaluate, export, load_checkpoint, load_dataset, train
from pixelq.cli import main
from pixelq.data import DataSplits, ImageSet
from pixelq.runtime import load
from pixelq.training import read_checkpoint
from pixelq.training.loop import ranked_classes

from conftest import make_splits, run_config, write_cifar, write_image_dataset

QUANT = dict(first_layer="pixel-embedding", first_layer_kwargs={"d": 4, "bits": 2}, wbits=1, abits=2,
             last_layer="quantized")


# --- 1. data files never run code -----------------------------------------------------------

class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious pickle does: name a callable to run on load
        return (open, (str(self.marker), "w"))


def test_a_cifar_pickle_that_runs_code_is_refused_not_run(tmp_path, capsys):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar(root, "cifar10")
    marker = tmp_path / "pwned"
    with open(root / "data_batch_2", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": _RunsCode(marker)}, f)
    with pytest.raises(DataError, match="data_batch_2.*refused to load io.open"):
        load_dataset(tmp_path)
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 2
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_genuine_cifar_pickles_of_every_protocol_still_load(tmp_path, protocol):
    raw = write_cifar(tmp_path / "cifar-10-batches-py", "cifar10", protocol=protocol, bytes_names=protocol == 2)
    d = load_dataset(tmp_path)
    assert d.classes == [f"n{i}" for i in range(10)]
    assert np.array_equal(d.train.images[0], raw["data_batch_1"]["data"][0].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar_meta_without_label_names(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar(root, "cifar10")
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": 10000}, f)
    with pytest.raises(DataError, match="batches.meta: no list of class names under 'label_names'"):
        load_dataset(tmp_path)


# --- 2. an earlier run is never replaced without being asked ---------------------------------

def test_train_refuses_a_folder_holding_an_earlier_run(tmp_path, tiny_splits):
    train(run_config(tmp_path, epochs=1), data=tiny_splits)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    before = ckpt.read_bytes(), (tmp_path / "run" / "metrics.json").read_text()
    with pytest.raises(ConfigError, match="holds an earlier run.*--resume.*--overwrite"):
        train(run_config(tmp_path, epochs=1, seed=1), data=tiny_splits)
    assert (ckpt.read_bytes(), (tmp_path / "run" / "metrics.json").read_text()) == before
    with pytest.raises(ConfigError, match="not both"):
        train(run_config(tmp_path, epochs=1, seed=1), data=tiny_splits, resume=True, overwrite=True)
    train(run_config(tmp_path, epochs=1, seed=1), data=tiny_splits, overwrite=True)
    assert read_checkpoint(ckpt)["config"]["seed"] == 1


# --- 3. tracebacks become errors ---------------------------------------------------------------

def test_out_that_is_a_file_or_cannot_be_written(tmp_path, tiny_splits):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        train(run_config(tmp_path, "taken", epochs=1), data=tiny_splits)
    with pytest.raises(ConfigError, match="cannot write the run here"):
        train(run_config(tmp_path, "taken/run", epochs=1), data=tiny_splits)
    # a read-only folder (root ignores chmod, so the OS's answer is simulated at the write)
    denied = OSError(errno.EACCES, "Permission denied")
    with mock.patch.object(Path, "write_bytes", side_effect=denied), \
            pytest.raises(ConfigError, match="cannot write the run here \\(Permission denied\\)"):
        train(run_config(tmp_path, "readonly", epochs=1), data=tiny_splits)
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize("shape", ["file", "unwritable"])
def test_a_bad_cache_folder_does_not_block_loading(tmp_path, monkeypatch, shape):
    write_image_dataset(tmp_path, make_splits())
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    if shape == "file":
        cache.write_text("not a folder")
        context = contextlib.nullcontext()
    else:  # root ignores chmod, so the OS's answer is simulated at the write
        context = mock.patch("numpy.save", side_effect=OSError(errno.EROFS, "Read-only file system"))
    with context, pytest.warns(UserWarning, match="cannot write the decode cache"):
        d = load_dataset(tmp_path / "data")
    assert len(d.train) == 48
    assert not list(tmp_path.glob("**/.*.tmp*"))


@pytest.mark.parametrize("args, message", [
    (["--train-subset", "-5"], "train_subset must be a positive integer"),
    (["--test-subset", "2"], "at least one image per class: at least 3"),
    (["--threads", "-2"], "threads must be a positive integer"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "meta"], "device 'meta' is not supported"),
    (["--momentum", "-1"], "momentum must be a finite number >= 0"),
    (["--lr", "inf"], "lr must be a positive finite number"),
    (["--epochs", "0"], "epochs must be a positive integer"),
])
def test_cli_train_settings_out_of_range(tmp_path, capsys, args, message):
    data = write_image_dataset(tmp_path, make_splits())
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet", "--epochs", "1", *args])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_export_onto_a_folder_leaves_nothing_behind(tmp_path, tiny_splits):
    train(run_config(tmp_path, epochs=1, **QUANT), data=tiny_splits)
    (tmp_path / "model.pxq").mkdir()
    assert main(["export", str(tmp_path / "run" / "checkpoint.pt"), "-o", str(tmp_path / "model.pxq")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pxq", "run"]


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw.pop("model_kwargs"), "missing model_kwargs"),
    (lambda raw: raw.__setitem__("config", "{not json"), "'config' field is not valid JSON"),
    (lambda raw: raw.__setitem__("model_kwargs", "[1, 2]"), "model_kwargs must be a dict, got list"),
    (lambda raw: raw.__setitem__("model_kwargs", '{"wbits": "many"}'), "do not fit model"),
    (lambda raw: raw.__setitem__("data", "[1, 2]"), "data must be a dict, got list"),
    (lambda raw: raw.__setitem__("data", '{"image_shape": "32"}'), "data.image_shape must be \\[H, W, C\\]"),
    (lambda raw: raw.__setitem__("classes", '["a", 2]'), "classes must be names"),
    (lambda raw: raw.__setitem__("epoch", -1), "epoch must be an integer >= 0"),
])
def test_hand_edited_checkpoints(tmp_path, tiny_splits, edit, message, capsys):
    train(run_config(tmp_path, epochs=1), data=tiny_splits)
    path = tmp_path / "run" / "checkpoint.pt"
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert main(["eval", "--checkpoint", str(path)]) == 2
    assert main(["export", str(path), "-o", str(tmp_path / "m.pxq")]) == 2
    err = capsys.readouterr().err
    assert err.count("pixelq: error:") == 2 and message.split("'")[0].split(" do")[0].split("\\")[0] in err


def _resave_with_manifest(src, dst, change):
    """Edit a .pxq's manifest and recompute its checksum, as a careful tamperer would."""
    import base64
    import zlib

    from safetensors import safe_open
    from safetensors.numpy import save_file

    from pixelq.integer.fileformat import _digest

    with safe_open(str(src), framework="np") as f:
        metadata, blobs = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    manifest = json.loads(zlib.decompress(base64.b64decode(metadata["manifest"])))
    change(manifest)
    data = json.dumps(manifest, separators=(",", ":")).encode()
    metadata = {**metadata, "manifest": base64.b64encode(zlib.compress(data)).decode(), "sha256": _digest(data, blobs)}
    save_file(blobs, str(dst), metadata=metadata)


def _reshape(manifest, name, change, shrink=False):
    """Give tensor `name` another shape: the same element count, or (shrink) fewer, its bytes cut to fit."""
    entry = manifest["tensors"][name]
    old = entry["shape"]
    entry["shape"] = change(old)
    if shrink:
        entry["length"] = -(-int(np.prod(entry["shape"])) * entry["bits"] // 8)


def _first_packed(manifest):
    return next(t for t in manifest["tensors"].values() if t["packed"])


@pytest.mark.parametrize("change, message", [
    (lambda m: _first_packed(m).pop("bits"), "KeyError"),
    (lambda m: _first_packed(m).__setitem__("offset", 10**6), "lies past the end"),
    (lambda m: _first_packed(m).__setitem__("length", _first_packed(m)["length"] - 1), "do not hold"),
    (lambda m: m["nodes"][1].__setitem__("inputs", ["nowhere"]), "input 'nowhere' is no earlier node"),
    (lambda m: m["nodes"][1].__setitem__("inputs", [m["nodes"][5]["name"]]), "is no earlier node"),
    (lambda m: m["nodes"][1].pop("stride"), "missing stride"),
    (lambda m: m["nodes"][1].__setitem__("op", "exec"), "unknown op 'exec'"),
    (lambda m: m["nodes"][1].__setitem__("kernel", "3"), "kernel must be an integer in \\[1, 65536\\], got '3'"),
    (lambda m: m["nodes"][1].__setitem__("stride", 0), "stride must be an integer in \\[1, 65536\\], got 0"),
    (lambda m: m["nodes"][1].__setitem__("padding", 10**7), "padding must be an integer in \\[0, 32768\\]"),
    (lambda m: m["nodes"][1].__setitem__("padding", 3), "padding 3 must be smaller than the kernel"),
    (lambda m: _reshape(m, "stem.conv.weight", lambda s: [s[0], s[1] * s[2], 1, s[3]]), "weight has shape"),
    (lambda m: _reshape(m, "stem.conv.weight", lambda s: [s[0] // 2, *s[1:]], shrink=True), "weight has shape"),
    (lambda m: m["meta"].__setitem__("output", "stem.conv"), "must name the node of the 3 logits"),
])
def test_an_edited_model_file_with_a_recomputed_checksum(tmp_path, tiny_splits, change, message):
    train(run_config(tmp_path, epochs=1, **QUANT), data=tiny_splits)
    good = tmp_path / "model.pxq"
    export(load_checkpoint(tmp_path / "run" / "checkpoint.pt"), good)
    bad = tmp_path / "edited.pxq"
    _resave_with_manifest(good, bad, change)
    with pytest.raises(ModelFileError, match=message):
        load(bad).predict(tiny_splits.test.images)


# --- 4. a full disk while saving a checkpoint --------------------------------------------------

def test_a_full_disk_keeps_the_old_checkpoint_and_leaves_no_temp_file(tmp_path, tiny_splits):
    import pixelq.training.checkpoint as checkpoint

    real_save = torch.save
    saved = {"n": 0}

    def disk_fills_after_epoch_one(obj, f):
        if saved["n"] == 0:
            saved["n"] += 1
            return real_save(obj, f)
        Path(f).write_bytes(b"partial")  # the write got this far, then the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    ckpt = tmp_path / "run" / "checkpoint.pt"
    with mock.patch.object(checkpoint.torch, "save", disk_fills_after_epoch_one):
        for attempt in range(3):  # every failed save used to leave one more temp file on the full disk
            with pytest.raises(CheckpointError, match="previous one is kept.*No space left"):
                train(run_config(tmp_path, epochs=2), data=tiny_splits, resume=attempt > 0)
            assert read_checkpoint(ckpt)["epoch"] == 1
            assert sorted(p.name for p in ckpt.parent.iterdir()) == [".pixelq-lock", "checkpoint.pt", "metrics.jsonl"]
    resumed = train(run_config(tmp_path, epochs=2), data=tiny_splits, resume=True)
    uninterrupted = train(run_config(tmp_path, "again", epochs=2), data=tiny_splits)
    assert resumed["top1"] == uninterrupted["top1"]


# --- 5. no silent wrong answers ----------------------------------------------------------------

def _renamed(splits, classes):
    return DataSplits(ImageSet(splits.train.images, splits.train.labels, classes),
                      ImageSet(splits.test.images, splits.test.labels, classes), "renamed")


def test_eval_and_run_refuse_data_with_other_classes(tmp_path, tiny_splits, capsys):
    train(run_config(tmp_path, epochs=1, **QUANT), data=tiny_splits)
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    assert main(["export", ckpt, "-o", str(tmp_path / "m.pxq")]) == 0
    capsys.readouterr()
    for name, splits in [("renamed", _renamed(tiny_splits, ["a", "b", "c"])), ("more", make_splits(classes=4))]:
        data = write_image_dataset(tmp_path / name, splits)
        assert main(["eval", "--checkpoint", ckpt, "--data", str(data)]) == 2
        assert "was trained on classes ['c0', 'c1', 'c2']" in capsys.readouterr().err
        assert main(["run", str(tmp_path / "m.pxq"), "--data", str(data)]) == 2
        assert "was trained on classes" in capsys.readouterr().err
    # folders are read in sorted order; a CIFAR meta file can list the same names in another order
    with pytest.raises(DataError, match="trained on classes \\['c0', 'c1', 'c2'\\], the data has \\['c1', 'c0'"):
        _renamed(tiny_splits, ["c1", "c0", "c2"]).test.require(["c0", "c1", "c2"], None, "model")


def test_eval_and_run_refuse_images_of_another_size(tmp_path, tiny_splits, capsys):
    train(run_config(tmp_path, epochs=1, **QUANT), data=tiny_splits)
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    assert main(["export", ckpt, "-o", str(tmp_path / "m.pxq")]) == 0
    data = write_image_dataset(tmp_path / "big", make_splits(size=12))
    assert main(["eval", "--checkpoint", ckpt, "--data", str(data)]) == 2
    assert "images of shape (8, 8, 3)" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "m.pxq"), "--data", str(data)]) == 2
    assert "images of shape (8, 8, 3)" in capsys.readouterr().err
    with pytest.raises(InputError, match="trained on images of shape"):
        load(tmp_path / "m.pxq").predict(np.zeros((1, 12, 12, 3), np.uint8))


def test_resume_on_other_data_is_refused(tmp_path, tiny_splits):
    train(run_config(tmp_path, epochs=2), data=tiny_splits)
    metrics = (tmp_path / "run" / "metrics.json").read_text()
    with pytest.raises(CheckpointError, match="trained on other data"):
        train(run_config(tmp_path, epochs=2), data=make_splits(seed=5), resume=True)
    assert (tmp_path / "run" / "metrics.json").read_text() == metrics


def test_run_limit_takes_every_class_and_refuses_zero(tmp_path, tiny_splits, capsys):
    train(run_config(tmp_path, epochs=1, **QUANT), data=tiny_splits)
    model = tmp_path / "m.pxq"
    assert main(["export", str(tmp_path / "run" / "checkpoint.pt"), "-o", str(model)]) == 0
    data = write_image_dataset(tmp_path, tiny_splits)
    capsys.readouterr()
    assert main(["run", str(model), "--data", str(data), "--limit", "6"]) == 0
    result = json.loads(capsys.readouterr().out)
    sample = tiny_splits.test.subset(6)
    assert sorted(set(sample.labels.tolist())) == [0, 1, 2]  # the first 6 of a class-sorted split are one class
    expected = 100.0 * float((load(model).predict(sample.images) == sample.labels).mean())
    assert result["n"] == 6 and result["top1"] == pytest.approx(expected)
    assert main(["run", str(model), "--data", str(data), "--limit", "0"]) == 2
    assert "argument --limit: must be a positive integer, got 0" in capsys.readouterr().err


def test_a_diverged_run_stops_with_an_error_and_keeps_its_last_good_checkpoint(tmp_path, tiny_splits, monkeypatch):
    import pixelq.training.loop as loop

    real = loop.F.cross_entropy
    calls = {"n": 0}

    def nan_in_epoch_two(logits, y, **kw):
        calls["n"] += 1
        loss = real(logits, y, **kw)
        return loss * float("nan") if calls["n"] > 4 else loss  # 3 steps per epoch: NaN in epoch 2

    monkeypatch.setattr(loop.F, "cross_entropy", nan_in_epoch_two)
    with pytest.raises(TrainingError, match="became nan at epoch 2.*keeps the last finished epoch \\(1\\)"):
        train(run_config(tmp_path, epochs=3), data=tiny_splits)
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "run" / "metrics.json").exists()
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))


def test_nan_weights_are_refused_by_eval_export_init_and_teacher(tmp_path, tiny_splits, capsys):
    train(run_config(tmp_path, epochs=1, **QUANT), data=tiny_splits)
    path = tmp_path / "run" / "checkpoint.pt"
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["stages.0.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(raw, path)
    refused = f"{path}: holds non-finite values \\(NaN or infinity\\) in stages.0.0.conv1.weight"
    with pytest.raises(CheckpointError, match=refused):
        load_checkpoint(path)
    model = create_model("resnet20", num_classes=3, **QUANT).eval()
    with torch.no_grad():
        model.stages[0][0].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ExportError, match="non-finite values.*stages.0.0.conv1.weight"):
        export(model, tmp_path / "m.pxq")
    data = write_image_dataset(tmp_path, tiny_splits)
    assert main(["export", str(path), "-o", str(tmp_path / "m.pxq")]) == 2
    assert main(["eval", "--checkpoint", str(path), "--data", str(data)]) == 2
    assert capsys.readouterr().err.count("holds non-finite values") == 2
    assert not (tmp_path / "m.pxq").exists()
    for option in ("teacher", "init"):
        with pytest.raises(CheckpointError, match=refused):
            train(run_config(tmp_path, option, epochs=1, **{option: str(path)}, **QUANT), data=tiny_splits)


def test_one_tie_rule_the_lower_class_index_wins():
    logits = torch.tensor([[1, 5, 5, 0], [2, 2, 2, 2], [0, 0, 3, 3]])
    assert ranked_classes(logits, 2).tolist() == [[1, 2], [0, 1], [2, 3]]
    assert ranked_classes(logits, 1)[:, 0].tolist() == logits.numpy().argmax(1).tolist()

    class Constant(torch.nn.Module):  # every class scores the same: the lowest index is predicted
        def forward(self, x):
            return torch.zeros(len(x), 3)

    labels = np.array([0, 0, 1, 2])
    result = evaluate(Constant(), np.zeros((4, 2, 2, 1), np.uint8), labels)
    assert result["top1"] == 50.0 and result["top5"] == 100.0


def test_runtime_and_pytorch_report_the_same_top1(tmp_path, tiny_splits):
    """The demo once showed PyTorch 46.70 % beside runtime 46.80 % with labels 100 % equal."""
    train(run_config(tmp_path, epochs=1, **QUANT), data=tiny_splits)
    model = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    runtime_labels = load_runtime(model, tmp_path).predict(tiny_splits.test.images)
    torch_labels = ranked_classes(model(torch.from_numpy(tiny_splits.test.images)), 1)[:, 0].numpy()
    torch_top1 = evaluate(model, tiny_splits.test.images, tiny_splits.test.labels)["top1"]
    assert np.array_equal(runtime_labels, torch_labels)
    assert torch_top1 == pytest.approx(100.0 * float((runtime_labels == tiny_splits.test.labels).mean()))


def load_runtime(model, tmp_path):
    export(model, tmp_path / "m.pxq")
    return load(tmp_path / "m.pxq")


# --- 6. the cache under several processes ------------------------------------------------------

def test_two_processes_filling_one_cache_entry_both_succeed(tmp_path, monkeypatch):
    """The race DDP ranks ran into: another process renames its complete entry into place between
    our decode and our rename. Ours must give way, not fail with 'Directory not empty'."""
    import pixelq.data.cache as cache

    write_image_dataset(tmp_path, make_splits())
    other = load_dataset(tmp_path / "data", cache_dir=tmp_path / "other")
    real_rename = os.rename

    def other_process_wins(src, dst):
        if not Path(dst).exists():  # the other process finishes first
            real_rename(shutil.copytree(cache_of_other, Path(dst).with_name("other")), dst)
        return real_rename(src, dst)

    cache_of_other = next((tmp_path / "other").iterdir())
    monkeypatch.setattr(cache.os, "rename", other_process_wins)
    mine = load_dataset(tmp_path / "data", cache_dir=tmp_path / "shared")
    assert np.array_equal(mine.train.images, other.train.images)
    entries = list((tmp_path / "shared").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")


@pytest.mark.slow
def test_concurrent_processes_share_one_cache(tmp_path):
    """Four real processes decode the same source into one empty cache at the same moment."""
    data = write_image_dataset(tmp_path, make_splits(n_train=200, n_test=60))
    code = ("import sys; from pixelq import load_dataset; "
            "print(len(load_dataset(sys.argv[1], cache_dir=sys.argv[2]).train))")
    for attempt in range(2):
        cache_dir = tmp_path / f"cache{attempt}"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(data), str(cache_dir)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        results = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
        assert [out.strip() for out, _ in results] == ["200"] * 4
        assert [p.name for p in cache_dir.iterdir() if p.name.startswith(".")] == []


# --- a run folder is owned by one run at a time ------------------------------------------------

def test_a_second_run_into_a_folder_in_use_fails_at_once_naming_the_holder(tmp_path, tiny_splits):
    from pixelq.training.loop import claim_run_folder

    out = tmp_path / "run"
    with claim_run_folder(out, resume=False, overwrite=False):
        with pytest.raises(ConfigError, match=rf"another run is training into this folder \(pixelq train, pid {os.getpid()}"):
            train(run_config(tmp_path, epochs=1), data=tiny_splits)
        with pytest.raises(ConfigError, match="another run"):  # --overwrite does not take a folder in use either
            train(run_config(tmp_path, epochs=1), data=tiny_splits, overwrite=True)
    assert train(run_config(tmp_path, epochs=1), data=tiny_splits)["n"] == len(tiny_splits.test)


def test_the_lock_of_a_killed_run_is_released(tmp_path, tiny_splits):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from pixelq.training.loop import claim_run_folder\n"
        f"with claim_run_folder(Path({str(tmp_path / 'run')!r}), False, False):\n"
        "    print('held', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            train(run_config(tmp_path, epochs=1), data=tiny_splits)
    finally:
        holder.kill()
        holder.wait()
    assert train(run_config(tmp_path, epochs=1), data=tiny_splits)["n"] == len(tiny_splits.test)


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "run"
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(out), "--quiet"]) == 2
    assert not out.exists()
    out.mkdir(parents=True)  # a folder the user made stays, whatever happens
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(out), "--quiet"]) == 2
    assert out.is_dir()


# --- recipes, flags and outputs: each refused with a clear error, or the right result ----------

@pytest.mark.parametrize("recipe, message", [
    ('augment: "no"', "augment takes a bool, got 'no'"),
    ("wbits: true", "wbits takes an int, got True"),
    ('lr: "0.01"', "lr takes a float, got '0.01'"),
    ("lr: [1, 2]", "lr takes a float, got \\[1, 2\\]"),
    ("first_layer_kwargs: 5", "first_layer_kwargs takes a dict, got 5"),
    ("first_layer: pixel-embedding\nfirst_layer_kwargs: {d: '4'}", "option 'd' takes an int, got '4'"),
    ("first_layer: pixel-embedding\nfirst_layer_kwargs: {dim: 4}", "takes no option 'dim'"),
    ("schedule: linear", "schedule must be one of cosine, step, onecycle"),
    ("overrides: {stem.conv: 3}", "overrides maps layer-name patterns to quantizer specs"),
    ("train_subset: 100.5", "train_subset takes an int or null"),
])
def test_recipe_values_of_the_wrong_type_are_refused_before_anything_runs(tmp_path, recipe, message, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(recipe + "\n")
    assert main(["recipes", str(path)]) == 2
    assert main(["train", "--recipe", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(re.findall(f"pixelq: error: .*{message}", err)) == 2, err
    assert not (tmp_path / "run").exists()


def test_recipe_numbers_are_read_as_their_fields_types(tmp_path):
    from pixelq.training import resolve_config

    (tmp_path / "r.yaml").write_text("lr: 1\nweight_decay: 0\n")
    cfg = resolve_config(str(tmp_path / "r.yaml"))
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0 and isinstance(cfg.weight_decay, float)


@pytest.mark.parametrize("argv, message", [
    (["train", "--seed", "-1"], "seed must be an integer >= 0, got -1"),
    (["train", "--pe-dim", "4"], "--pe-dim does nothing with first layer 'float'"),
    (["train", "--first-layer", "int8", "--pe-bits", "3"], "--pe-bits does nothing with first layer 'int8'"),
    (["train", "--kd-weight", "0.3"], "--kd-weight: distillation settings, used only with --teacher"),
    (["train", "--epochs", "2", "--warmup-epochs", "3"], "warmup_epochs \\(3.0\\) must not be longer than training"),
    (["run", "zoo:resnet20-w1a2-pe-qlast", "--stream", "--workers", "-1"], "argument --workers: must be an integer >= 0"),
    (["bench-data", "--threads", "0"], "argument --threads: must be a positive integer, got 0"),
    (["bench-data", "--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
    (["eval", "--checkpoint", "x.pt", "--image-size", "0"], "argument --image-size: must be a positive integer"),
    (["bitops", "x.pt", "--image-size", "-4"], "argument --image-size: must be a positive integer, got -4"),
    (["demo", "--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
])
def test_flags_that_would_do_nothing_or_break_are_refused(tmp_path, argv, message, capsys):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_outputs_that_cannot_be_written_are_clear_errors(tmp_path, tiny_splits, capsys):
    train(run_config(tmp_path, epochs=1, **QUANT), data=tiny_splits)
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for argv in (["export", ckpt, "-o", str(blocker / "m.pxq")],
                 ["export", ckpt, "-o", str(blocker / "m.onnx"), "--format", "onnx"],
                 ["bitops", ckpt, "--json", str(blocker / "b.json")],
                 ["inspect", "zoo:resnet20-w1a2-pe-qlast", "--json", str(blocker / "i.json")],
                 ["quantize", ckpt, "--out", str(blocker)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "pixelq: error:" in err and "Traceback" not in err, err
        assert f"{blocker} is a file" in err or f"{blocker}: is a file" in err, err


def test_export_refuses_to_overwrite_and_checks_class_names(tmp_path, tiny_splits, capsys):
    train(run_config(tmp_path, epochs=1, **QUANT), data=tiny_splits)
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    out = tmp_path / "m.pxq"
    assert main(["export", ckpt, "-o", str(out)]) == 0
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # as any file this user writes, not 0600
    first = out.read_bytes()
    assert main(["export", ckpt, "-o", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == first
    assert main(["export", ckpt, "-o", str(out), "--overwrite"]) == 0
    with pytest.raises(ExportError, match="classes must name each of the model's 3 outputs once, got 2"):
        export(load_checkpoint(ckpt), tmp_path / "n.pxq", classes=["a", "b"])
    capsys.readouterr()
    assert main(["export", ckpt, "-o", str(tmp_path / "m.onnx"), "--format", "onnx"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"path", "format", "bytes"}  # nothing about the .pxq


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_quantize_refuses_a_network_it_cannot_quantize(tmp_path, tiny_splits, capsys):
    train(run_config(tmp_path, epochs=1, model="cnv", lr=0.01), data=make_splits(size=32))
    data = write_image_dataset(tmp_path, make_splits(size=32))
    assert main(["quantize", str(tmp_path / "run" / "checkpoint.pt"), "--data", str(data),
                 "--out", str(tmp_path / "q")]) == 2
    assert "takes pixelq's ResNets (resnet20, resnet18); a 'cnv' network is not supported" in capsys.readouterr().err


def test_eval_names_the_image_size_to_pass(tmp_path, tiny_splits, capsys):
    train(run_config(tmp_path, epochs=1), data=tiny_splits)
    data = write_image_dataset(tmp_path, tiny_splits)
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--data", str(data),
                 "--image-size", "16"]) == 2
    assert "--image-size 8 scales square images to it" in capsys.readouterr().err


def test_a_corrupt_image_in_a_stream_is_one_clear_line(tmp_path, tiny_splits, capsys):
    train(run_config(tmp_path, epochs=1), data=tiny_splits)
    data = write_image_dataset(tmp_path, tiny_splits)
    broken = sorted((data / "test" / "c1").iterdir())[0]
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--data", str(data), "--stream",
                 "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pixelq: error: {broken}: cannot decode image") and "Traceback" not in err, err


def test_only_the_first_torchrun_process_prints_the_result(tmp_path, tiny_splits, capsys, monkeypatch):
    data = write_image_dataset(tmp_path, tiny_splits)
    argv = ["train", "--data", str(data), "--epochs", "1", "--batch-size", "16", "--quiet"]
    monkeypatch.setenv("RANK", "1")  # what torchrun sets in the second process (the group itself is not started)
    monkeypatch.setattr("pixelq.training.train", lambda cfg, **kw: {"top1": 1.0, "top5": 1.0, "n": 1, "epochs": 1,
                                                                      "train_images_per_s": 1.0})
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == 1.0


HOSTILE = [0, -1, 1, 2, 3, 7, 255, 10**9, 2**31, -2**31, 1.5, float("inf"), "x", None, True, [], [1, 2], {}]


def _zoo_manifest():
    import base64
    import zlib

    from safetensors import safe_open

    from pixelq.zoo import zoo_path

    with safe_open(str(zoo_path("resnet20-w1a2-pe-qlast-r4s")), framework="np") as f:
        return json.loads(zlib.decompress(base64.b64decode(f.metadata()["manifest"])))


def hostile_edit(manifest: dict, choose) -> str:
    """One random edit of a model manifest, `choose(options)` picking each choice (hypothesis or a
    seeded generator): a value of a graph node, a plan node, a tensor's entry or the metadata set to
    something hostile. Returns where it edited."""
    where = choose(["node", "node", "plan", "plan", "plan", "tensor", "meta"])
    if where in ("node", "plan"):
        nodes = manifest["nodes"] if where == "node" else manifest["plan"]["nodes"]
        node = choose(nodes)
        key = choose(sorted(node) + ["strides"])  # "strides": a key no op has
        value = choose(HOSTILE + [[choose([n["name"] for n in nodes] + ["image"])]])
    elif where == "tensor":
        layout = choose([manifest["tensors"], manifest["plan"]["tensors"]])
        node = layout[choose(sorted(name for name, t in layout.items() if "shape" in t))]
        key = choose(["shape", "offset", "length", "bits", "lowest", "stride", "blob"])
        shape = node["shape"]
        value = choose(HOSTILE + [shape[::-1], [int(np.prod(shape))], shape[:-1], [*shape, 1]])
    else:
        node = manifest["meta"]
        key = choose(sorted(node))
        value = choose(HOSTILE + [[32, 32], [32, 32, 1], [4096, 4096, 3]])
    node[key] = value
    return where


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_manifests_give_an_error_or_a_consistent_model_never_a_crash(tmp_path, data):
    """Random edits of a shipped model's manifest, checksum recomputed: the file is refused with
    ModelFileError, or it loads as a graph whose every rule holds and runs to logits of the right
    shape. libpixelq's own reader (which runs the plan only) refuses every plan or metadata edit
    pixelq refuses, and where it loads a file, its logits are the Python runtime's."""
    from pixelq.integer import check_graph, load_model
    from pixelq.runtime import clib
    from pixelq.zoo import zoo_path

    manifest = _zoo_manifest()
    where = hostile_edit(manifest, lambda options: data.draw(st.sampled_from(options)))
    bad = tmp_path / "fuzzed.pxq"
    _resave_with_manifest(zoo_path("resnet20-w1a2-pe-qlast-r4s"), bad, lambda m: m.clear() or m.update(manifest))
    c_model = None
    if clib.available():
        try:
            c_model = clib.Model(bad, threads=1)
        except clib.Model.LoadError:
            pass
    try:
        runtime = load(bad)
    except ModelFileError:
        assert c_model is None or where in ("node", "tensor"), "libpixelq loaded a plan pixelq refuses"
        return
    model = load_model(bad)
    check_graph(model.nodes, model.tensors, model.meta)  # loaded: every rule holds
    shape = tuple(model.meta.get("image_shape") or (32, 32, 3))
    images = np.random.default_rng(0).integers(0, 256, (2, *shape), dtype=np.uint8)
    logits = runtime.logits(images)
    assert logits.shape == (2, model.meta["num_classes"])
    if c_model is not None and c_model.image_shape == shape:
        assert np.array_equal(c_model.logits(images), logits)


def test_the_stored_plan_is_the_runtimes_and_is_checked(tmp_path):
    """A model file carries the plan the runtime executes (made at export by pixelq.runtime.fusion):
    it reads back as the transforms make it, each tensor the plan passed on unchanged stored once;
    a plan edited out of shape is refused like the graph itself, a file of an older version with the
    way out, and a node with a key its op does not have by both readers."""
    from pixelq.integer import load_model
    from pixelq.runtime import fusion
    from pixelq.zoo import zoo_path

    model = load_model(zoo_path("resnet20-w1a2-pe-qlast-r4s"))
    planned = fusion.plan(model)
    assert model.plan.nodes == planned.nodes and model.plan.tensors.keys() == planned.tensors.keys()
    assert all(np.array_equal(model.plan.tensors[k], planned.tensors[k]) for k in planned.tensors)
    assert {n.op for n in model.plan.nodes} >= {"fused_conv", "lut"}  # fused convs, requantizing lookups
    manifest = _zoo_manifest()
    shared = [name for name, t in manifest["plan"]["tensors"].items() if "same_as" in t]
    assert len(shared) >= len(manifest["plan"]["tensors"]) // 2  # weights and thresholds are not stored twice

    def shrink_a_conv(m):
        conv = next(n for n in m["plan"]["nodes"] if n["op"] == "fused_conv" and n["out_channels"] == 32)
        conv["out_channels"] = 31

    bad = tmp_path / "bad-plan.pxq"
    _resave_with_manifest(zoo_path("resnet20-w1a2-pe-qlast-r4s"), bad, shrink_a_conv)
    with pytest.raises(ModelFileError, match="weight has shape"):
        load(bad)
    _resave_with_manifest(zoo_path("resnet20-w1a2-pe-qlast-r4s"), bad,
                          lambda m: m["plan"]["tensors"].update({"stem.act.weight": {"same_as": "nowhere"}}))
    with pytest.raises(ModelFileError, match="same_as names no tensor"):
        load(bad)
    from safetensors import safe_open
    from safetensors.numpy import save_file
    with safe_open(str(zoo_path("resnet20-w1a2-pe-qlast")), framework="np") as f:
        metadata, blobs = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    save_file(blobs, str(bad), metadata={**metadata, "version": "2"})
    with pytest.raises(ModelFileError, match="model file version 2, this pixelq reads version 3; export"):
        load(bad)
    # a key its op does not have (version 2's fused residual adds kept the add's `shift`): both readers refuse
    _resave_with_manifest(zoo_path("resnet20-w1a2-pe-qlast-r4s"), bad, lambda m: next(
        n for n in m["plan"]["nodes"] if "residual_stride" in n).update(shift=2))
    with pytest.raises(ModelFileError, match="has no attribute shift"):
        load(bad)
    from pixelq.runtime import clib
    if clib.available():
        with pytest.raises(clib.Model.LoadError, match="has an attribute its op does not have"):
            clib.Model(bad)


def test_the_plan_alone_chooses_table_sums(tmp_path):
    """Whether the first conv runs as table sums is the plan's mark (`table_sums`, made at export):
    libpixelq follows it (without it, the same conv packs bit-planes through the lookup, to the same
    logits); a mark where the table kernel cannot run (a conv with no lookup, or with a residual
    add) is refused by both readers."""
    from pixelq.runtime import clib
    from pixelq.runtime.fast import FastExecutor
    from pixelq.zoo import zoo_path

    source = zoo_path("resnet20-w1a2-pe-qlast-r4s")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = load(source).logits(images)
    unmarked = tmp_path / "unmarked.pxq"
    _resave_with_manifest(source, unmarked, lambda m: m["plan"]["nodes"][0].pop("table_sums"))
    if clib.available():
        assert FastExecutor(load(source).model).kernels()["stem.conv"] == "table sums"
        assert FastExecutor(load(unmarked).model).kernels()["stem.conv"].startswith("bit-planes via lookup")
        assert np.array_equal(clib.Model(unmarked).logits(images), expected)

    def mark(chosen):
        def edit(m):
            next(n for n in m["plan"]["nodes"] if chosen(n))["table_sums"] = True
        return edit

    for name, chosen in (("no lookup", lambda n: n["op"] == "fused_conv" and "lut_range" not in n),
                         ("a residual add", lambda n: "residual_stride" in n)):
        bad = tmp_path / f"{name}.pxq"
        _resave_with_manifest(source, bad, mark(chosen))
        with pytest.raises(ModelFileError, match="table sums need a lookup"):
            load(bad)
        if clib.available():
            with pytest.raises(clib.Model.LoadError, match="table sums need a lookup"):
                clib.Model(bad)
