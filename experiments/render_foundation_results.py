"""Render docs/benchmarks.md's results section from committed JSON (never from numbers typed by hand).

    python experiments/render_foundation_results.py     # rewrites docs/benchmarks.md and docs/runtime.md between the markers

Reads results/cifar10-jpeg/<run>/metrics.json (written by experiments/foundation_cifar10.sh) and
results/bench/train_step.json, results/bench/data.json, results/bench/runtime.json (written by
`pixelq bench-train`, `pixelq bench-data`, `pixelq bench`), and writes results/cifar10-jpeg/summary.json beside the runs.
"""
import json
from pathlib import Path

from readme_section import BENCHMARKS_PAGE, fill, load

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "results" / "cifar10-jpeg"
BENCH = ROOT / "results" / "bench"
START, END = "<!-- results:start -->", "<!-- results:end -->"
SPEED_START, SPEED_END = "<!-- runtime-speed:start -->", "<!-- runtime-speed:end -->"  # in docs/runtime.md
ORDER = ["resnet20-float", "resnet20-w1a2-float-first", "resnet20-w1a2-pe-qlast"]


def bits(n: int) -> str:
    return "float" if n == 32 else str(n)


def run_rows() -> list:
    rows = []
    for name in ORDER:
        path = RUNS / name / "metrics.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        c = m["config"]
        rows.append({
            "run": name, "first_layer": c["first_layer"], "wbits": c["wbits"], "abits": c["abits"],
            "last_layer": c["last_layer"], "epochs": m["epochs"], "top1": m["top1"], "top5": m["top5"],
            "model_size_bytes": m["model_size_bytes"], "train_images_per_s": m["train_images_per_s"],
        })
    return rows


