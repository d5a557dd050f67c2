"""The post-training quantization table: float, int8, and round-to-nearest vs GPFQ at 4, 3 and 2 bits,
top-1 on the test split and the exported .pxq size, from one float checkpoint.

    python experiments/ptq_table.py results/recipe/resnet20-float/checkpoint.pt --data DATA

Each method is `pixelq quantize` (into results/ptq/<method>-<bits>/), then `pixelq export`; the
rows go to results/ptq/summary.json and docs/results.md's PTQ section (between its markers) is rendered from it.
Resumable: a method whose metrics.json exists is not quantized again.
"""
import argparse
import json
from pathlib import Path

from readme_section import RESULTS_PAGE, fill, load, run_pixelq

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "ptq"
START, END = "<!-- ptq:start -->", "<!-- ptq:end -->"
METHODS = [("int8", 8), ("rtn", 4), ("gpfq", 4), ("rtn", 3), ("gpfq", 3), ("rtn", 2), ("gpfq", 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--calib", type=int, default=512)
    args = parser.parse_args()
    float_eval = json.loads(run_pixelq("eval", "--checkpoint", args.checkpoint, "--data", args.data))
    rows = [{"method": "float", "bits": 32, "top1": float_eval["top1"], "pxq_bytes": None}]
    for method, bits in METHODS:
        run = OUT / f"{method}-{bits}"
        if not (run / "metrics.json").is_file():
            run_pixelq("quantize", args.checkpoint, "--method", method, "--bits", bits, "--calib", args.calib,
                   "--data", args.data, "--out", run)
        run_pixelq("export", run / "checkpoint.pt", "-o", run / "model.pxq")
        metrics = load(run / "metrics.json")
        rows.append({"method": method, "bits": bits, "top1": metrics["top1"],
                     "pxq_bytes": (run / "model.pxq").stat().st_size})
    (OUT / "summary.json").write_text(json.dumps({"from": str(args.checkpoint), "calib": args.calib, "rows": rows},
                                                 indent=2) + "\n")
    ref = rows[0]["top1"]
    lines = [START, "", f"Post-training quantization of `{args.checkpoint}` (`python experiments/ptq_table.py`; "
             f"{args.calib} calibration images; 8-bit activations, int8 first layer, float last layer):", "",
             "| method | weight bits | top-1 % | vs float | .pxq size |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        size = "–" if r["pxq_bytes"] is None else f"{r['pxq_bytes'] / 1024:.1f} KiB"
        lines.append(f"| {r['method']} | {r['bits']} | {r['top1']:.2f} | {r['top1'] - ref:+.2f} | {size} |")
    fill(RESULTS_PAGE, START, END, "\n".join(lines + ["", END]))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
