"""Post-training quantization: weights chosen without gradient steps (GPFQ, round-to-nearest)."""
from .gpfq import alphabet, gpfq_quantize, rtn_quantize
from .resnet import METHODS, quantize_resnet

__all__ = ["METHODS", "alphabet", "gpfq_quantize", "quantize_resnet", "rtn_quantize"]