def render(rows: list, train_bench: "dict | None", data_bench: "dict | None") -> str:
    out = [START, ""]
    if rows:
        c = json.loads((RUNS / rows[0]["run"] / "metrics.json").read_text())["config"]
        out += [
            f"Full CIFAR-10-JPEG (50,000 train / 10,000 test), ResNet-20, one schedule for every run: "
            f"{c['epochs']} epochs, {c['optimizer']} lr {c['lr']} {c['schedule']}, weight decay {c['weight_decay']}, "
            f"batch {c['batch_size']}, pad-4 crop + flip, seed {c['seed']}. "
            "Produced by `bash experiments/foundation_cifar10.sh DATA`; each run's `metrics.json` is in "
            "`results/cifar10-jpeg/<run>/`.",
            "",
            "| run | first layer | W / A bits | last layer | top-1 % | top-5 % | model size | gap to float top-1 |",
            "|---|---|---|---|---:|---:|---:|---:|",
        ]
        ref = next((r["top1"] for r in rows if r["run"] == "resnet20-float"), None)
        for r in rows:
            gap = f"{r['top1'] - ref:+.2f}" if ref is not None else "n/a"
            out.append(f"| {r['run']} | {r['first_layer']} | {bits(r['wbits'])} / {bits(r['abits'])} | "
                       f"{r['last_layer']} | {r['top1']:.2f} | {r['top5']:.2f} | "
                       f"{r['model_size_bytes'] / 1024:.1f} KiB | {gap} |")
        out.append("")
    deployed = load(RUNS / "resnet20-w1a2-pe-qlast" / "deployment.json")
    evaluated = load(RUNS / "resnet20-w1a2-pe-qlast" / "eval.json")
    if deployed and evaluated:
        lab = deployed["labels"]
        out += [
            "The fully quantized run, re-evaluated and deployed "
            "(`pixelq eval` → `eval.json`; `python experiments/verify_deployment.py RUN --data DATA` → "
            "`deployment.json`, `model.pxq`):", "",
            f"- `pixelq eval` on its checkpoint: top-1 {evaluated['top1']:.2f} % on {evaluated['n']} test images.",
            f"- integer-only `.pxq` file: {deployed['file_bytes'] / 1024:.1f} KiB "
            f"({deployed['file_bytes'] / deployed['payload_bytes']:.3f} × the packed weights + thresholds + LUT).",
            f"- integer runtime top-1 {deployed['runtime_top1']:.2f} % (fake-quant PyTorch {deployed['fake_quant_top1']:.2f} %); "
            f"labels equal on {lab['same']} of {lab['n']} images, the other {lab['differ_at_logit_ties']} at ties of the "
            f"integer logits, {lab['differ_unexplained']} unexplained.",
            f"- integer codes of every layer on the first {deployed['layer_images']} test images: "
            f"{deployed['codes_differ']} of {deployed['codes_compared']:,} differ from PyTorch's.", ""]
    if train_bench:
        first = next(iter(train_bench["step_s"]))
        compiled = train_bench.get("compile_s") or {}
        command = f"pixelq bench-train{' --compile' if compiled else ''} --json results/bench/train_step.json"
        aside = (f"; a compiled variant's compile time, {', '.join(f'{v:.0f} s' for v in compiled.values())}, is not "
                 "in its step time" if compiled else "")
        out += [f"Train step time, {train_bench['model']}, batch {train_bench['batch_size']}, "
                f"{train_bench['threads']} threads, best of {train_bench['rounds']} interleaved rounds "
                f"(`{command}`{aside}):", "",
                f"| variant | ms / step | images/s | step time vs {first} |", "|---|---:|---:|---:|"]
        for k, v in train_bench["step_s"].items():
            out.append(f"| {k} | {1000 * v:.0f} | {train_bench['images_per_s'][k]:.0f} | "
                       f"{v / train_bench['step_s'][first]:.2f}x |")
        out.append("")
        if any(not v.get("kernels", True) for v in train_bench["variants"].values()):
            out += ["`-pytorch-ops`: the same network trained with PyTorch's ops instead of pixelq's training kernels "
                    "(the first conv over the pixel embedding as table sums, the activation quantizers in one pass; "
                    "[training.md](training.md#training-kernels)).", ""]
    runtime_bench = load(BENCH / "runtime.json")
    if runtime_bench:
        r = runtime_bench["ratios"]
        keys = [k for k in r if k + "_2t" in r]  # each ratio on 1 and 2 threads (the thread scaling is libpixelq's row)
        out += [f"Integer runtime speed (`pixelq bench --json results/bench/runtime.json` on {runtime_bench['cpu']['model']}, "
                f"{runtime_bench['runtime_isa']} kernels; speed-up = baseline time / pixelq time, >1 means pixelq "
                f"is faster; best of {runtime_bench['repeats']} calls at batch 64 and 8x as many at batch 1, the contenders timed in turns):", "", "| comparison | 1 thread | 2 threads |", "|---|---:|---:|"]
        out += [f"| {k} | {r[k]:.2f}x | {r[k + '_2t']:.2f}x |" for k in keys] + [""]
        out += ["`ort_int8`: the float ResNet-20 quantized by ONNX Runtime's static int8 quantizer (QDQ, per-channel "
                "weights); `ort_qdq_same_model`: the very W1A2 network pixelq runs, exported with `pixelq export "
                "--format onnx` and run by ONNX Runtime on its int8 kernels.", ""]
        out += ["The raw times, the speed per instruction set (AVX2 too) against its targets, and where the time "
                "goes layer by layer: [runtime.md](runtime.md#measured-speed).", ""]
    if data_bench:
        out += [f"Data path (`pixelq bench-data --data DATA --json results/bench/data.json`): cached load of "
                f"{data_bench['images']} images in {data_bench['cached_load_s']:.2f} s; shuffle + pad-4 crop + flip "
                f"on uint8 at {data_bench['augment_images_per_s']:.0f} images/s on {data_bench['threads']} thread.", ""]
    out.append(END)
    return "\n".join(out)


# (ratio, label, {isa: target}): the targets of the AVX2 issue; "best" is the default build.
ISA_ROWS = [("resnet20_b64_vs_torch_fp32", "ResNet-20 W1A2 + PE, batch 64, vs PyTorch fp32", {"avx2": 3.0, "best": 6.0}),
            ("resnet20_b64_vs_ort_int8", "ResNet-20 W1A2 + PE, batch 64, vs ONNX Runtime int8", {"avx2": 1.0, "best": 3.0}),
            ("resnet20_b64_vs_ov_int8", "ResNet-20 W1A2 + PE, batch 64, vs OpenVINO int8", {}),
            ("resnet20_b1_vs_torch_fp32", "ResNet-20 W1A2 + PE, batch 1, vs PyTorch fp32", {"avx2": 2.0}),
            ("resnet20_w4a4_b64_vs_ort_int8", "ResNet-20 W4A4 (dot products), batch 64, vs ONNX Runtime int8", {"best": 1.0}),
            ("resnet20_w4a4_b64_vs_torch_fp32", "ResNet-20 W4A4 (dot products), batch 64, vs PyTorch fp32", {}),
            ("conv3x3_w1a2_vs_torch_fp32", "one W1A2 3x3 conv, 64 channels, vs PyTorch fp32", {}),
            ("first_layer_vs_float", "first layer (pixel embedding) vs the float one", {})]


