"""Re-export the finished runs of a study and re-measure them on the integer runtime (runtime.json:
top-1, images/s, label agreement), e.g. after the runtime's kernels changed. Re-exporting needs each
run's checkpoint.pt (kept on the machine that trained it); --time-only re-times the committed
model.pxq instead (top-1 and images/s; the export's label comparison is kept, and a run whose
runtime top-1 moved is refused). Time it on a quiet machine.

    python experiments/redeploy_study_runs.py results/first-layer-study --data DATA [--threads 2] [--time-only] [RUN ...]
"""
import argparse
import json
from pathlib import Path

from pixelq.data import load_dataset
from first_layer_study import retime_runtime, write_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("runs", nargs="*", help="run directory names (default: every finished run)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time-only", action="store_true", help="re-time model.pxq; no checkpoint needed")
    args = ap.parse_args()
    study = Path(args.study)
    runs = [study / r for r in args.runs] or sorted(p.parent for p in study.glob("*/metrics.json"))
    test = load_dataset(args.data).test
    for run in runs:
        if args.time_only:
            if not (run / "runtime.json").is_file():
                print(f"{run.name}: no runtime.json (no integer form, or never deployed), skipped")
                continue
            retime_runtime(run, test, args.threads)
        elif not (run / "checkpoint.pt").is_file():
            print(f"{run.name}: no checkpoint.pt here, skipped")
            continue
        else:
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
