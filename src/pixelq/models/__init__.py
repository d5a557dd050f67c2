"""Model registry: the CIFAR ResNets, CNV, and airbench94's float network."""
from .airbench import FLOAT_ONLY, Airbench, AirbenchConfig, airbench94
from .cnv import CNV, CNVConfig, cnv
from .common import apply_overrides, fully_quantized, model_kwargs
from .convert import QuantizedModel, quantize_model
from .registry import MODELS, create_model, list_models, register_model
from .resnet import ResNet, ResNetConfig, resnet18, resnet20
from .summary import cost_totals, first_layer_cost, layer_bits, layer_costs, model_size_bytes

__all__ = [
    "FLOAT_ONLY",
    "Airbench",
    "AirbenchConfig",
    "airbench94",
    "CNV",
    "CNVConfig",
    "cnv",
    "QuantizedModel",
    "quantize_model",
    "cost_totals",
    "layer_costs",
    "MODELS",
    "ResNet",
    "ResNetConfig",
    "apply_overrides",
    "create_model",
    "first_layer_cost",
    "fully_quantized",
    "layer_bits",
    "list_models",
    "model_kwargs",
    "model_size_bytes",
    "register_model",
    "resnet18",
    "resnet20",
]
