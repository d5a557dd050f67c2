"""Render docs/results.md's "Training recipes" table from committed JSON (never from numbers typed by hand).

    python experiments/render_recipe_results.py     # rewrites docs/results.md between the recipe markers

Reads results/recipe/<run>/metrics.json and eval.json (written by experiments/recipe_cifar10.sh),
results/bench/runtime-<run>.json (written by experiments/bench_recipe_runs.sh), and the published
numbers in experiments/field_numbers.json; writes what it renders (the runs, the first-layer
comparison of the finished W1A2 runs, the ablation) to results/recipe/summary.json.
A run still in flight (no metrics.json yet) is shown from its metrics.jsonl, marked as such.
"""
import json
from pathlib import Path

from readme_section import RESULTS_PAGE, fill, load

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "results" / "recipe"
BENCH = ROOT / "results" / "bench"  # runtime-<run>.json from experiments/bench_recipe_runs.sh
ABLATION = ROOT / "results" / "recipe-ablation"
ABLATION_ORDER = ["base", "no-init", "no-kd", "saq", "base-2x-epochs", "step-schedule", "residual-4bit",
                  "residual-4bit-signed", "residual-8bit-signed", "residual-4bit-signed+ema",
                  "residual-4bit-signed+label-smoothing", "residual-4bit-signed+airbench-teacher",
                  "residual-4bit-signed+4x-epochs", "residual-4bit-signed+offsets",
                  "residual-4bit-signed+alternating-flip", "residual-4bit-signed+progressive"]
START, END = "<!-- recipes:start -->", "<!-- recipes:end -->"
ORDER = ["resnet20-float", "resnet20-w1a2-pe-qlast", "resnet20-w1a2-float-first", "resnet20-w1a2-pe",
         "resnet20-w1a2-int8-first", "resnet20-w1a2-pe-qlast-r4s"]
AGAINST = {"residual-8bit-signed": "residual-4bit-signed"}  # a variant of a variant: measured against that one
PAYS = 1.0  # points over base at the ablation's budget that count as paying (its two seeds differ by up to ~1.3)
TARGETS = {"resnet20-w1a2-pe-qlast": 87.0, "resnet20-w1a2-pe-qlast-r4s": 87.0}
HE_FLOAT = 91.25  # He et al.'s ResNet-20 on the original CIFAR-10 (experiments/field_numbers.json)
FLOAT_TOLERANCE = 0.5  # the float run's target: within this of HE_FLOAT less the JPEG copy's measured penalty
# the ablation variants a full run's own settings already include (a signed 4-bit stream is a 4-bit stream)
CARRIED_BY = {"residual-4bit": lambda c: c.get("residual_bits") == 4,
              "residual-4bit-signed": lambda c: c.get("residual_bits") == 4 and c.get("signed_residual")}
FIRST_LAYER_RUNS = ["resnet20-w1a2-float-first", "resnet20-w1a2-int8-first", "resnet20-w1a2-pe", "resnet20-w1a2-pe-qlast"]


def run_row(name: str) -> "dict | None":
    folder = RUNS / name
    metrics, evaluated = load(folder / "metrics.json"), load(folder / "eval.json")
    lines = (folder / "metrics.jsonl").read_text().splitlines() if (folder / "metrics.jsonl").is_file() else []
    history = [json.loads(line) for line in lines]
    if not history:
        return None
    ckpt_config = metrics["config"] if metrics else None
    train_size = metrics["train_size"] if metrics else None
    # wall time per epoch where recorded, else the train time alone (runs from before epoch_s was kept)
    seconds = sum(r.get("epoch_s", (train_size or 50000) / r["train_images_per_s"]) for r in history)
    return {
        "run": name, "finished": metrics is not None, "epochs_done": history[-1]["epoch"],
        "epochs": metrics["epochs"] if metrics else None, "config": ckpt_config,
        "top1": metrics["top1"] if metrics else history[-1]["test_top1"],
        "train_top1": history[-1]["train_top1"],
        "eval_top1": evaluated["top1"] if evaluated else None, "cpu_hours": seconds / 3600,
        "target": TARGETS.get(name) if name != "resnet20-float" else float_target(),
    }


def float_target() -> "float | None":
    """He et al.'s float ResNet-20 less what the JPEG copy costs (results/calibration) and the tolerance."""
    calibration = load(ROOT / "results" / "calibration" / "summary.json")
    return round(HE_FLOAT - calibration["penalty"] - FLOAT_TOLERANCE, 2) if calibration else None


