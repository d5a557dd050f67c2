"""The demo end to end on a tiny data set: both trainings, export, runtime, report and plot."""
import json

import pytest

from pixelq.demo import run_demo
from conftest import write_image_dataset


@pytest.mark.slow
def test_demo_writes_report_and_plot(tmp_path, tiny_splits):
    data = write_image_dataset(tmp_path, tiny_splits)
    out = tmp_path / "demo"
    rows = run_demo(out=str(out), data=str(data), epochs=1, progress=False)
    assert [r["run"] for r in rows] == ["float", "w1a2-pe-qlast"]
    report = json.loads((out / "report.json").read_text())
    deployed = report["deployment"]
    assert deployed["labels_differ_unexplained"] == 0  # only integer-logit ties may differ
    assert deployed["test_images"] == len(tiny_splits.test)
    assert deployed["runtime_images_per_s"] > 0 and deployed["torch_fp32_images_per_s"] > 0
    text = (out / "report.md").read_text()
    assert "| float |" in text and "| w1a2-pe-qlast |" in text and "speed-up" in text
    assert f"top-1 on {len(tiny_splits.test)} test images" in text
    png = (out / "pixel_embedding.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "w1a2-pe-qlast.pxq").stat().st_size > 0
