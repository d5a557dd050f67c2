"""The compression toolbox's trained networks, deployed: uniform W1A2 and W2A2 ResNet-20s, a
mixed-precision one (4-bit weights in the first layer, the first stage and the last layer, binary
inside) and a pruning-ternary one, each trained with `pixelq train`, exported, run on the integer
runtime and costed with `pixelq bitops`.

    python experiments/compression_runs.py [--data DATA] [--epochs 15]   # default: the embedded subset

Writes results/compression/<run>/ (metrics.json, checkpoint.pt, model.pxq, bitops.json,
deployment.json) and results/compression/summary.json, and fills docs/results.md's table between its
markers. Resumable: a run whose deployment.json exists is not trained again.
"""
import argparse
import json
from pathlib import Path

from readme_section import RESULTS_PAGE, fill, run_pixelq

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "compression"
START, END = "<!-- compression:start -->", "<!-- compression:end -->"
BASE = ["--first-layer", "pixel-embedding", "--abits", "2", "--last-layer", "quantized"]
# run: (weights, as the table says it, train flags, per-layer overrides)
RUNS = {
    "w1a2": ("binary", ["--wbits", "1"], None),
    "w2a2": ("2-bit LSQ", ["--wbits", "2"], None),
    "mixed": ("4-bit LSQ in the first conv, stage 1 and the last layer; binary elsewhere", ["--wbits", "1"],
              {"stem.conv": "lsq:4", "stages.0.*.conv*": "lsq:4", "fc": "lsq:4"}),
    "pruned-ternary": ("pruned ternary (half zero, per channel) in every block conv; binary first conv and last layer",
                       ["--wbits", "1"], {"stages.*.conv*": "pruned_ternary:0.5:channel"}),
}


def deploy(run: Path, data: "str | None") -> dict:
    """Export, runtime top-1 and label agreement with PyTorch, BOPs, zero weights."""
    import pixelq
    from pixelq.exporting.verify import label_agreement
    from pixelq.integer import load_model
    from pixelq.runtime import load

    exported = json.loads(run_pixelq("export", run / "checkpoint.pt", "-o", run / "model.pxq"))
    run_pixelq("bitops", run / "model.pxq", "--json", run / "bitops.json")
    bitops = json.loads((run / "bitops.json").read_text())
    model = pixelq.load_checkpoint(run / "checkpoint.pt")
    test = pixelq.load_dataset(data).test
    runtime = load(run / "model.pxq")
    agreement = label_agreement(model, runtime, test.images)
    graph = load_model(run / "model.pxq")
    convs = [graph.tensors[n.tensor_name("weight")] for n in graph.nodes if n.op == "conv"]
    record = {"pxq_bytes": exported["bytes"], "runtime_top1": float(100 * (runtime.predict(test.images) ==
                                                                           test.labels).mean()),
              "labels": agreement, "bops": bitops["totals"]["bops"], "macs": bitops["totals"]["macs"],
              "weight_bits": bitops["totals"]["param_bits"],
              "zero_weight_share": float(sum((w == 0).sum() for w in convs) / sum(w.size for w in convs))}
    (run / "deployment.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def render(rows: list) -> str:
    w1a2 = next(r for r in rows if r["run"] == "w1a2")
    lines = [START, "", f"ResNet-20 with pixel embedding, 2-bit activations, quantized last layer, trained "
             f"{rows[0]['epochs']} epochs on {rows[0]['data']} (`python experiments/compression_runs.py`, "
             "`results/compression/summary.json`); each exported and run on the integer runtime:", "",
             "| network | weights | top-1 (PyTorch) | top-1 (runtime) | labels equal | BOPs | BOPs vs W1A2 | weight bits | "
             "zero weights | .pxq |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lab = r["labels"]
        lines.append(f"| {r['run']} | {r['weights']} | {r['top1']:.2f} % | {r['runtime_top1']:.2f} % | "
                     f"{lab['same']}/{lab['n']} | {r['bops'] / 1e9:.2f} G | {r['bops'] / w1a2['bops']:.2f}x | "
                     f"{r['weight_bits'] / 8 / 1024:.1f} KiB | {100 * r['zero_weight_share']:.0f} % | "
                     f"{r['pxq_bytes'] / 1024:.1f} KiB |")
    return "\n".join(lines + ["", "Labels that differ do so only at ties of the integer logits. Ternary weights are "
                              "stored in 2 bits; the runtime skips no zero weight (it cannot prove one zero before "
                              "it packs the weights).", "", END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data set (default: the embedded subset)")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    rows = []
    for name, (weights, flags, overrides) in RUNS.items():
        run = OUT / name
        if not (run / "deployment.json").is_file():
            run.mkdir(parents=True, exist_ok=True)
            extra = []
            if overrides:
                (run / "overrides.json").write_text(json.dumps(overrides, indent=2) + "\n")
                extra = ["--overrides", run / "overrides.json"]
            data = ["--data", args.data] if args.data else []
            run_pixelq("train", *data, "--model", "resnet20", *BASE, *flags, *extra, "--epochs", args.epochs, "--out", run,
                   "--resume", "--quiet")
            deploy(run, args.data)
        metrics = json.loads((run / "metrics.json").read_text())
        rows.append({"run": name, "weights": weights, "overrides": overrides, "top1": metrics["top1"],
                     "epochs": args.epochs, "data": args.data or "the embedded subset",
                     **json.loads((run / "deployment.json").read_text())})
        print(f"{name}: {rows[-1]['top1']:.2f} %, runtime {rows[-1]['runtime_top1']:.2f} %, BOPs {rows[-1]['bops']:,}")
    (OUT / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    fill(RESULTS_PAGE, START, END, render(rows))


if __name__ == "__main__":
    main()
