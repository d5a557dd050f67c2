"""The field issue's long runs, finished: `experiments/field_runs.sh finish` writes what a finished run
keeps, and the results page renders the runs in flight and finished against their targets."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixelq import train
from pixelq.training import read_checkpoint

from conftest import EXPERIMENTS, make_splits, run_config, write_image_dataset

sys.path.insert(0, str(EXPERIMENTS))  # the renderer is an experiment, not the library
import render_recipe_results  # noqa: E402

W1A2 = dict(first_layer="pixel-embedding", first_layer_kwargs={"d": 4, "bits": 2}, wbits=1, abits=2,
            last_layer="quantized")


@pytest.mark.slow
def test_finish_keeps_metrics_a_weights_only_checkpoint_eval_and_the_runtime_top1(tmp_path):
    data = write_image_dataset(tmp_path, make_splits(n_train=48, n_test=16, size=8))
    chain = tmp_path / "runs" / "field" / "resnet20-fq"
    for stage in ("w4a4", "w2a2", "w1a2"):  # three stages of one epoch each
        train(run_config(chain, stage, epochs=1, data=str(data), **W1A2))
    assert read_checkpoint(chain / "w1a2" / "checkpoint.pt")["optimizer"] is not None
    (tmp_path / "results" / "field" / "resnet20-fq" / "resume" / "w4a4").mkdir(parents=True)  # an old snapshot
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PIXELQ": str(bin_dir / "pixelq"), "PYTHON": sys.executable, "FIELD_BENCH": "0"}
    done = subprocess.run(["bash", str(EXPERIMENTS / "field_runs.sh"), "finish", str(data), "resnet20-fq",
                           "resnet20-fq-float-ends"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resnet20-fq-float-ends: not finished" in done.stderr  # no chain of that name here
    out = tmp_path / "results" / "field" / "resnet20-fq"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "eval.json", "metrics.json", "metrics.jsonl",
                                                     "model.pxq", "run.json", "stages"]
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["w1a2", "w2a2", "w4a4"]
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["optimizer"] is None and ckpt["epoch"] == 1  # weights only, the last stage's
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "eval.json").read_text())["top1"] == metrics["top1"]  # `pixelq eval` reproduces it
    assert json.loads((out / "run.json").read_text())["n"] == 16  # the integer runtime on the test split


def test_results_page_shows_runs_in_flight_and_finished_against_their_targets(tmp_path, monkeypatch):
    """A run in flight shows its last snapshot; a finished one its top-1 against the target (met or by
    how much it is missed); the float-ends run the first+last gap once both ResNets are finished."""
    field = tmp_path / "results" / "field"
    snapshot = field / "cnv-fq" / "resume" / "w2a2"
    snapshot.mkdir(parents=True)
    snapshot.joinpath("metrics.jsonl").write_text("\n".join(json.dumps({"epoch": e, "test_top1": 80.0 + e})
                                                            for e in (1, 2)) + "\n")
    finished_stage = field / "cnv-fq" / "resume" / "w4a4"  # the stage before, finished
    finished_stage.mkdir()
    finished_stage.joinpath("metrics.jsonl").write_text(json.dumps({"epoch": 40, "test_top1": 85.0}) + "\n")
    finished_stage.joinpath("metrics.json").write_text(json.dumps({"top1": 85.0}))
    for name, top1 in (("resnet20-fq", 87.0), ("resnet20-fq-float-ends", 88.5)):
        (field / name).mkdir(parents=True)
        (field / name / "metrics.json").write_text(json.dumps({"top1": top1}))
        (field / name / "eval.json").write_text(json.dumps({"top1": top1}))
    (field / "resnet20-fq" / "run.json").write_text(json.dumps({"top1": 86.9}))
    monkeypatch.setattr(render_recipe_results, "ROOT", tmp_path)
    rows = {r["run"]: r for r in render_recipe_results.field_run_rows()}
    assert rows["cnv-fq"] == {"run": "cnv-fq", "network": render_recipe_results.FIELD_RUNS["cnv-fq"][0], "target": 87.8,
                              "finished": False, "stage": "w2a2", "epoch": 2, "top1": 82.0, "stages_done": {"w4a4": 85.0}}
    table = "\n".join(render_recipe_results.render_field_runs(list(rows.values())))
    assert "| in flight: w2a2, epoch 2 (w4a4 finished: 85.00 %) | 82.00 |" in table
    assert "| finished | 87.00 | 87.00 | 86.90 | ≥ 87.5; missed by 0.50 |" in table
    assert "gap ≤ 1.0 point; 1.50 (missed)" in table

