"""The first-layer study: ResNet-20 W1A2 with every first-layer method, one schedule, several seeds.

Two tiers share one plan:
  headline  the rows the targets are judged on, at the full schedule, every seed;
  ablation  the pixel-embedding grid (shared / per-colour table, d, Q, initialisation) and every
            quantized first layer with a float and with a quantized last layer, at a shorter
            schedule, first seed only (two rows also at the second seed, to measure that
            schedule's seed noise), with its own float-first-layer reference so gaps are like
            for like.

Each run is an ordinary `train()` into OUT/<variant>-s<seed>/ with resume on, so a killed study
loses at most the epoch in flight; a run whose metrics.json exists is skipped. A finished
pixel-embedding run also writes embedding.json, its quantized table, which the report plots.

    python experiments/first_layer_study.py --data DATA [--out results/first-layer-study] [--seeds 0 1 2] ...
    python experiments/first_layer_report.py results/first-layer-study      # then its report
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pixelq.errors import ConfigError, ExportError
from pixelq.training import TrainConfig, load_checkpoint, train
from pixelq.training.config import config_changes

W1A2 = {"wbits": 1, "abits": 2}


@dataclass(frozen=True)
class Variant:
    """One row of the study: a first layer and its precision around it."""

    name: str
    first_layer: str
    first_layer_kwargs: dict = field(default_factory=dict)
    wbits: int = 1
    abits: int = 2
    last_layer: str = "float"
    tier: str = "headline"

    def model_fields(self) -> dict:
        return {"first_layer": self.first_layer, "first_layer_kwargs": dict(self.first_layer_kwargs),
                "wbits": self.wbits, "abits": self.abits, "last_layer": self.last_layer}


def _pe(d: int, bits: int, shared: bool, init: str) -> dict:
    return {"d": d, "bits": bits, "shared": shared, "init": init}


# Quantized first layers that are not pixel embedding, by variant-name stem.
_BASELINES = {
    "int8-first": ("int8", {}),
    "naive2": ("naive", {"bits": 2}),
    "thermometer": ("thermometer", {"d": 10}),
    "bitplane": ("bitplane", {}),
}


# The baselines the targets name; naive 2-bit input is an ablation row (shorter schedule).
_HEADLINE_BASELINES = ("int8-first", "thermometer", "bitplane")


def headline_variants() -> list:
    """The rows the study's targets are judged on; `w1a2-pe` is Blueoil's setting (shared, d=10, Q=2)."""
    pe = _pe(10, 2, True, "thermometer")
    return [
        Variant("w1a2-float-first", "float"),
        Variant("w1a2-pe", "pixel-embedding", pe),
        Variant("w1a2-pe-qlast", "pixel-embedding", pe, last_layer="quantized"),
        Variant("float-net", "float", wbits=32, abits=32),
        *(Variant(f"w1a2-{stem}", layer, kwargs) for stem, (layer, kwargs) in _BASELINES.items()
          if stem in _HEADLINE_BASELINES),
    ]


def ablation_variants() -> list:
    """The pixel-embedding grid, and every quantized first layer (pixel embedding's headline setting
    included) with a float and a quantized last layer, with their own float-first reference."""
    rows = [Variant("short-w1a2-float-first", "float", tier="ablation")]
    for shared in (True, False):
        for d in (4, 10, 16):
            for bits in (1, 2):
                for init in ("thermometer", "uniform"):
                    name = f"short-pe-{'shared' if shared else 'percolour'}-d{d}-q{bits}-{init}"
                    rows.append(Variant(name, "pixel-embedding", _pe(d, bits, shared, init), tier="ablation"))
    # the grid holds pixel embedding's float-last row; the baselines get theirs here
    rows.append(Variant("short-pe-shared-d10-q2-thermometer-qlast", "pixel-embedding", _pe(10, 2, True, "thermometer"),
                        last_layer="quantized", tier="ablation"))
    for stem, (layer, kwargs) in _BASELINES.items():
        rows.append(Variant(f"short-w1a2-{stem}", layer, kwargs, tier="ablation"))
        rows.append(Variant(f"short-w1a2-{stem}-qlast", layer, kwargs, last_layer="quantized", tier="ablation"))
    return rows


def all_variants() -> list:
    return headline_variants() + ablation_variants()


@dataclass
class StudySchedule:
    """The shared schedule: headline runs get `epochs` on the whole train split for every seed;
    ablation runs get `ablation_epochs` on `ablation_train_subset` images, first seed only (the
    `ABLATION_NOISE_VARIANTS` also at the second)."""

    seeds: tuple = (0, 1)
    epochs: int = 20
    ablation_epochs: int = 10
    ablation_train_subset: "int | None" = 10000
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 0.002
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    model: str = "resnet20"

    def validate(self) -> None:
        if not self.seeds:
            raise ConfigError("the study needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must differ, got {list(self.seeds)}")


def run_name(variant: Variant, seed: int) -> str:
    return f"{variant.name}-s{seed}"


# Ablation rows also run at the second seed, to measure the ablation schedule's own seed noise
# (its runs are short, so it need not be the headline rows'): the reference and pixel embedding.
ABLATION_NOISE_VARIANTS = ("short-w1a2-float-first", "short-pe-shared-d10-q2-thermometer")


def plan(schedule: StudySchedule, tiers: tuple = ("headline", "ablation")) -> list:
    """(variant, seed) pairs in the order they run: every headline variant at the first seed, then
    at the second (a mean and a std per row), then the ablations, then the noise rows of the
    ablation schedule at the second seed, then the headline rows at any further seed, the float
    network (which no target reads) last, so a study cut short has the most informative rows."""
    headline = [(v, s) for s in schedule.seeds for v in headline_variants()] if "headline" in tiers else []
    ablation = [(v, schedule.seeds[0]) for v in ablation_variants()] if "ablation" in tiers else []
    if "ablation" in tiers and len(schedule.seeds) > 1:
        ablation += [(v, schedule.seeds[1]) for v in ablation_variants() if v.name in ABLATION_NOISE_VARIANTS]
    first_two = 2 * len(headline_variants())
    further = sorted(headline[first_two:], key=lambda pair: pair[0].wbits == 32)  # stable: float network last
    return headline[:first_two] + ablation + further


def run_config(variant: Variant, seed: int, schedule: StudySchedule, out: Path, data: "str | None",
               threads: "int | None" = None, device: str = "auto", progress: bool = False,
               image_size: "int | None" = None) -> TrainConfig:
    short = variant.tier == "ablation"
    return TrainConfig(
        model=schedule.model, **variant.model_fields(), data=data, image_size=image_size, out=str(out / run_name(variant, seed)),
        epochs=schedule.ablation_epochs if short else schedule.epochs, batch_size=schedule.batch_size,
        optimizer=schedule.optimizer, lr=schedule.lr, weight_decay=schedule.weight_decay, schedule=schedule.schedule,
        seed=seed, train_subset=schedule.ablation_train_subset if short else None, threads=threads, device=device,
        progress=progress,
    )


def write_embedding(run_dir: Path) -> None:
    """embedding.json beside a pixel-embedding run: the quantized table (tables, 256, d), its
    settings, so the report plots the learned curves without the checkpoint."""
    model = load_checkpoint(run_dir / "checkpoint.pt")
    pe = model.stem.encoder
    with torch.no_grad():
        table = pe.quantized_table().cpu()
    record = {"d": pe.d, "bits": pe.bits, "shared": pe.shared, "init": pe.init,
              "table": [[[round(v, 6) for v in row] for row in t.tolist()] for t in table]}
    (run_dir / "embedding.json").write_text(json.dumps(record) + "\n")


def write_runtime(run_dir: Path, test, threads: "int | None") -> None:
    """Export a finished run to run_dir/model.pxq and write runtime.json: the integer runtime's top-1
    on the test split, its images/s, and how often its labels equal the fake-quant model's. Runs
    whose first layer has no integer form (float, bit-plane) are skipped."""
    from pixelq.exporting import export
    from pixelq.exporting.verify import label_agreement

    model = load_checkpoint(run_dir / "checkpoint.pt")
    try:
        export(model, run_dir / "model.pxq")
    except ExportError:
        return
    rt, record = _time_runtime(run_dir / "model.pxq", test, threads)
    agreement = label_agreement(model, rt, test.images)
    record.update(label_agreement=100.0 * (agreement["same"] + agreement["differ_at_logit_ties"]) / agreement["n"],
                  labels=agreement)
    (run_dir / "runtime.json").write_text(json.dumps(record, indent=2) + "\n")


def retime_runtime(run_dir: Path, test, threads: "int | None") -> dict:
    """Re-measure a finished run's committed model.pxq (runtime top-1, images/s) after the runtime
    changed, without its checkpoint: runtime.json keeps the export's label comparison with the
    fake-quant model, which holds while the runtime's top-1 is the one recorded (ExportError if not:
    re-export with write_runtime). Returns the new record."""
    old = json.loads((run_dir / "runtime.json").read_text())
    _, record = _time_runtime(run_dir / "model.pxq", test, threads)
    if round(record["runtime_top1"], 2) != round(old["runtime_top1"], 2):
        raise ExportError(f"{run_dir.name}: the runtime's top-1 moved from {old['runtime_top1']:.2f} to "
                          f"{record['runtime_top1']:.2f} %; its labels changed, so re-export from the checkpoint")
    record = {**old, **record}
    (run_dir / "runtime.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _time_runtime(path: Path, test, threads: "int | None") -> tuple:
    """(runtime, record): the .pxq's top-1 on `test` and images/s, as runtime.json holds them."""
    from pixelq.runtime import load

    rt = load(path, threads=threads)
    t0 = time.perf_counter()
    labels = rt.predict(test.images)
    seconds = time.perf_counter() - t0
    # the conv's instruction set sets the speed (AVX-512 runs several times AVX2's): speeds compare only within one
    return rt, {"runtime_top1": 100.0 * float((labels == test.labels).mean()), "images_per_s": len(labels) / seconds,
                "threads": rt.threads, "backend": rt.backend, "isa": rt.isa, "file_bytes": path.stat().st_size}


