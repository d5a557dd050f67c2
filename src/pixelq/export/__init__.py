"""Export: lower a trained model to integers and write it as a bit-packed, checksummed file."""
from .graph import IntegerModel, lower_resnet

__all__ = ["IntegerModel", "lower_resnet"]
