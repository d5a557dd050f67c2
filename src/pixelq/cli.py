"""The `pixelq` command: parses arguments, then calls the same public API a Python user calls."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import ConfigError, PixelqError

def positive_int(text: str) -> int:
    """argparse type of counts and sizes: an integer >= 1 (0 would silently mean "the default")."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type of seeds and worker counts: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _read_mapping(path: str) -> dict:
    """A JSON or YAML file holding one mapping (per-layer overrides)."""
    import yaml  # YAML is a superset of JSON, so one parser reads both

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such overrides file")
    try:
        value = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid JSON/YAML ({e})") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: must hold a mapping of layer-name pattern -> quantizer spec")
    return value


# The --pe-* flags and the encoder option each sets; which encoders take it, and its value when not
# given, are the encoders' own (their signatures: nn.encoder_options).
PE_FLAGS = {"pe_dim": "d", "pe_bits": "bits", "pe_per_channel": "shared", "pe_init": "init"}


def _first_layer_kwargs(args, first_layer: str, recipe_kwargs: dict) -> dict:
    """The encoder options of `first_layer`: the --pe-* flags given, else the recipe's, else the
    encoder's defaults (every option a flag sets, written out). ConfigError for a flag the first layer
    has no use for (it would change nothing)."""
    from .nn import ENCODERS, encoder_options

    defaults = encoder_options(first_layer)
    options = {key: defaults[key] for key in PE_FLAGS.values() if key in defaults}
    options.update(recipe_kwargs)
    for flag, key in PE_FLAGS.items():
        if hasattr(args, flag):
            if key not in defaults:
                takers = [name for name in ENCODERS.names() if key in encoder_options(name)]
                raise ConfigError(f"--{flag.replace('_', '-')} does nothing with first layer {first_layer!r}; it sets "
                                  f"{', '.join(takers)} options")
            options[key] = not getattr(args, flag) if key == "shared" else getattr(args, flag)
    return options


def _add_data(p, help_text: str = "data set path; default: embedded subset") -> None:
    p.add_argument("--data", help=help_text)
    p.add_argument("--image-size", type=positive_int, help="scale each image's shorter side to S and keep the centre S x S "
                                                  "(folders of mixed sizes, e.g. ImageNet-style); default: as stored "
                                                  "(eval: the size the checkpoint trained at)")