def describe(c: dict) -> str:
    bits = "float" if c["wbits"] == 32 else f"W{c['wbits']}A{c['abits']}"
    parts = [bits, f"{c['first_layer']} first", f"{c['last_layer']} last"]
    if c.get("residual_bits") not in (None, c["abits"]):
        parts.append(f"{c['residual_bits']}-bit residual stream")
    if c.get("signed_residual"):
        parts.append("signed residual branch")
    if c.get("init"):
        parts.append("init from float")
    if c.get("teacher"):
        parts.append(f"KD w={c['kd_weight']} T={c['kd_temperature']}")
    if c.get("saq_rho"):
        parts.append(f"SAQ rho={c['saq_rho']}")
    return ", ".join(parts)


def ablation_rows() -> list:
    """One row per ablation variant: top-1 of each finished seed, their mean, and the gap to base."""
    rows = []
    for name in ABLATION_ORDER:
        runs = [load(p) for p in sorted(ABLATION.glob(f"{name}-s[0-9]*/metrics.json"))]
        if runs:
            top1 = [m["top1"] for m in runs]
            rows.append({"variant": name, "seeds": [m["config"]["seed"] for m in runs], "top1": top1,
                         "top1_mean": sum(top1) / len(top1), "epochs": runs[0]["epochs"],
                         "train_size": runs[0]["train_size"]})
    means = {r["variant"]: r["top1_mean"] for r in rows}
    for r in rows:  # "A+lever" is measured against A, the 8-bit stream against the 4-bit one, the rest against base
        r["against"] = r["variant"].split("+")[0] if "+" in r["variant"] else AGAINST.get(r["variant"], "base")
        r["gap_to_base"] = None if r["against"] not in means else r["top1_mean"] - means[r["against"]]
    return rows


def render_ablation(rows: list) -> list:
    if not rows:
        return []
    out = [f"What each ingredient is worth (`bash experiments/recipe_ablation.sh DATA`: the cifar-w1a2 recipe at "
           f"{rows[0]['epochs']} epochs on {rows[0]['train_size']} training images, one ingredient changed per row; "
           "`saq` costs two forward/backward passes per step, so `base-2x-epochs` is its equal-compute baseline; "
           "`residual-4bit` adds a 4-bit residual stream, `--residual-bits 4`, the convs still reading 2-bit codes; "
           "`residual-4bit-signed` adds to that a signed residual branch, `--signed-residual`, and "
           "`residual-8bit-signed` widens its stream to 8 bits (measured against it); `A+lever` adds one "
           "lever to variant A and is measured against A: `ema` a weight average (`--ema 0.995`), `label-smoothing` "
           "0.1, `airbench-teacher` distillation from the calibration's airbench94 network instead of the float "
           "ResNet-20 (at temperature 1: it trained with label smoothing 0.2), `4x-epochs` four times the schedule, "
           "`offsets` a learned offset per channel before each block's input quantizer (`--input-offsets`, "
           "ReActNet's RSign, folded into the thresholds at export), `alternating-flip` airbench's flip "
           "(`--flip alternate`), `progressive` the same epochs in three stages, W4A4, W2A2, then W1A2, each "
           "`--init` the one before (APoT's float -> 4 -> 2 -> 1 bit schedule)):",
           "",
           "| variant | seeds | top-1 % per seed | mean | vs | gain |", "|---|---|---|---:|---|---:|"]
    for r in rows:
        gap = "–" if r["gap_to_base"] is None else f"{r['gap_to_base']:+.2f}"
        out.append(f"| {r['variant']} | {', '.join(map(str, r['seeds']))} | "
                   f"{', '.join(f'{t:.2f}' for t in r['top1'])} | {r['top1_mean']:.2f} | {r['against']} | {gap} |")
    return out + [""]


