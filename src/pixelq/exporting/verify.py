"""Check the deployment contract: the runtime's integer codes equal the fake-quant model's.

For every threshold and residual-add node, the PyTorch model's activation output divided by the
step must be the runtime's code. A code may differ only at a float tie: where PyTorch's
pre-activation (the batch-norm output, in float32) lies on a rounding boundary up to float error,
so that float32 and the exact integer thresholds may round it apart.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

TIE_TOLERANCE = 1e-4  # in units of the activation step


def _bn_name(meta: dict, act_name: str) -> str:
    """The module whose output feeds an activation quantizer's thresholds (its batch norm, or the
    conv itself): recorded by the export; files from before it follow the ResNet's naming."""
    if act_name in meta.get("bn_of", {}):
        return meta["bn_of"][act_name]
    for act, bn in (("act1", "bn1"), ("res_act", "bn2"), ("shortcut_act", "shortcut_bn"), ("stem.act", "stem.bn")):
        if act_name.endswith(act):
            return act_name[: -len(act)] + bn
    raise KeyError(act_name)


def _nhwc(t: torch.Tensor) -> np.ndarray:
    """A layer's output as the runtime holds it: NHWC, a linear layer's (N, C) as a 1 x 1 map."""
    return (t if t.dim() == 4 else t[:, :, None, None]).permute(0, 2, 3, 1).double().numpy()


@torch.no_grad()
def layer_agreement(model: nn.Module, runtime, images: np.ndarray) -> dict:
    """Per layer: codes compared, codes that differ, and how many of those are float ties."""
    nodes = [n for n in runtime.model.nodes if n.op in ("threshold", "add_clip")]
    modules = dict(model.named_modules())
    meta = runtime.model.meta
    wanted = {n.name for n in nodes} | {_bn_name(meta, n.name) for n in nodes if n.op == "threshold"}
    outputs, handles = {}, []
    for name in wanted:
        handles.append(modules[name].register_forward_hook(
            lambda m, i, o, name=name: outputs.__setitem__(name, _nhwc(o))))
    try:
        model.eval()(torch.as_tensor(images))
    finally:
        for h in handles:
            h.remove()
    values = runtime.layer_outputs(images)
    report = {}
    for node in nodes:
        torch_codes = np.round(outputs[node.name] / node.step)
        differ = torch_codes != values[node.name]
        ties = 0
        if differ.any() and node.op == "threshold":
            pre = outputs[_bn_name(meta, node.name)][differ] / node.step
            ties = int((np.abs(pre - np.floor(pre) - 0.5) < TIE_TOLERANCE).sum())
        report[node.name] = {"codes": int(differ.size), "differ": int(differ.sum()), "ties": ties}
    return report


@torch.no_grad()
def label_agreement(model: nn.Module, runtime, images: np.ndarray, batch_size: int = 500) -> dict:
    """Labels of runtime and model over `images`. A disagreement is explained where the runtime's
    integer logits tie at the top (PyTorch's float logits then differ by rounding), or where the
    first layer whose codes differ on that image differs only at float ties (`layer_agreement`:
    PyTorch's pre-activation on a rounding boundary, which float32 and the exact integer
    thresholds round apart; the layers after it then follow different codes)."""
    model.eval()
    same = excused = float_ties = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        torch_labels = model(torch.as_tensor(x)).argmax(1).numpy()
        logits = runtime.logits(x)
        labels = logits.argmax(1)
        top = logits.max(1)
        tied = (logits == top[:, None]).sum(1) > 1
        agree = labels == torch_labels
        at_logit_tie = ~agree & tied & (logits[np.arange(len(x)), torch_labels] == top)
        same += int(agree.sum())
        excused += int(at_logit_tie.sum())
        float_ties += sum(_first_difference_is_a_float_tie(model, runtime, x[j:j + 1])
                          for j in np.flatnonzero(~agree & ~at_logit_tie))
    return {"n": len(images), "same": same, "differ_at_logit_ties": excused, "differ_at_float_ties": float_ties,
            "differ_unexplained": len(images) - same - excused - float_ties}


def _first_difference_is_a_float_tie(model: nn.Module, runtime, image: np.ndarray) -> bool:
    report = layer_agreement(model, runtime, image)
    first = next((r for r in report.values() if r["differ"]), None)
    return first is not None and first["ties"] == first["differ"]
