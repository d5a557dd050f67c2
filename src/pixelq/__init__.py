"""pixelq: fully quantized CNNs with pixel embedding, from uint8 pixels to integer-only inference."""
from .data import load_dataset
from .errors import CheckpointError, ConfigError, DataError, InputError, PixelqError
from .models import create_model, list_models, register_model
from .training import TrainConfig, evaluate, load_checkpoint, train

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "InputError",
    "PixelqError",
    "TrainConfig",
    "create_model",
    "evaluate",
    "list_models",
    "load_checkpoint",
    "load_dataset",
    "register_model",
    "train",
]