def _check_same_settings(metrics_path: Path, cfg: TrainConfig) -> None:
    """ConfigError unless a finished run's metrics.json was made with this configuration (the fields
    a resumed training may change, such as paths and threads, aside)."""
    saved = json.loads(metrics_path.read_text())["config"]
    mismatch = config_changes(saved, cfg)
    if mismatch:
        raise ConfigError(f"{metrics_path.parent}: finished with different settings ({', '.join(sorted(mismatch))}); "
                          "use another --out or the same schedule")


def run_study(out: "str | Path", data: "str | None" = None, schedule: "StudySchedule | None" = None,
              tiers: tuple = ("headline", "ablation"), threads: "int | None" = None, device: str = "auto",
              progress: bool = False, only: "list | None" = None, image_size: "int | None" = None) -> list:
    """Train every (variant, seed) of the plan that has no metrics.json yet; returns the run names
    trained in this call. `only` restricts the plan to the named variants; `image_size` is
    `load_dataset`'s (e.g. 32 or 64 for ImageNet-style folders of mixed sizes)."""
    from pixelq.data import load_dataset

    schedule = schedule or StudySchedule()
    schedule.validate()
    out = Path(out)
    pairs = plan(schedule, tiers)
    if only:
        known = {v.name for v in all_variants()}
        unknown = sorted(set(only) - known)
        if unknown:
            raise ConfigError(f"unknown study variant(s) {unknown}; choose from: {', '.join(sorted(known))}")
        pairs = [(v, s) for v, s in pairs if v.name in only]
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps({
        "schedule": asdict(schedule),
        "variants": [asdict(v) for v in all_variants()],
    }, indent=2) + "\n")
    splits = None
    trained = []
    for variant, seed in pairs:
        cfg = run_config(variant, seed, schedule, out, data, threads, device, progress, image_size)
        run_dir = Path(cfg.out)
        if (run_dir / "metrics.json").is_file():
            _check_same_settings(run_dir / "metrics.json", cfg)
            continue
        splits = splits if splits is not None else load_dataset(data, image_size=image_size)
        print(f"== {run_dir.name}: {variant.first_layer} first layer, last layer {variant.last_layer}, "
              f"{cfg.epochs} epochs", flush=True)
        metrics = train(cfg, resume=True, data=splits)
        if variant.first_layer == "pixel-embedding":
            write_embedding(run_dir)
        write_runtime(run_dir, splits.test, threads)
        print(f"== {run_dir.name}: top-1 {metrics['top1']:.2f}%", flush=True)
        trained.append(run_dir.name)
    return trained