def _add_train(sub) -> None:
    """Every TrainConfig setting as a flag (read off the dataclass); a flag given overrides the recipe."""
    from .models import list_models
    from .nn import ENCODERS
    from .training.config import cli_settings

    p = sub.add_parser("train", help="train a model; writes metrics.json(l) and checkpoint.pt into --out",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--recipe", help="a shipped recipe (`pixelq recipes`) or a YAML file of settings; flags override it")
    # registry names are checked by the registry, whose error lists them; the help lists them too
    names = {"model": list_models(), "first_layer": ENCODERS.names()}
    for name, flag, kwargs in cli_settings():
        if kwargs.pop("action", None) == "store_bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        if name in names:
            kwargs["help"] += f"; one of {', '.join(names[name])}"
        p.add_argument(flag, dest=name, **kwargs)
    p.add_argument("--pe-dim", type=int, help="pixel embedding / thermometer dimensions per colour (d; default 10)")
    p.add_argument("--pe-bits", type=int, help="pixel embedding / naive input code bits (Q; default 2)")
    p.add_argument("--pe-per-channel", action="store_true", help="one embedding table per colour, not one shared")
    p.add_argument("--pe-init", choices=("thermometer", "uniform", "linear"), help="embedding table initialisation")
    p.add_argument("--overrides", help="JSON/YAML file: {layer-name pattern: quantizer spec} (mixed precision)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out (refused otherwise)")


def _train_config(args):
    """The TrainConfig of `pixelq train`'s arguments: the defaults, the recipe, then the flags given;
    the first layer's options those of the first layer chosen (`_first_layer_kwargs`)."""
    from .training import resolve_config
    from .training.config import default_config, read_recipe

    given = {k: v for k, v in vars(args).items() if k in default_config() and k != "recipe"}
    if getattr(args, "quiet", False):
        given["progress"] = False
    if hasattr(args, "overrides"):
        given["overrides"] = _read_mapping(args.overrides)
    recipe = getattr(args, "recipe", None)
    values = {**default_config(), **(read_recipe(recipe) if recipe else {})}
    first_layer = given.get("first_layer", values["first_layer"])
    # a recipe's options are for its own first layer: --first-layer choosing another leaves them out
    recipe_kwargs = values["first_layer_kwargs"] if first_layer == values["first_layer"] else {}
    if not isinstance(recipe_kwargs, dict):  # the config's own checks say what is wrong with it
        return resolve_config(recipe, **given)
    kwargs = _first_layer_kwargs(args, first_layer, recipe_kwargs)
    return resolve_config(recipe, **given, first_layer_kwargs=kwargs)


def _run_train(args) -> None:
    from .training import train

    cfg = _train_config(args)
    unused = [f"--{k.replace('_', '-')}" for k in ("kd_weight", "kd_temperature") if hasattr(args, k)]
    if unused and cfg.teacher is None:
        raise ConfigError(f"{' and '.join(unused)}: distillation settings, used only with --teacher; without a teacher "
                          "they change nothing")
    metrics = train(cfg, resume=getattr(args, "resume", False), overwrite=getattr(args, "overwrite", False))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process has the metrics; one prints them
        print(json.dumps({k: metrics[k] for k in ("top1", "top5", "n", "epochs", "train_images_per_s")}))


def _run_recipes(args) -> None:
    from .training import list_recipes, read_recipe, resolve_config

    if args.name:
        settings = read_recipe(args.name)
        resolve_config(args.name)  # a file is checked as a run would check it: names, types, values
        print(json.dumps(settings, indent=2))
        return
    for name, description in list_recipes().items():
        print(f"{name:<24} {description}")


def _run_eval(args) -> None:
    from .data import batch_source, open_data
    from .training import evaluate, read_checkpoint
    from .training.checkpoint import model_from_checkpoint

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ckpt = read_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint).eval()
    # default: the size the model trained at
    test = open_data(args.data, image_size=args.image_size or ckpt["config"].get("image_size"), stream=args.stream).test
    test.require(ckpt["classes"], ckpt["data"].get("image_shape"), args.checkpoint)
    result = evaluate(model, *batch_source(test), workers=args.workers)
    print(json.dumps({"top1": result["top1"], "top5": result["top5"], "n": result["n"]}))


def _run_demo(args) -> None:
    from .demo import run_demo

    run_demo(out=args.out, data=args.data, epochs=args.epochs, progress=not args.quiet)


def _write_json(path: "str | None", result: dict) -> None:
    """`result` as JSON at `path` (when given), atomically; ConfigError if it cannot be written there."""
    if path:
        from .files import write_json

        write_json(path, result, ConfigError)


def _run_bench_train(args) -> None:
    from .bench import train_step_throughput

    result = train_step_throughput(model=args.model, batch_size=args.batch_size, steps=args.steps, rounds=args.rounds,
                                   threads=args.threads, compiled=args.compile)
    first = next(iter(result["step_s"]))
    width = max(len("variant"), *map(len, result["step_s"]))
    print(f"{'variant':<{width}} {'ms/step':>8} {'images/s':>9} {'vs ' + first:>9}")
    for name, seconds in result["step_s"].items():
        print(f"{name:<{width}} {1000 * seconds:8.1f} {result['images_per_s'][name]:9.0f} "
              f"{seconds / result['step_s'][first]:8.2f}x")
    _write_json(args.json, result)


def _run_bench(args) -> None:
    from .bench import run_benchmark
    from .bench.inference import BASELINE_ISA_ENV

    held = BASELINE_ISA_ENV.get(args.isa, {})
    if any(os.environ.get(k) != v for k, v in held.items()):
        # the baselines read these when they load, which this process has done: start again with them set
        os.execve(sys.executable, [sys.executable, "-m", "pixelq", *args.argv], {**os.environ, **held})
    result = run_benchmark(model_path=args.model, repeats=args.repeats, isa=args.isa)
    base = result["baseline_isas"]
    print(f"runtime kernels: {result['runtime_isa']}; PyTorch: {base['pytorch_aten']} (oneDNN: {base['pytorch_onednn']}); "
          f"ONNX Runtime: {base['onnxruntime']}; OpenVINO {result['openvino_version'] or 'not installed'}"
          + (f" primitives by instruction set: {base['openvino_primitives']}" if base["openvino_primitives"] else ""))
    print(f"{'speed-up (baseline time / pixelq time)':<44} {'value':>8}")
    for key, value in result["ratios"].items():
        print(f"{key:<44} {value:8.2f}x")
    _write_json(args.json, result)