def isa_lines(best: dict, avx2: "dict | None", avx2_machine: "dict | None") -> list:
    """The speed table per instruction set (1 thread): the default build and `--isa avx2` timed on the
    same machine, where PyTorch and ONNX Runtime keep their own best instructions (so the AVX2 column
    is a lower bound), with the issue's targets, what missed them, and where the time goes on AVX2."""
    if not avx2:
        return []
    columns = {"best": best, "avx2": avx2}
    held = avx2.get("baseline_isas", {})
    if held.get("asked") and isinstance(held["asked"], dict) and not held["not_set"]:  # the baselines held to AVX2 too
        ov = held.get("openvino_primitives") or {}
        on512 = {form: counts.get("avx512", 0) for form, counts in ov.items()}
        how = (f"the baselines held to AVX2 where they allow it: PyTorch ran {held['pytorch_aten']} (its oneDNN capped by "
               f"ONEDNN_MAX_CPU_ISA={held['pytorch_onednn']}), OpenVINO's oneDNN capped the same way (its primitives: "
               + "; ".join(f"{form} " + ", ".join(f"{n} {isa}" for isa, n in sorted(c.items())) for form, c in ov.items())
               + f"; {' and '.join(f'{n} {f}' for f, n in on512.items())} of its own kernels stayed on AVX-512), and ONNX Runtime ran its own best: MLAS has no switch (onnxruntime issues #12479, #20215); the "
               "AVX2 targets are the ARM64/AVX2 issue's, every engine on AVX2")
        targets_for = {"resnet20_b64_vs_torch_fp32": 5.0, "resnet20_b64_vs_ov_int8": 1.5}
    else:
        torch_isa = held.get("pytorch_aten") or avx2["torch_isa"]  # a bench from before baseline_isas: its own key
        how = (f"PyTorch ran {torch_isa} and ONNX Runtime its own best in both runs, so the AVX2 column is a "
               "lower bound for an AVX2-only CPU")
        targets_for = {}
    where = (f"on the same {best['cpu']['model']}" if avx2["cpu"]["model"] == best["cpu"]["model"] else
             f"on {avx2['cpu']['model']}, the other column on {best['cpu']['model']}: not comparable column to column")
    lines = [f"Speed per instruction set, 1 thread (`pixelq bench --isa avx2 --json results/bench/runtime-isa-avx2.json` "
             f"{where}; {how}):", "",
             f"| comparison | `{best['runtime_isa']}` | `avx2` | target |", "|---|---:|---:|---|"]
    missed = []
    for key, label, targets in ISA_ROWS:
        targets = {**targets, **({"avx2": targets_for[key]} if key in targets_for else {})}
        if key not in best["ratios"] or key not in avx2["ratios"]:
            continue
        wanted = ", ".join(f"{'AVX2' if isa == 'avx2' else best['runtime_isa']} ≥ {t:g}x" for isa, t in targets.items())
        lines.append(f"| {label} | {best['ratios'][key]:.2f}x | {avx2['ratios'][key]:.2f}x | {wanted} |")
        for isa, target in targets.items():
            got = columns[isa]["ratios"][key]
            if got < target:
                missed.append(f"{label} on `{columns[isa]['runtime_isa']}`: {got:.2f}x of {target:g}x")
    lines.append("")
    if missed:
        lines += ["Missed here: " + "; ".join(missed) + ". AVX2 has no vector popcount: its kernels count bits by "
                  "VPSHUFB nibble tables (2 shuffles and 2 byte adds per 256 bit-products); the per-node profile below "
                  "says where the time goes.", ""]
    lines += profile_lines(avx2, "`--isa avx2`")
    if avx2_machine:
        r = avx2_machine["ratios"]
        lines += [f"Before the AVX2 kernels, on an AVX2-only machine (`results/bench/runtime-avx2.json`, portable conv "
                  f"compiled for AVX2): ResNet-20 batch 64 at {r['resnet20_b64_vs_torch_fp32']:.2f}x PyTorch fp32 and "
                  f"{r['resnet20_b64_vs_ort_int8']:.2f}x ONNX Runtime int8. No AVX2-only machine was at hand since.", ""]
    return lines