def missed_targets(rows: list, ablation: list) -> list:
    """What each missed target was missed by, and what was tried against it."""
    tried = [r for r in ablation if r["gap_to_base"] is not None and r["variant"] != "base"]
    worth = ", ".join(f"{r['variant']} {r['gap_to_base']:+.2f}" for r in tried)
    paid = [r["variant"] for r in tried if r["gap_to_base"] > PAYS]
    out = []
    for r in rows:
        if not r["finished"] or r["target"] is None or r["top1"] >= r["target"]:
            continue
        line = (f"**{r['run']} missed its target by {r['target'] - r['top1']:.2f} points** "
                f"({r['top1']:.2f} % against {r['target']:.2f} %) after {r['epochs']} epochs of `{r['config']['recipe']}`")
        if r["config"]["wbits"] == 32:
            line += (f", ending at {r['train_top1']:.2f} % train top-1, so it does not underfit. The field's float "
                     "numbers below are on the original CIFAR-10 and, for He et al., a 164-epoch schedule; this copy "
                     "is stored as JPEG at about quality 75, which makes it harder by an amount we cannot measure "
                     "here without the original images.")
        else:
            carried = [v for v in paid if v in CARRIED_BY and CARRIED_BY[v](r["config"])]
            line += (", started from the float network and distilled from it. Tried at the short budget of the "
                     f"ablation below (points against the recipe as shipped, or against the variant a row extends): {worth}. More than {PAYS:.0f} point "
                     f"(beyond the seeds' spread) paid: {', '.join(paid) or 'none'}"
                     + (f"; this run already carries {', '.join(carried)}, and of the rest "
                        f"{', '.join(v for v in paid if v not in carried) or 'none'} paid" if carried else "")
                     + "; the field's quantized numbers below come from schedules three to five times as long.")
        out += [line, ""]
    return out


def first_layer_rows(rows: list) -> list:
    """The finished W1A2 runs that differ in their first (and last) layer, with the first layer's
    cost on the run's own image shape and the gap to the float first layer at the same recipe."""
    from pixelq import TrainConfig, create_model
    from pixelq.models.summary import first_layer_cost

    out = []
    for r in rows:
        if r["run"] in FIRST_LAYER_RUNS and r["finished"]:  # the cost follows the architecture, not the weights
            metrics = json.loads((RUNS / r["run"] / "metrics.json").read_text())
            height, width, channels = metrics["data"]["image_shape"]
            model = create_model(r["config"]["model"], in_channels=channels, num_classes=len(metrics["classes"]),
                                 **TrainConfig(**r["config"]).model_arguments())
            cost = first_layer_cost(model, height, width)
            out.append({"run": r["run"], "first_layer": r["config"]["first_layer"],
                        "last_layer": r["config"]["last_layer"], "top1": r["top1"], "first_layer_bops": cost["bops"],
                        "first_layer_param_bits": cost["param_bits"]})
    reference = next((f for f in out if f["first_layer"] == "float"), None)
    for f in out:
        f["gap_to_float_first"] = None if reference is None else f["top1"] - reference["top1"]
    return out


def first_layer_verdict(rows: list, ablation: list) -> list:
    """Pixel embedding against int8 input into a binary conv, the row to beat, both with a float last layer."""
    by_first = {f["first_layer"]: f for f in rows if f["last_layer"] == "float"}
    pe, int8 = by_first.get("pixel-embedding"), by_first.get("int8")
    if pe is None or int8 is None:
        return []
    spread = max((max(r["top1"]) - min(r["top1"]) for r in ablation if len(r["top1"]) > 1), default=None)
    lead = pe["top1"] - int8["top1"]
    verdict = "ahead of" if lead > 0 else "behind" if lead < 0 else "level with"
    within = ("" if spread is None else
              f"; the difference is {'within' if abs(lead) <= spread else 'beyond'} the largest spread between two seeds in "
              f"the ablation below, {spread:.2f} points")
    return [f"With a float last layer, pixel embedding ends {abs(lead):.2f} points {verdict} int8 input into a binary "
            f"first conv ({pe['top1']:.2f} % against {int8['top1']:.2f} %, one seed each{within}), at "
            f"{pe['first_layer_bops'] / int8['first_layer_bops']:.1f}x its first-layer bit-ops.", ""]


def render_first_layer(rows: list, ablation: list) -> list:
    if len(rows) < 2:
        return []
    out = ["The first layer at this accuracy (the finished W1A2 runs above; first-layer bit-ops = MACs x input bits x "
           "weight bits on one image, float counted as 32 bits):", "",
           "| run | first layer | last layer | top-1 % | vs float first | first-layer bit-ops (M) |",
           "|---|---|---|---:|---:|---:|"]
    for f in rows:
        gap = "–" if f["gap_to_float_first"] is None else f"{f['gap_to_float_first']:+.2f}"
        out.append(f"| {f['run']} | {f['first_layer']} | {f['last_layer']} | {f['top1']:.2f} | {gap} | "
                   f"{f['first_layer_bops'] / 1e6:.1f} |")
    return out + [""] + first_layer_verdict(rows, ablation)