def _run_bench_data(args) -> None:
    from .bench import data_throughput

    result = data_throughput(data=args.data, batch_size=args.batch_size, threads=args.threads)
    print(f"cached load of {result['images']} images: {result['cached_load_s']:.3f} s; "
          f"shuffle + crop + flip: {result['augment_images_per_s']:.0f} images/s on {result['threads']} thread(s)")
    if args.folders:
        from .bench import decode_throughput

        result["decode"] = decode = decode_throughput(args.folders, images=args.decode_images)
        rates = decode["decode_images_per_s_one_process"]
        print(f"decode, one process: Pillow {rates['pillow']:.0f} images/s, pixelq {rates['pixelq']:.0f} images/s "
              f"({decode['decoder_speedup_vs_pillow']:.1f}x); streamed: " +
              ", ".join(f"{v:.0f} images/s with {k} worker(s)" for k, v in decode["streamed_images_per_s_by_workers"].items()))
    _write_json(args.json, result)


def _run_export(args) -> None:
    from .exporting import export
    from .integer import payload_bytes
    from .training import read_checkpoint
    from .training.checkpoint import model_from_checkpoint

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise ConfigError(f"{output}: exists; pass --overwrite to replace it, or choose another -o")
    ckpt = read_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint).eval()
    if args.format in ("onnx", "onnx-integer", "qonnx"):
        from .exporting.graph import fold, lower_plain
        from .exporting.onnx import save_onnx

        plain = lower_plain(model, ckpt["data"].get("image_shape"))
        save_onnx(plain if args.format == "onnx" else fold(plain), output, args.format)
        print(json.dumps({"path": str(output), "format": args.format, "bytes": output.stat().st_size}))
        return
    integer_model = export(model, output, classes=ckpt["classes"] or None, image_shape=ckpt["data"].get("image_shape"))
    print(json.dumps({"path": str(output), "format": args.format, "bytes": output.stat().st_size,
                      "payload_bytes": payload_bytes(integer_model), "integer_only": integer_model.meta["integer_only"]}))


def _add_isa(p) -> None:
    from .runtime.clib import ISA_NAMES

    p.add_argument("--isa", help=f"the runtime kernels' instruction set: {', '.join(ISA_NAMES)} (default: the best this "
                                 "CPU has)")


def _run_run(args) -> None:
    from .data import batch_source, batches, open_data
    from .runtime import load

    runtime = load(args.model, threads=args.threads, isa=args.isa)
    test = open_data(args.data, image_size=args.image_size, stream=args.stream).test
    if runtime.classes is not None:  # files exported before class names were stored cannot be checked
        test.require(runtime.classes, runtime.image_shape, args.model)
    if args.limit is not None:
        test = test.subset(args.limit)
    labelled = ((x.numpy(), y.numpy()) for x, y in batches(*batch_source(test), batch_size=256, workers=args.workers))
    print(json.dumps({**runtime.evaluate(labelled), "isa": runtime.isa}))


def _run_predict(args) -> int:
    """Classify image files; 1 when a file could not be read (the others are still classified)."""
    from .images import image_files
    from .runtime import load

    runtime = load(args.model, threads=args.threads, isa=args.isa)
    results = runtime.classify(image_files(args.images), top=args.top)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"pixelq: error: {r['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "top" in r:
                print(f"{r['file']}: " + ", ".join(f"{t['class']} {t['score']:.3f}" for t in r["top"]))
    return 1 if failed else 0


