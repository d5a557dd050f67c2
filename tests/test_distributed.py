"""Data-parallel training with torch.distributed: torchrun, two CPU processes, gloo."""
import json
import os
import subprocess
import sys

import torch

from pixelq import load_checkpoint
from test_train import write_dataset


def test_torchrun_two_processes(tmp_path, tiny_splits):
    data = write_dataset(tmp_path, tiny_splits)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pixelq.cli", "train", "--data", str(data), "--first-layer", "pixel-embedding", "--pe-dim", "4",
           "--wbits", "1", "--abits", "2", "--overrides", str(_lsq_overrides(tmp_path)), "--epochs", "2",
           "--batch-size", "16", "--threads", "1", "--quiet", "--out", str(out)]
    # A rank that aborts (seen once under heavy load, inside gloo) prints where it was.
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-6000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["train_size"] == 48
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(r["train_images_per_s"] > 0 for r in history)
    model = load_checkpoint(out / "checkpoint.pt")
    # LSQ steps were started from both processes' first batches, then averaged: one value, trained.
    assert bool(model.stages[0][0].act1.initialized)
    assert torch.isfinite(model.stages[0][0].act1.step).all()


def _lsq_overrides(tmp_path):
    path = tmp_path / "lsq.json"
    path.write_text(json.dumps({"stages.0.0.act1": "lsq:2"}))
    return path
