"""Training, evaluation and checkpoints."""
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, save_weights_only
from .config import TrainConfig, list_recipes, read_recipe, resolve_config
from .loop import evaluate, learning_rate, train

__all__ = ["TrainConfig", "evaluate", "learning_rate", "list_recipes", "load_checkpoint", "read_checkpoint",
           "read_recipe", "resolve_config", "save_checkpoint", "save_weights_only", "train"]