def _run_zoo(args) -> None:
    from .zoo import list_zoo

    models = list_zoo()
    if args.json:
        print(json.dumps(models, indent=2))
        return
    columns = {"vs PyTorch": "vs_pytorch_fp32_b64", "vs ORT int8": "vs_onnxruntime_int8_b64",
               "vs OpenVINO int8": "vs_openvino_int8_b64"}  # batch 64, 1 thread
    print(f"{'name':<28} {'top-1 %':>7} {'KB':>6} {'MBOPs':>7} " + " ".join(f"{c:>{len(c)}}" for c in columns) + "  data")
    for name, m in models.items():
        speed = m["speed"] or {}
        ratios = " ".join(f"{f'{speed[k]:.2f}x' if k in speed else '-':>{len(c)}}" for c, k in columns.items())
        print(f"{name:<28} {m['top1']:>7.2f} {m['size_bytes'] / 1000:>6.1f} {m['bops'] / 1e6:>7.1f} {ratios}  {m['dataset']}")
    print("load one with pixelq.runtime.load('zoo:NAME'), `pixelq run zoo:NAME` or `pixelq predict zoo:NAME IMAGE`")


def _run_quantize(args) -> None:
    """Post-training quantization of a float checkpoint into a pixelq checkpoint (`pixelq.ptq`)."""
    from .data import batch_source, batches, open_data
    from .models import model_kwargs
    from .ptq import quantize_resnet
    from .training import evaluate, read_checkpoint, save_checkpoint
    from .training.checkpoint import model_from_checkpoint

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"{args.out}: is a file; --out names the folder for checkpoint.pt and metrics.json")
    if (Path(args.out) / "checkpoint.pt").exists():
        raise ConfigError(f"{args.out}: holds a checkpoint already; choose another --out")
    ckpt = read_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint).eval()
    data = open_data(args.data, image_size=ckpt["config"].get("image_size"))
    data.train.require(ckpt["classes"], ckpt["data"].get("image_shape"), args.checkpoint)
    calib = data.train.subset(max(args.calib, len(data.classes)), seed=args.seed)
    images = next(iter(batches(*batch_source(calib), batch_size=len(calib))))[0]  # in memory or streamed
    overrides = _read_mapping(args.overrides) if args.overrides else {}
    twin = quantize_resnet(model, images, args.method, args.bits, name=ckpt["model"], overrides=overrides,
                           progress=True)
    out = Path(args.out)
    config = {"ptq": {"method": args.method, "bits": 8 if args.method == "int8" else args.bits,
                      "calibration_images": len(calib), "from": str(args.checkpoint), "overrides": overrides},
              "image_size": ckpt["config"].get("image_size")}
    save_checkpoint(out / "checkpoint.pt", model_name=ckpt["model"], model_kwargs=model_kwargs(twin), model=twin,
                    config=config, classes=ckpt["classes"], data=ckpt["data"])
    test = evaluate(twin, *batch_source(data.test))
    result = {"top1": test["top1"], "top5": test["top5"], "n": test["n"], **config["ptq"]}
    _write_json(str(out / "metrics.json"), result)
    print(json.dumps(result))


def _run_bitops(args) -> None:
    """Per-layer MACs and bit-operations of a checkpoint or an exported .pxq model."""
    from .models import cost_totals

    size = (args.image_size, args.image_size) if args.image_size else None
    if str(args.model).endswith(".pxq") or str(args.model).startswith("zoo:"):
        from .integer import graph_costs, load_model

        integer_model = load_model(args.model)
        shape = _image_shape(size, integer_model.meta.get("image_shape"), integer_model.meta["in_channels"], args.model)
        rows = graph_costs(integer_model, shape)
    else:
        from .models import layer_costs
        from .training import read_checkpoint
        from .training.checkpoint import model_from_checkpoint

        ckpt = read_checkpoint(args.model)
        model = model_from_checkpoint(ckpt, args.model)
        shape = _image_shape(size, ckpt["data"].get("image_shape"), model.config.in_channels, args.model)
        rows = layer_costs(model, shape)
    totals = cost_totals(rows)
    print(f"{'layer':<24} {'kind':<12} {'MACs':>12} {'W':>3} {'A':>3} {'BOPs':>15} {'weight bits':>12}")
    for r in rows:
        print(f"{r['layer']:<24} {r['kind']:<12} {r['macs']:>12,} {r['weight_bits']:>3} {r['input_bits']:>3} "
              f"{r['bops']:>15,} {r['param_bits']:>12,}")
    print(f"{'total':<37} {totals['macs']:>12,} {'':>7} {totals['bops']:>15,} {totals['param_bits']:>12,}")
    _write_json(args.json, {"model": str(args.model), "image_shape": list(shape), "layers": rows, "totals": totals})


