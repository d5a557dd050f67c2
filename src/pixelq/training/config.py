"""`TrainConfig`: every training setting, declared once. The command line's `train` flags, the
recipe files and the checkpoint's stored config are all read off this dataclass.

A recipe is a YAML file of TrainConfig fields (`pixelq recipes` lists the shipped ones, in
`pixelq/training/recipes/`). Settings resolve in this order, later wins: the dataclass defaults,
the recipe, then each flag given on the command line.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

from ..errors import ConfigError

SCHEDULES = ("cosine", "step", "onecycle")
OPTIMIZERS = ("sgd", "adam", "adamw")
STEP_MILESTONES = (0.5, 0.75, 0.9)  # fractions of training at which the step schedule divides lr by 10


def setting(default, help: str, cli: bool = True, **argparse_kwargs):
    """A TrainConfig field with the help text (and argparse type/choices) its flag uses."""
    kind = {"default_factory": default} if callable(default) else {"default": default}
    return field(**kind, metadata={"help": help, "cli": cli, **argparse_kwargs})


@dataclass
class TrainConfig:
    # what is trained
    model: str = setting("resnet20", "registered model name")
    first_layer: str = setting("float", "input encoder")
    first_layer_kwargs: dict = setting(dict, "encoder options (CLI: --pe-dim, --pe-bits, --pe-per-channel, --pe-init)",
                                       cli=False)
    wbits: int = setting(32, "weight bits: 1..8, or 32 for float")
    abits: int = setting(32, "activation bits: 1..8, or 32 for float")
    last_layer: str = setting("float", "float or quantized", choices=("float", "quantized"))
    residual_bits: "int | None" = setting(None, "bits of a ResNet's residual stream (block outputs and adds); the convs "
                                                "still read abits codes. Default: abits", type=int)
    signed_residual: bool = setting(False, "quantize a ResNet block's branch on a signed grid before the residual "
                                           "add, so a block can lower the stream as well as raise it")
    input_offsets: bool = setting(False, "a learned offset per channel before the quantizer of each ResNet block's "
                                         "input (ReActNet's RSign); folded into integer thresholds at export")
    overrides: dict = setting(dict, "{layer-name pattern: quantizer spec} (CLI: --overrides FILE)", cli=False)
    # on what
    data: "str | None" = setting(None, "data set path (image folders, .tar.gz, CIFAR python, IDX); default: embedded "
                                       "subset", type=str)
    image_size: "int | None" = setting(None, "scale each image's shorter side to S and keep the centre S x S",
                                       type=int)
    train_subset: "int | None" = setting(None, "train on a stratified subset of N images", type=int)
    test_subset: "int | None" = setting(None, "evaluate on a stratified subset of N images", type=int)
    augment: bool = setting(True, "random crop + horizontal flip (see crop)")
    flip: str = setting("random", "random: a coin per image each epoch; alternate: a coin per image drawn once, "
                                  "then each image flipped the other way every epoch (airbench's alternating flip)",
                        choices=("random", "alternate"))
    crop: str = setting("pad", "pad: pad-4 random crop of the stored image (small images); resized: random-resized "
                               "crop to --image-size of each full image, decoded fresh (photographs; needs --stream)",
                        choices=("pad", "resized"))
    stream: bool = setting(False, "read image folders lazily from disk, decoded by worker processes (for data larger "
                                  "than memory; automatic when the decoded images would fill half of it)")
    workers: int = setting(2, "decoding processes when streaming (0: in the training process)")
    # how
    epochs: int = setting(10, "epochs")
    batch_size: int = setting(128, "global batch size (split across processes under torchrun)")
    optimizer: str = setting("adam", "sgd (momentum, Nesterov by default), adam, or adamw (decoupled weight decay)",
                             choices=OPTIMIZERS)
    lr: float = setting(0.002, "peak learning rate")
    momentum: float = setting(0.9, "SGD momentum")
    nesterov: bool = setting(True, "Nesterov momentum (SGD with momentum > 0)")
    weight_decay: float = setting(5e-4, "weight decay on conv and linear weights only (never on batch norm, biases, "
                                        "embedding tables or quantizer scales)")
    schedule: str = setting("cosine", "cosine to 0, step (/10 at 50, 75, 90 %), or onecycle", choices=SCHEDULES)
    warmup_epochs: float = setting(0.0, "linear warm-up epochs (cosine and step)")
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy target")
    seed: int = setting(0, "seed of initialisation, data order and augmentation")
    # starting point and extra objectives
    init: "str | None" = setting(None, "start from this checkpoint's weights (same architecture; layers whose shapes "
                                       "differ, e.g. the first layer, keep their own initialisation)", type=str)
    calibration_batches: int = setting(8, "with --init: batches that re-estimate batch-norm statistics and set "
                                          "data-initialised quantizer scales before training")
    teacher: "str | None" = setting(None, "knowledge distillation from this checkpoint (eval mode, no gradients)",
                                    type=str)
    kd_weight: float = setting(0.5, "with --teacher: loss = (1 - w) * cross-entropy + w * T^2 * KL(teacher || model)")
    kd_temperature: float = setting(4.0, "with --teacher: softmax temperature T of both logits")
    ema_decay: float = setting(0.0, "keep an exponential moving average of the weights and batch-norm statistics, "
                                    "updated after every step with this decay (e.g. 0.999); evaluation, the checkpoint's "
                                    "model and export use the average (0: off)", flag="--ema")
    saq_rho: float = setting(0.0, "sharpness-aware quantization radius rho (0: off); costs a second forward/backward",
                             flag="--saq")
    # where and on what
    recipe: "str | None" = setting(None, "the recipe these settings started from (informational)", cli=False)
    threads: "int | None" = setting(None, "torch intra-op threads (default: all cores)", type=int)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    out: str = setting("runs/train", "folder for checkpoint.pt, metrics.json and metrics.jsonl")
    progress: bool = setting(True, "progress bar and one line per epoch (CLI: --quiet turns both off)", cli=False)

    def validate(self) -> None:
        from ..nn.encoders import check_encoder_options

        check_types(self)  # every field's type and choices: the checks below are of ranges and combinations
        check_encoder_options(self.first_layer, self.first_layer_kwargs)
        if self.workers < 0:
            raise ConfigError(f"workers must be an integer >= 0, got {self.workers!r}")
        for name in ("epochs", "batch_size", "threads", "train_subset", "test_subset", "calibration_batches"):
            value = getattr(self, name)
            optional = name in ("threads", "train_subset", "test_subset")
            if not (optional and value is None) and value < 1:
                raise ConfigError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")
        if self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr!r}")
        for name in ("momentum", "weight_decay", "warmup_epochs", "label_smoothing", "kd_weight", "saq_rho", "ema_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        for name, high in (("momentum", 1), ("label_smoothing", 1), ("ema_decay", 1)):
            if getattr(self, name) >= high:
                raise ConfigError(f"{name} must lie in [0, {high}), got {getattr(self, name)!r}")
        if self.flip == "alternate" and self.crop == "resized":
            raise ConfigError("flip=alternate flips the pad crops; crop=resized draws its own flips")
        if self.crop == "resized" and not (self.stream and self.image_size):
            raise ConfigError("crop=resized draws a new crop of each full image every epoch: it needs --stream and "
                              "--image-size S (in memory only the S x S centre is kept)")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) must not be longer than training ({self.epochs} epochs)")
        if self.schedule == "onecycle" and self.warmup_epochs:
            raise ConfigError("the onecycle schedule brings its own warm-up; drop warmup_epochs")
        if self.kd_weight > 1:
            raise ConfigError(f"kd_weight must lie in [0, 1], got {self.kd_weight!r}")
        if not (math.isfinite(self.kd_temperature) and self.kd_temperature > 0):
            raise ConfigError(f"kd_temperature must be a positive finite number, got {self.kd_temperature!r}")

    def model_arguments(self) -> dict:
        """The model's keyword arguments; residual_bits, signed_residual and input_offsets only when
        set (models without a residual stream do not take them)."""
        return {
            "first_layer": self.first_layer, "first_layer_kwargs": self.first_layer_kwargs,
            "wbits": self.wbits, "abits": self.abits, "last_layer": self.last_layer, "overrides": self.overrides,
            **({"residual_bits": self.residual_bits} if self.residual_bits is not None else {}),
            **({"signed_residual": True} if self.signed_residual else {}),
            **({"input_offsets": True} if self.input_offsets else {}),
        }


_KINDS = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "dict": (dict,)}


def check_types(cfg: TrainConfig) -> None:
    """ConfigError naming every field whose value is not of its declared type (a recipe's `augment: "no"`,
    `lr: "0.01"`, `wbits: true`), the choices of fields that have them, and the overrides' form."""
    wrong = []
    for f in fields(cfg):
        value, declared = getattr(cfg, f.name), f.type.replace(" ", "").strip("'\"")
        optional = declared.endswith("|None")
        kinds = _KINDS[declared.removesuffix("|None")]
        fits = (optional and value is None) or (isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)))
        if not fits:
            wrong.append(f"{f.name} takes {'an' if declared[0] in 'i' else 'a'} {declared.replace('|None', ' or null')}, "
                         f"got {value!r}")
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            wrong.append(f"{f.name} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
    if isinstance(cfg.overrides, dict) and not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in cfg.overrides.items()):
        wrong.append(f"overrides maps layer-name patterns to quantizer specs (text to text), got {cfg.overrides!r}")
    if wrong:
        raise ConfigError("; ".join(wrong))
    for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "label_smoothing", "kd_weight", "kd_temperature",
                 "saq_rho", "ema_decay"):
        setattr(cfg, name, float(getattr(cfg, name)))  # an int in a recipe is that float


