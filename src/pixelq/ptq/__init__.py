"""Post-training quantization: weights chosen without gradient steps (GPFQ, round-to-nearest)."""
from .gpfq import alphabet, gpfq_quantize, rtn_quantize

__all__ = ["alphabet", "gpfq_quantize", "rtn_quantize"]
