"""Export: lower a trained model to integers and write it as a bit-packed, checksummed .pxq file."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .fileformat import load_model, payload_bytes, read_manifest, save_model
from .graph import IntegerModel, lower_resnet


def export(model: nn.Module, path: "str | Path") -> IntegerModel:
    """Lower an eval-mode pixelq model to integers and write it to `path` (.pxq)."""
    integer_model = lower_resnet(model.eval())
    save_model(integer_model, path)
    return integer_model


__all__ = ["IntegerModel", "export", "load_model", "lower_resnet", "payload_bytes", "read_manifest", "save_model"]