def deployment_rows() -> list:
    """The recipe runs timed on the integer runtime (`pixelq bench --model`), one thread, batch 64 and 1,
    each against PyTorch fp32 and ONNX Runtime int8 timed in the same run."""
    out = []
    for name in ORDER:
        bench = load(BENCH / f"runtime-{name}.json")
        if bench:
            times, ratios = bench["times"]["threads_1"], bench["ratios"]
            out.append({"run": name, "isa": bench["runtime_isa"], "b64_ms": times["b64_pixelq_s"] * 1e3,
                        "b1_ms": times["b1_pixelq_s"] * 1e3, "b64_vs_torch_fp32": ratios["resnet20_b64_vs_torch_fp32"],
                        "b64_vs_ort_int8": ratios["resnet20_b64_vs_ort_int8"]})
    return out


def render_deployment(rows: list) -> list:
    if not rows:
        return []
    out = ["The trained networks on pixelq's integer runtime (`bash experiments/bench_recipe_runs.sh`: `pixelq export`, "
           "then `pixelq bench --model`, trainings in flight paused meanwhile; 1 thread; speed-up = baseline time / pixelq time, the "
           "baselines a float ResNet-20 on PyTorch and its int8 QDQ form on ONNX Runtime, timed in the same run; a run "
           "in flight is timed at the checkpoint it had reached: the kernels, and so the time, follow the network's "
           "shape and bits, not its weights' values):", "",
           "| run | kernels | batch 1 (ms) | batch 64 (ms) | vs PyTorch fp32, batch 64 | vs ORT int8, batch 64 |",
           "|---|---|---:|---:|---:|---:|"]
    out += [f"| {d['run']} | {d['isa']} | {d['b1_ms']:.2f} | {d['b64_ms']:.1f} | {d['b64_vs_torch_fp32']:.2f}x | "
            f"{d['b64_vs_ort_int8']:.2f}x |" for d in rows]
    return out + [""]


# The field issue's long runs (experiments/field_runs.sh): name -> (network, top-1 target; None: the gap's run)
FIELD_RUNS = {"resnet20-fq": ("ResNet-20, pixel embedding first, binary weights, 2-bit codes, quantized last layer, "
                              "signed 4-bit residual stream", 87.5),
              "resnet20-fq-float-ends": ("the same with a float first conv and a float last layer", None),
              "cnv-fq": ("CNV W1A2, pixel embedding first, quantized last layer", 87.8)}
FIELD_STAGES = ("w4a4", "w2a2", "w1a2")
GAP_TARGET = 1.0  # points between resnet20-fq-float-ends and resnet20-fq


def field_run_rows() -> list:
    """Each long run: finished (results/field/NAME/metrics.json, eval.json, run.json from `field_runs.sh
    finish`) or in flight (the last snapshot under results/field/NAME/resume/: its stage, epoch, test top-1)."""
    rows = []
    for name, (network, target) in FIELD_RUNS.items():
        folder = ROOT / "results" / "field" / name
        metrics = load(folder / "metrics.json")
        if metrics:
            evaluated, ran = load(folder / "eval.json"), load(folder / "run.json")
            rows.append({"run": name, "network": network, "target": target, "finished": True, "top1": metrics["top1"],
                         "eval_top1": evaluated["top1"] if evaluated else None,
                         "runtime_top1": ran["top1"] if ran else None})
            continue
        stages = [s for s in FIELD_STAGES if (folder / "resume" / s / "metrics.jsonl").is_file()]
        if not stages:
            continue
        last = json.loads((folder / "resume" / stages[-1] / "metrics.jsonl").read_text().splitlines()[-1])
        done = {s: load(folder / "resume" / s / "metrics.json") for s in stages[:-1]}  # the stages finished before
        rows.append({"run": name, "network": network, "target": target, "finished": False, "stage": stages[-1],
                     "epoch": last["epoch"], "top1": last["test_top1"],
                     "stages_done": {s: m["top1"] for s, m in done.items() if m}})
    return rows