# (label, the ratio, target): the libpixelq issue's targets for ResNet-20 W1A2 + PE, 1 thread unless said,
# the C library alone (pxq_load, pxq_logits) against each engine in the same run.
LIBPIXELQ_TARGETS = [("batch 1 vs OpenVINO int8", lambda r, t: r.get("resnet20_b1_libpixelq_vs_ov_int8"), 2.5),
                     ("batch 1 vs ONNX Runtime int8", lambda r, t: r.get("resnet20_b1_libpixelq_vs_ort_int8"), 3.0),
                     ("batch 64 vs OpenVINO int8", lambda r, t: r.get("resnet20_b64_libpixelq_vs_ov_int8"), 2.5),
                     ("batch 64 vs ONNX Runtime int8", lambda r, t: r.get("resnet20_b64_libpixelq_vs_ort_int8"), 3.0),
                     ("batch 64 vs PyTorch fp32", lambda r, t: t[1]["b64_torch_fp32_s"] / t[1]["b64_libpixelq_s"], 8.0),
                     ("batch 64, 2 threads vs 1 (libpixelq alone in a process)",
                      lambda r, t: r.get("resnet20_b64_libpixelq_2t_vs_1t_alone"), 1.8)]


def libpixelq_target_lines(bench: dict) -> list:
    """The libpixelq issue's speed targets against this run, what missed them and by how much."""
    times = {n: bench["times"][f"threads_{n}"] for n in (1, 2)}
    if "b64_libpixelq_s" not in times[1]:
        return []
    lines = ["libpixelq on its own (`pxq_load`, `pxq_logits`) against the libpixelq issue's targets, same run "
             "(ResNet-20 W1A2 + PE, 1 thread unless said):", "", "| comparison | measured | target |", "|---|---:|---:|"]
    missed = []
    for label, ratio, target in LIBPIXELQ_TARGETS:
        got = ratio(bench["ratios"], times)
        if got is None:
            continue
        lines.append(f"| {label} | {got:.2f}x | ≥ {target:g}x |")
        if got < target:
            missed.append(f"{label} {got:.2f}x of {target:g}x")
    if missed:
        lines += ["", "Missed: " + "; ".join(missed) + ". The Python around the library costs little now (one call "
                  "per batch); the time is the kernels' (the per-part profile below), so what is left is kernel "
                  "work: the convs of stages 1-3."]
    lines += ["", "The 2-thread row times libpixelq on 1 and 2 threads in a process of its own (`threads_alone`): "
              "timed beside the other engines, whose thread pools (PyTorch's OpenMP, OpenVINO's TBB) may spin "
              "between calls on a 2-core machine, the same ratio ranged far wider from run to run."]
    return lines + [""]


def raw_times_line(bench: dict) -> str:
    """The times behind the whole-network and first-layer ratios, in ms."""
    parts = []
    for threads in (1, 2):
        t = {k: 1000 * v for k, v in bench["times"][f"threads_{threads}"].items() if not k.startswith("layers")}
        parts.append(f"{threads} thread{'s' if threads > 1 else ''}: batch 64 pixelq {t['b64_pixelq_s']:.1f} ms, "
                     f"ONNX Runtime int8 {t['b64_ort_int8_s']:.1f} ms, PyTorch fp32 {t['b64_torch_fp32_s']:.1f} ms; "
                     f"batch 1 {t['b1_pixelq_s']:.2f} / {t['b1_ort_int8_s']:.2f} / {t['b1_torch_fp32_s']:.2f} ms; "
                     f"first layer {t['first_layer_pixelq_s']:.2f} ms vs {t['first_layer_torch_fp32_s']:.2f} ms")
    return "Raw times (same run) at " + "; at ".join(parts) + "."


def profile_lines(bench: dict, kernels: str = "") -> list:
    """Where the runtime's time goes at batch 64, 1 thread: the bench's per-node times summed by part."""
    layers = bench["times"]["threads_1"]["layers_s"]
    parts = {"first layer (lookup + conv + thresholds)": "stem.", "stage 1 (16 channels, 32x32)": "stages.0.",
             "stage 2 (32 channels, 16x16)": "stages.1.", "stage 3 (64 channels, 8x8)": "stages.2.",
             "pool + last layer": ("pool", "fc")}
    total = sum(layers.values())
    lines = [f"Where the runtime's time goes{' with ' + kernels if kernels else ''} (ResNet-20 W1A2 with pixel "
             "embedding, batch 64, 1 thread; per-node times from the same bench run, summed by part):", "",
             "| part | ms | share |", "|---|---:|---:|"]
    for label, prefix in parts.items():
        ms = sum(v for k, v in layers.items() if k.startswith(prefix))
        lines.append(f"| {label} | {1000 * ms:.2f} | {100 * ms / total:.0f} % |")
    return lines + [""]