def _image_shape(size, stored, channels: int, path: str) -> tuple:
    """(H, W, C) the costs are counted on: --image-size, else what the model was trained on."""
    if size is None and not stored:
        raise ConfigError(f"{path} does not record the image size it was trained on; pass --image-size S")
    return (*size, channels) if size is not None else tuple(stored)


def _run_inspect(args) -> None:
    """The integer graph as a table: layer, op, input -> output shape, code bits, MACs, kernel."""
    from .integer import graph_table, load_model

    from .runtime.fast import FastExecutor, kernels_available

    model = load_model(args.model)
    size = (args.image_size, args.image_size) if args.image_size else None
    image_shape = _image_shape(size, model.meta.get("image_shape"), model.meta["in_channels"], args.model)
    rows = graph_table(model, image_shape)
    isa, kernels = "numpy reference", {}
    if kernels_available():  # which kernel each conv runs on, under the chosen instruction set
        executor = FastExecutor(model, isa=args.isa)
        isa, kernels = executor.isa, executor.kernels()
    elif args.isa:
        raise ConfigError("--isa: the C kernels are not built, so the numpy reference runs every layer")
    for r in rows:
        r["kernel"] = kernels.get(r["layer"])
    if args.json:
        _write_json(args.json, {"meta": model.meta, "nodes": [n.to_dict() for n in model.nodes], "table": rows, "isa": isa})
    shapes = {"image": "x".join(map(str, image_shape))}
    print(f"{'layer':<24} {'op':<13} {'input -> output shape':<24} {'bits':>4} {'MACs':>12}  kernel ({isa})")
    for r in rows:
        shapes[r["layer"]] = "x".join(map(str, r["shape"]))
        print(f"{r['layer']:<24} {r['op']:<13} {shapes[r['inputs'][0]] + ' -> ' + shapes[r['layer']]:<24} "
              f"{r['bits'] if r['bits'] is not None else '-':>4} {r['macs']:>12,}  {r['kernel'] or ''}")
    print(json.dumps({k: v for k, v in model.meta.items() if k != "logit_scale"}))