def main(argv: "list | None" = None) -> int:
    p = argparse.ArgumentParser(description="the first-layer study: every first-layer method, one schedule, "
                                            "several seeds (resumable: run it again)")
    p.add_argument("--data", help="a data set pixelq reads (default: the embedded subset)")
    p.add_argument("--image-size", type=int, help="images resized to S x S (image folders of mixed sizes)")
    p.add_argument("--out", default="results/first-layer-study")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="headline runs train once per seed")
    p.add_argument("--epochs", type=int, default=20, help="epochs of each headline run")
    p.add_argument("--ablation-epochs", type=int, default=10)
    p.add_argument("--ablation-train-subset", type=int, default=10000, help="0: the whole train split")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--tier", default="all", choices=("all", "headline", "ablation"))
    p.add_argument("--only", nargs="+", help="only these variants (names as in the report)")
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    schedule = StudySchedule(seeds=tuple(args.seeds), epochs=args.epochs, ablation_epochs=args.ablation_epochs,
                             ablation_train_subset=args.ablation_train_subset or None, batch_size=args.batch_size)
    tiers = (args.tier,) if args.tier != "all" else ("headline", "ablation")
    try:
        trained = run_study(args.out, data=args.data, image_size=args.image_size, schedule=schedule, tiers=tiers,
                            threads=args.threads, device=args.device, progress=not args.quiet, only=args.only)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"trained": trained, "out": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
