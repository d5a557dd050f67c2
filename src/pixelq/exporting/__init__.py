"""Export: lower a trained model to integers and write it as a bit-packed, checksummed .pxq file."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ExportError
from ..integer import IntegerModel, save_model
from .graph import lower, lower_plain


def export(model: nn.Module, path: "str | Path", classes: "list | None" = None,
           image_shape: "tuple | None" = None) -> IntegerModel:
    """Lower an eval-mode quantized model (`exporting.graph.lower`) to integers and write it to `path` (.pxq).

    `classes` (the names the logits index) and `image_shape` ((H, W, C) it was trained on) are
    stored in the file, so the runtime can refuse data the model was not made for.
    """
    bad = [name for name, t in (*model.named_parameters(), *model.named_buffers())
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ExportError(f"the model holds non-finite values (NaN or infinity) in {', '.join(bad[:5])}"
                          f"{' and more' if len(bad) > 5 else ''}; its training diverged, so its labels would be "
                          "meaningless. Export a checkpoint from before it diverged")
    integer_model = lower(model.eval(), image_shape)
    if classes is not None:
        if len(classes) != integer_model.meta["num_classes"] or not all(isinstance(c, str) for c in classes):
            raise ExportError(f"classes must name each of the model's {integer_model.meta['num_classes']} outputs "
                              f"once, got {len(classes)} names: {list(classes)[:12]}")
        integer_model.meta["classes"] = list(classes)
    if image_shape is not None:
        integer_model.meta["image_shape"] = [int(v) for v in image_shape]
    save_model(integer_model, path)
    return integer_model


__all__ = ["export", "lower", "lower_plain"]
