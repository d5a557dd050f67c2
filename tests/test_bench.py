"""Benchmark commands run and write what they promise (their numbers are not judged here)."""
import json

from pixelq.bench import data_throughput, train_step_throughput
from pixelq.cli import main


def test_train_step_throughput_times_every_variant():
    result = train_step_throughput(batch_size=4, steps=1, warmup=1, rounds=1, image_size=8, threads=1)
    assert set(result["step_s"]) == {"float", "w1a2-float-first", "w1a2-pe-qlast"}
    assert all(v > 0 for v in result["step_s"].values())
    assert set(result["ratios"]) == {"w1a2-float-first_step_vs_float", "w1a2-pe-qlast_step_vs_float"}


def test_bench_data_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "data.json"
    assert main(["bench-data", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 5000 and result["augment_images_per_s"] > 0
    assert "images/s" in capsys.readouterr().out


def test_data_throughput_reports_cached_load():
    assert data_throughput(repeats=1)["cached_load_s"] >= 0