# (label, ratio key) of the table that sets two machines' runs of `pixelq bench` side by side
MACHINE_ROWS = [("ResNet-20 W1A2 + PE, batch 64, vs PyTorch fp32", "resnet20_b64_vs_torch_fp32"),
                ("ResNet-20 W1A2 + PE, batch 64, vs ONNX Runtime int8", "resnet20_b64_vs_ort_int8"),
                ("ResNet-20 W1A2 + PE, batch 64, vs OpenVINO int8", "resnet20_b64_vs_ov_int8"),
                ("libpixelq, batch 1, vs OpenVINO int8", "resnet20_b1_libpixelq_vs_ov_int8"),
                ("libpixelq, batch 64, vs OpenVINO int8", "resnet20_b64_libpixelq_vs_ov_int8")]


def machine_lines(bench: dict, other: "dict | None", other_file: str) -> list:
    """The same bench on another CPU (an earlier run kept in `other_file`), the headline ratios side by side:
    how much the lead depends on the CPU the int8 engines run on."""
    if not other or other["cpu"]["model"] == bench["cpu"]["model"]:
        return []
    lines = [f"The same bench on two CPUs (1 thread, each engine's best instructions; `results/bench/runtime.json` on "
             f"{bench['cpu']['model']}, `{other_file}` on {other['cpu']['model']}, from an earlier commit of the "
             "runtime):", "", f"| comparison | {bench['cpu']['model']} | {other['cpu']['model']} |", "|---|---:|---:|"]
    for label, key in MACHINE_ROWS:
        if key in bench["ratios"] and key in other["ratios"]:
            lines.append(f"| {label} | {bench['ratios'][key]:.2f}x | {other['ratios'][key]:.2f}x |")
    ms = {name: {k: 1000 * r["times"]["threads_1"][f"b64_{k}_s"] for k in ("pixelq", "ov_int8", "torch_fp32")}
          for name, r in ((bench["cpu"]["model"], bench), (other["cpu"]["model"], other))}
    return lines + ["", "Batch 64 at 1 thread, " + "; ".join(
        f"{name}: pixelq {t['pixelq']:.1f} ms, OpenVINO int8 {t['ov_int8']:.1f} ms, PyTorch fp32 {t['torch_fp32']:.1f} ms"
        for name, t in ms.items()) + ". The int8 and float engines run far faster on one CPU than on the other while "
        "pixelq's popcount kernels do not, so the lead over them is the CPU's as much as pixelq's.", ""]


def render_runtime_details(runtime_bench: dict) -> str:
    """docs/runtime.md's measured section: raw times, the per-ISA table, the per-node profiles."""
    out = [SPEED_START, "", raw_times_line(runtime_bench), ""] + libpixelq_target_lines(runtime_bench)
    out += machine_lines(runtime_bench, load(BENCH / "runtime-epyc.json"), "results/bench/runtime-epyc.json")
    out += isa_lines(runtime_bench, load(BENCH / "runtime-isa-avx2.json"), load(BENCH / "runtime-avx2.json"))
    out += ["On this shared 2-core VM the PyTorch fp32 times swing widely from one run to the next (more than "
            "pixelq's and ONNX Runtime's), so the ratios against fp32 move with them; the ratio against "
            "ONNX Runtime int8 is the steadier one.", ""]
    out += profile_lines(runtime_bench) + [SPEED_END]
    return "\n".join(out)


def main() -> None:
    rows = run_rows()
    (RUNS / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    section = render(rows, load(BENCH / "train_step.json"), load(BENCH / "data.json"))
    fill(BENCHMARKS_PAGE, START, END, section)
    print(section)
    runtime_bench = load(BENCH / "runtime.json")
    if runtime_bench:
        details = render_runtime_details(runtime_bench)
        fill(ROOT / "docs" / "runtime.md", SPEED_START, SPEED_END, details)
        print(details)


if __name__ == "__main__":
    main()
