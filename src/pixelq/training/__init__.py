"""Training, evaluation and checkpoints."""
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .loop import TrainConfig, evaluate, learning_rate, train

__all__ = ["TrainConfig", "evaluate", "learning_rate", "load_checkpoint", "read_checkpoint", "save_checkpoint", "train"]
