"""pixelq: fully quantized CNNs with pixel embedding, from uint8 pixels to integer-only inference.

`import pixelq` loads nothing heavy: the names below that need PyTorch (training, models, export,
data) are imported on first use, so `pixelq.runtime` and `pixelq.integer` run where torch is absent.
"""
from importlib import import_module

from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ExportError,
    InputError,
    ModelFileError,
    PixelqError,
    TrainingError,
)

__version__ = "0.1.0"

# name -> the module that defines it, imported when the name is first used
_LAZY = {
    "load_dataset": ".data",
    "export": ".exporting",
    "create_model": ".models",
    "list_models": ".models",
    "register_model": ".models",
    "quantize_model": ".models",
    "TrainConfig": ".training",
    "evaluate": ".training",
    "load_checkpoint": ".training",
    "train": ".training",
}


# subpackages, imported on first use too: `import pixelq; pixelq.runtime.load(...)`
_SUBPACKAGES = ("bench", "data", "exporting", "images", "integer", "models", "nn", "ptq", "quant", "runtime", "training",
                "zoo")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return import_module(f".{name}", __name__)
    if name not in _LAZY:
        raise AttributeError(f"module 'pixelq' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportError",
    "InputError",
    "ModelFileError",
    "PixelqError",
    "TrainConfig",
    "TrainingError",
    "create_model",
    "evaluate",
    "export",
    "list_models",
    "load_checkpoint",
    "load_dataset",
    "quantize_model",
    "register_model",
    "train",
]


def __dir__() -> list:
    return sorted((*__all__, *_SUBPACKAGES))
