"""Quantized layers and first-layer input encoders, named as in torch.nn."""
from .encoders import (
    ENCODERS,
    BitPlaneInput,
    FloatInput,
    Int8Input,
    NaiveInput,
    PixelEmbedding,
    ThermometerInput,
    encoder_options,
    images_to_nchw,
    make_encoder,
)
from .layers import ChannelOffset, QuantConv2d, QuantLinear

__all__ = [
    "ENCODERS",
    "BitPlaneInput",
    "ChannelOffset",
    "FloatInput",
    "Int8Input",
    "NaiveInput",
    "PixelEmbedding",
    "QuantConv2d",
    "QuantLinear",
    "ThermometerInput",
    "encoder_options",
    "images_to_nchw",
    "make_encoder",
]