def render_field_runs(runs: list) -> list:
    """The long runs' table: the targets met or by how much they are missed, the first+last gap."""
    if not runs:
        return []
    out = ["### Long runs (`bash experiments/field_runs.sh train DATA NAME`)", "",
           "Each a chain float -> W4A4 (40 epochs) -> W2A2 (40) -> W1A2 (120), each stage started from the one before "
           "(the ablation's progressive lever), recipe cifar-w1a2 with distillation from the float ResNet-20 and "
           "alternating flips; a run in flight shows its last committed snapshot.", "",
           "| run | network | state | top-1 % | `pixelq eval` | integer runtime | target |", "|---|---|---|---:|---:|---:|---|"]
    done = {r["run"]: r for r in runs if r["finished"]}
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for r in runs:
        state = "finished" if r["finished"] else f"in flight: {r['stage']}, epoch {r['epoch']}" + "".join(
            f" ({s} finished: {top1:.2f} %)" for s, top1 in r.get("stages_done", {}).items())
        if r["target"] is not None:
            target = f"≥ {r['target']:.1f}" + (("; met" if r["top1"] >= r["target"] else
                                                f"; missed by {r['target'] - r['top1']:.2f}") if r["finished"] else "")
        else:
            target = f"gap ≤ {GAP_TARGET:.1f} point"
            if r["finished"] and "resnet20-fq" in done:
                gap = r["top1"] - done["resnet20-fq"]["top1"]
                target += f"; {gap:.2f} ({'met' if gap <= GAP_TARGET else 'missed'})"
        out.append(f"| {r['run']} | {r['network']} | {state} | {r['top1']:.2f} | {fmt(r.get('eval_top1'))} | "
                   f"{fmt(r.get('runtime_top1'))} | {target} |")
    return out + [""]


def render(rows: list, first_layer: list, ablation: list, field: dict, deployment: list) -> str:
    out = [START, "", "Full CIFAR-10-JPEG (50,000 train / 10,000 test), ResNet-20, one seed, on 2 CPU cores "
           "(`bash experiments/recipe_cifar10.sh DATA`; each run's `metrics.json` and `eval.json` are in "
           "`results/recipe/<run>/`, with a weights-only `checkpoint.pt` for the float run and the two the zoo ships):", "",
           "| run | network | recipe | epochs | top-1 % | `pixelq eval` top-1 % | target | last epoch's train top-1 % "
           "| hours on 2 cores |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r["config"] or {}
        epochs = f"{r['epochs_done']}" if r["finished"] else f"{r['epochs_done']} (in flight)"
        network = describe(c) if c else "(in flight)"
        evaluated = f"{r['eval_top1']:.2f}" if r["eval_top1"] is not None else "–"
        target = "–" if r["target"] is None else (f"≥ {r['target']:.2f} " +
                                                  ("met" if r["top1"] >= r["target"] else f"missed by {r['target'] - r['top1']:.2f}")
                                                  if r["finished"] else f"≥ {r['target']:.2f}")
        out.append(f"| {r['run']} | {network} | {c.get('recipe') or '–'} | {epochs} | {r['top1']:.2f} | {evaluated} | "
                   f"{target} | {r['train_top1']:.2f} | {r['cpu_hours']:.1f} |")
    out += ["", "Hours are the sum of the epochs' wall times (training and test pass), so they include the "
            "pauses and the sharing of the 2 cores with benchmarks, tests and CI while a run was in flight, and, "
            "for the last runs, with a second run trained beside it on one thread each (`OMP_NUM_THREADS=1`: "
            "two runs side by side trained about as many images an hour in all as one run alone on both threads: "
            "compare the epoch_s of their metrics.jsonl), and runs that spanned sessions ran on more than one "
            "machine of this kind. "
            "Train top-1 is measured on augmented images while the epoch trains.", ""]
    out += render_field_runs(field_run_rows())
    out += missed_targets(rows, ablation) + render_deployment(deployment) + render_first_layer(first_layer, ablation)
    out += render_ablation(ablation)
    calibration = load(ROOT / "results" / "calibration" / "summary.json")
    penalty = (f" On airbench94, our JPEG copy costs {calibration['penalty']:.2f} points against the original "
               "(the calibration above): compare each number below with ours after taking that off."
               if calibration and calibration["ours"] else "")
    out += [field["note"] + penalty, "", "| network | top-1 % | schedule | source |", "|---|---:|---|---|"]
    out += [f"| {f['network']} | {f['top1']:.2f} | {f['schedule']} | {f['source']} |" for f in field["rows"]]
    out += ["", END]
    return "\n".join(out)


def main() -> None:
    rows = [r for r in (run_row(name) for name in ORDER) if r is not None]
    first_layer, ablation, deployment = first_layer_rows(rows), ablation_rows(), deployment_rows()
    summary = {"runs": rows, "first_layer": first_layer, "ablation": ablation, "deployment": deployment}
    (RUNS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    field = json.loads((ROOT / "experiments" / "field_numbers.json").read_text())
    section = render(rows, first_layer, ablation, field, deployment)
    fill(RESULTS_PAGE, START, END, section)
    print(section)


if __name__ == "__main__":
    main()