def _run_models(args) -> None:
    from .models import list_models

    print("\n".join(list_models()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelq", description="Fully quantized CNNs with pixel embedding.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    p = sub.add_parser("eval", help="evaluate a checkpoint on a data set's test split; prints JSON")
    p.add_argument("--checkpoint", required=True)
    _add_data(p)
    p.add_argument("--threads", type=positive_int)
    p.add_argument("--stream", action="store_true", help="read image folders lazily (data larger than memory)")
    p.add_argument("--workers", type=nonnegative_int, default=2, help="decoding processes when streaming")
    p = sub.add_parser("demo", help="float vs fully quantized ResNet on the embedded subset, with a report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", help="data set path; default: embedded subset")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs per model (default: the demo's schedule)")
    p.add_argument("--quiet", action="store_true")
    sub.add_parser("models", help="list the registered model names")
    p = sub.add_parser("recipes", help="list the shipped training recipes, or print one's settings")
    p.add_argument("name", nargs="?", help="a recipe to print")
    p = sub.add_parser("export", help="lower a checkpoint to an integer-only, bit-packed .pxq model file (or ONNX)")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (refused otherwise)")
    p.add_argument("--format", choices=("pxq", "onnx", "onnx-integer", "qonnx"), default="pxq",
                   help="pxq: pixelq's runtime; onnx: QDQ, the form ONNX Runtime runs on its int8 kernels; "
                        "onnx-integer: the runtime's integer graph in standard float ops (exact); qonnx: the form "
                        "FINN reads (Quant / BipolarQuant / MultiThreshold)")
    p = sub.add_parser("run", help="classify a data set's test split with the integer runtime; prints JSON")
    p.add_argument("model", help=".pxq model file or zoo:NAME (`pixelq zoo`)")
    _add_data(p)
    p.add_argument("--limit", type=positive_int, help="only a stratified sample of N test images (the same share of each class)")
    p.add_argument("--threads", type=positive_int)
    p.add_argument("--stream", action="store_true", help="read image folders lazily (data larger than memory)")
    p.add_argument("--workers", type=nonnegative_int, default=2, help="decoding processes when streaming")
    _add_isa(p)
    p = sub.add_parser("predict", help="classify image files (JPEG, PNG, any size or mode) with a .pxq model or zoo:NAME")
    p.add_argument("model", help=".pxq model file or zoo:NAME (`pixelq zoo`)")
    p.add_argument("images", nargs="+", help="image files, folders (their images, subfolders included) or glob patterns")
    p.add_argument("--top", type=positive_int, default=3, help="how many classes to print per image (default 3)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--threads", type=positive_int)
    _add_isa(p)
    p = sub.add_parser("zoo", help="list the trained models shipped with pixelq (load them as zoo:NAME)")
    p.add_argument("--json", action="store_true", help="print the registry as JSON")
    p = sub.add_parser("quantize", help="post-training quantization of a float checkpoint (int8, rtn, gpfq)")
    p.add_argument("checkpoint", help="a float network's checkpoint.pt")
    p.add_argument("--method", default="int8", choices=("int8", "rtn", "gpfq"))
    p.add_argument("--bits", type=int, default=4, help="weight bits for rtn and gpfq (int8 is 8)")
    p.add_argument("--calib", type=positive_int, default=512, help="training images that calibrate (and drive GPFQ)")
    p.add_argument("--data", help="the data the network was trained on; default: embedded subset")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="which calibration images (a stratified draw)")
    p.add_argument("--out", required=True, help="folder for checkpoint.pt and metrics.json")
    p.add_argument("--overrides", help="JSON/YAML file: {layer-name pattern: 'grid:k[:tensor]'} (mixed precision)")
    p = sub.add_parser("bitops", help="per-layer MACs, bits and bit-operations (BOPs) of a checkpoint or .pxq file")
    p.add_argument("model", help="checkpoint.pt or model.pxq")
    p.add_argument("--image-size", type=positive_int, help="count on S x S images (default: the size the model trained on)")
    p.add_argument("--json", help="write the rows and totals here")
    p = sub.add_parser("inspect", help="print a .pxq model file's layers (op, shapes, bits, MACs) and metadata")
    p.add_argument("model")
    p.add_argument("--image-size", type=positive_int, help="shapes for S x S images (default: the size the model trained on)")
    p.add_argument("--json", help="write the manifest's nodes, metadata and the table here")
    _add_isa(p)
    p = sub.add_parser("bench-train", help="train step time of float vs quantized variants, timed in one run")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--steps", type=positive_int, default=10)
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds; each variant keeps its best (a noisy machine)")
    p.add_argument("--threads", type=positive_int)
    p.add_argument("--compile", action="store_true",
                   help="also time the fully quantized variant under torch.compile (its compile time is reported apart)")
    p.add_argument("--json", help="write the results here")
    p = sub.add_parser("bench", help="integer runtime vs PyTorch fp32, ONNX Runtime int8 and OpenVINO, timed in one run")
    p.add_argument("--model", help=".pxq file (default: a W1A2 ResNet-20 with pixel embedding built here)")
    p.add_argument("--repeats", type=positive_int, default=10)
    p.add_argument("--json", help="write the results here")
    _add_isa(p)
    p = sub.add_parser("bench-data", help="cached load, uint8 augmentation and decode/streaming throughput")
    p.add_argument("--data", help="data set path; default: embedded subset")
    p.add_argument("--folders", help="image folders to time decoding and streaming on (e.g. extracted CIFAR-10-JPEG)")
    p.add_argument("--decode-images", type=positive_int, default=5000, help="how many of the folders' train images to decode")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--json", help="write the results here")
    return parser


COMMANDS = {"train": _run_train, "eval": _run_eval, "demo": _run_demo, "models": _run_models, "recipes": _run_recipes, "bitops": _run_bitops, "quantize": _run_quantize,
            "bench": _run_bench, "bench-train": _run_bench_train, "bench-data": _run_bench_data, "export": _run_export, "run": _run_run,
            "inspect": _run_inspect, "predict": _run_predict, "zoo": _run_zoo}


def main(argv: "list[str] | None" = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error (or the help): its status is ours
        return e.code
    args.argv = argv  # for a command that must start again (bench --isa avx2)
    try:
        return COMMANDS[args.command](args) or 0
    except PixelqError as e:
        print(f"pixelq: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