# Fields that may differ between a run and its resumption without changing the result.
RESUMABLE_CHANGES = {"progress", "threads", "device", "data", "out", "recipe", "init", "calibration_batches", "stream",
                     "workers"}


def default_config() -> dict:
    """Every TrainConfig field at its default value."""
    return asdict(TrainConfig())


def config_changes(saved: dict, cfg: TrainConfig) -> dict:
    """{field: (saved value, cfg's value)} for each setting that changes the result (all bar
    RESUMABLE_CHANGES) and differs. A field `saved` predates counts as its default, which is what
    the run that wrote it used."""
    defaults = default_config()
    return {k: (saved.get(k, defaults[k]), v) for k, v in asdict(cfg).items()
            if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v}


def _recipe_dir():
    return resources.files("pixelq.training") / "recipes"


def list_recipes() -> dict:
    """{name: first line of its description} of the recipes shipped in the package."""
    out = {}
    for f in sorted(_recipe_dir().iterdir(), key=lambda f: f.name):
        if f.name.endswith(".yaml"):
            text = f.read_text()
            first = next((line[1:].strip() for line in text.splitlines() if line.startswith("#")), "")
            out[f.name[:-5]] = first
    return out


def read_recipe(name_or_path: str, _within: tuple = ()) -> dict:
    """A recipe's settings: a shipped recipe by name, or a YAML file by path. A recipe may name another
    as its `base` (a shipped name, or a path, relative to the recipe's own folder): the base's
    settings, then its own. ConfigError for an unknown name, an unreadable file, a key that is not a
    TrainConfig field, or a chain of bases that comes back on itself."""
    import yaml

    shipped = _recipe_dir() / f"{name_or_path}.yaml"
    path = Path(name_or_path)
    if shipped.is_file():
        text, where, folder = shipped.read_text(), f"recipe {name_or_path!r}", None
    elif path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        text, where, folder = path.read_text(), str(path), path.parent
    else:
        raise ConfigError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(list_recipes())} "
                          "(or give the path of a .yaml file)")
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({e})") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: must hold a mapping of setting -> value")
    unknown = sorted(set(values) - set(default_config()) - {"description", "base"})
    if unknown:
        raise ConfigError(f"{where}: unknown settings {unknown}; known: {', '.join(default_config())}")
    values.pop("description", None)
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{where}: base must name a recipe, got {base!r}")
    if folder is not None and not (_recipe_dir() / f"{base}.yaml").is_file() and (folder / base).is_file():
        base = str(folder / base)
    me = where if folder is None else str(path.resolve())  # one spelling per file for the circle check
    if me in _within:
        raise ConfigError(f"recipe bases go round in a circle: {' -> '.join((*_within, me))}")
    return {**read_recipe(base, (*_within, me)), **values}


def resolve_config(recipe: "str | None" = None, **overrides) -> TrainConfig:
    """TrainConfig from the defaults, then `recipe`'s settings, then `overrides` (later wins)."""
    values = read_recipe(recipe) if recipe else {}
    unknown = sorted(set(overrides) - set(default_config()))
    if unknown:
        raise ConfigError(f"unknown settings {unknown}")
    cfg = TrainConfig(**{**values, **overrides, **({"recipe": recipe} if recipe else {})})
    cfg.validate()
    return cfg


def cli_settings() -> list:
    """(field name, flag, argparse kwargs) of every TrainConfig field the `train` command exposes."""
    out = []
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        if not meta.pop("cli"):
            continue
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not MISSING else f.default_factory()
        if isinstance(default, bool):
            meta["action"] = "store_bool"
        else:
            meta.setdefault("type", type(default))
        meta["help"] = f"{meta['help']} (default: {default})".replace("%", "%%")  # argparse formats help with %
        out.append((f.name, flag, meta))
    return out
