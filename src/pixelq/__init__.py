"""pixelq: fully quantized CNNs with pixel embedding, from uint8 pixels to integer-only inference."""
from .data import load_dataset
from .errors import CheckpointError, ConfigError, DataError, ExportError, InputError, ModelFileError, PixelqError, TrainingError
from .exporting import export
from .models import create_model, list_models, register_model
from .training import TrainConfig, evaluate, load_checkpoint, train

__version__ = "0.1.0"

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
    "register_model",
    "train",
]
