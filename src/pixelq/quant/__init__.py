"""Quantizers: weight and activation quantizers with straight-through gradients."""
from .quantizers import (
    LSQ,
    PACT,
    QUANTIZERS,
    BinaryWeight,
    DoReFaWeight,
    GridWeight,
    MidTreadHalf,
    PrunedTernaryWeight,
    Quantizer,
    TernaryWeight,
    make_quantizer,
    residual_fusion,
)

__all__ = [
    "LSQ",
    "PACT",
    "QUANTIZERS",
    "BinaryWeight",
    "DoReFaWeight",
    "GridWeight",
    "MidTreadHalf",
    "PrunedTernaryWeight",
    "Quantizer",
    "TernaryWeight",
    "make_quantizer",
    "residual_fusion",
]
