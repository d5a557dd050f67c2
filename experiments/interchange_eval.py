"""One checkpoint through every deployed form, top-1 on a data set's test split: the PyTorch model,
the pixelq runtime (.pxq), the same file read and run by libpixelq alone (C, `pxq_load`), QDQ ONNX
on ONNX Runtime (`--format onnx`) and QONNX executed by the qonnx package (`--format qonnx`); each
form's labels compared with PyTorch's, and how many of those
that differ do so where the form's logits tie at the top (integer logits: PyTorch's float ones
then break the tie by rounding).

    python experiments/interchange_eval.py CKPT --data DATA --json results/interchange/NAME.json [--qonnx-limit N]
    python experiments/interchange_eval.py --render results/interchange/NAME.json   # docs/results.md's table only

docs/results.md's table is rendered from a JSON inside the repository (a committed result) only; a JSON
written elsewhere (a trial) leaves the page alone.

QONNX is executed node by node in Python, one image at a time (slow): `--qonnx-limit` runs it on the
first N test images only (default: all). Needs the bench extra (onnx, onnxruntime) and qonnx (dev extra).
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from readme_section import RESULTS_PAGE, fill
from render_recipe_results import describe

import pixelq
from pixelq.exporting import lower, lower_plain
from pixelq.exporting.onnx import to_onnx
from pixelq.exporting.qdq import to_qdq
from pixelq.runtime import Runtime, clib
from pixelq.training.checkpoint import model_from_checkpoint, read_checkpoint


def batched(fn, images: np.ndarray, batch: int = 500) -> np.ndarray:
    return np.concatenate([fn(images[i:i + batch]) for i in range(0, len(images), batch)])


ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- interchange:start -->", "<!-- interchange:end -->"
FORMS = [("pytorch", "PyTorch (fake-quant)", "–"), ("pixelq_runtime", "pixelq runtime", "`.pxq`"),
         ("libpixelq", "libpixelq (C: `pxq_load`, `pixelq-run`)", "`.pxq`"),
         ("onnx_qdq", "ONNX Runtime", "`--format onnx` (QDQ)"), ("qonnx", "qonnx (FINN's executor)", "`--format qonnx`")]


def render(path: Path) -> None:
    """docs/results.md's interchange table from the JSON at `path`."""
    result = json.loads(path.read_text())
    forms = result["forms"]
    config = read_checkpoint(ROOT / result["checkpoint"])["config"]
    lines = [START, "", f"`{result['checkpoint']}` ({result['model']}: {describe(config)}; "
             f"epoch {result['epoch']} of its recipe run) in each deployed form, on the {forms['pytorch']['n']} test "
             f"images of {Path(result['data']).name} (`python experiments/interchange_eval.py`, "
             f"`{path.resolve().relative_to(ROOT)}`):", "",
             "| runs on | file | top-1 % | vs PyTorch | labels as PyTorch's | of the rest, at integer-logit ties |",
             "|---|---|---:|---:|---:|---:|"]
    for key, runner, form in (entry for entry in FORMS if entry[0] in forms):  # libpixelq: runs since 2026-12
        f = forms[key]
        lines.append(f"| {runner} | {form} | {f['top1']:.2f} | {f['top1'] - f['pytorch_top1_same_images']:+.2f} | "
                     f"{f['labels_as_pytorch']} / {f['n']} | {f['differ_at_logit_ties']} |")
    fill(RESULTS_PAGE, START, END, "\n".join(lines + ["", END]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, nargs="?")
    parser.add_argument("--data")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--qonnx-limit", type=int)
    parser.add_argument("--render", type=Path, help="only render docs/results.md's table from this JSON")
    args = parser.parse_args()
    if args.render:
        return render(args.render)
    if not (args.checkpoint and args.data and args.json):
        parser.error("CKPT, --data and --json are needed (or --render JSON)")
    import onnxruntime as ort
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    ckpt = read_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint).eval()
    test = pixelq.load_dataset(args.data).test
    images, labels = test.images, test.labels
    image_shape = images.shape[1:]
    seconds, predictions, tied = {}, {}, {}

    def run(form, fn, x):
        t0 = time.perf_counter()
        logits = batched(fn, x)
        seconds[form] = time.perf_counter() - t0
        predictions[form] = logits.argmax(1)
        tied[form] = (logits == logits.max(1, keepdims=True)).sum(1) > 1  # a top shared by two classes

    with torch.no_grad():
        run("pytorch", lambda x: model(torch.as_tensor(x)).numpy(), images)
    graph = lower(model, image_shape)  # the .pxq graph, which QONNX writes too
    graph.meta["image_shape"] = [int(v) for v in image_shape]  # as `pixelq export` records it
    run("pixelq_runtime", Runtime(graph).logits, images)
    with tempfile.TemporaryDirectory() as folder:  # the file as libpixelq reads it, no Python between
        pixelq.export(model, Path(folder) / "model.pxq", image_shape=image_shape)
        run("libpixelq", clib.Model(Path(folder) / "model.pxq").logits, images)
    qdq = ort.InferenceSession(to_qdq(lower_plain(model, image_shape)).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    run("onnx_qdq", lambda x: qdq.run(None, {"image": x})[0], images)
    wrapper = ModelWrapper(to_onnx(graph, qonnx=True))
    n_qonnx = min(args.qonnx_limit or len(images), len(images))

    def qonnx_logits(x):  # the QONNX file is written for batch 1 with every shape in it (FINN builds need them)
        return np.concatenate([execute_onnx(wrapper, {"image": image[None]})["logits"] for image in x])

    run("qonnx", qonnx_logits, images[:n_qonnx])
    forms = {}
    for form, predicted in predictions.items():
        n = len(predicted)
        forms[form] = {"n": n, "top1": 100.0 * float((predicted == labels[:n]).mean()),
                       "pytorch_top1_same_images": 100.0 * float((predictions["pytorch"][:n] == labels[:n]).mean()),
                       "labels_as_pytorch": int((predicted == predictions["pytorch"][:n]).sum()),
                       "differ_at_logit_ties": int(((predicted != predictions["pytorch"][:n]) & tied[form]).sum()),
                       "seconds": seconds[form]}
    result = {"checkpoint": str(args.checkpoint), "epoch": ckpt.get("epoch"), "data": args.data,
              "model": ckpt.get("model"), "forms": forms,
              "note": "seconds are wall time of each whole pass (batches of 500), not a benchmark"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(forms, indent=2))
    if args.json.resolve().is_relative_to(ROOT):
        render(args.json)
    else:
        print(f"docs/results.md not rendered: {args.json} lies outside the repository")


if __name__ == "__main__":
    main()
