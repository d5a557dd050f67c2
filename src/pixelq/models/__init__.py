"""Model registry and the CIFAR ResNets."""
from .registry import MODELS, create_model, list_models, register_model
from .resnet import ResNet, ResNetConfig, apply_overrides, model_kwargs, resnet18, resnet20
from .summary import first_layer_cost, layer_bits, model_size_bytes

__all__ = [
    "MODELS",
    "ResNet",
    "ResNetConfig",
    "apply_overrides",
    "create_model",
    "first_layer_cost",
    "layer_bits",
    "list_models",
    "model_kwargs",
    "model_size_bytes",
    "register_model",
    "resnet18",
    "resnet20",
]
