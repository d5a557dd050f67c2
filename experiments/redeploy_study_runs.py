"""Re-export the finished runs of a study and re-measure them on the integer runtime (runtime.json:
top-1, images/s, label agreement), e.g. after the runtime's kernels changed. Needs each run's
checkpoint.pt (kept on the machine that trained it). Time it on a quiet machine.

    python experiments/redeploy_study_runs.py results/first-layer-study --data DATA [--threads 2] [RUN ...]
"""
import argparse
import json
from pathlib import Path

from pixelq.data import load_dataset
from pixelq.study.first_layer import write_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("runs", nargs="*", help="run directory names (default: every finished run with a checkpoint)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    study = Path(args.study)
    runs = [study / r for r in args.runs] or sorted(p.parent for p in study.glob("*/metrics.json"))
    test = load_dataset(args.data).test
    for run in runs:
        if not (run / "checkpoint.pt").is_file():
            print(f"{run.name}: no checkpoint.pt here, skipped")
            continue
        write_runtime(run, test, args.threads)
        record = run / "runtime.json"
        if record.is_file():
            r = json.loads(record.read_text())
            print(f"{run.name}: runtime top-1 {r['runtime_top1']:.2f} %, {r['images_per_s']:.0f} images/s, "
                  f"labels equal {r['label_agreement']:.2f} %")
        else:
            print(f"{run.name}: no integer form (float or bit-plane first layer)")


if __name__ == "__main__":
    main()
