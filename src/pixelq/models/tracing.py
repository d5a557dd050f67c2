"""pixelq models as torch.fx graphs, and the inference copy of a frozen float network built on them.

`ModelTracer` keeps pixelq's layers whole: quantized convs and linears, quantizers, input encoders,
channel offsets, batch norm and pools are single call_module nodes, and the layout and input checks (images to NCHW,
channels-last gradients) single call_function nodes, whatever those modules do inside. Export lowers
that graph (`pixelq.exporting.graph`); `frozen_for_inference` rewrites it.
"""
from __future__ import annotations

import copy

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..nn import ChannelOffset, QuantConv2d, QuantLinear, images_to_nchw
from ..quant import Quantizer
from .resnet import keep_grad_layout, same_layout

PASSTHROUGH = (images_to_nchw, keep_grad_layout, same_layout)  # layout and input checks: the same values
POOLS = (nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten)


class ModelTracer(fx.Tracer):
    def __init__(self):
        super().__init__(autowrap_functions=PASSTHROUGH)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (QuantConv2d, QuantLinear, Quantizer, ChannelOffset, nn.BatchNorm1d, nn.BatchNorm2d, *POOLS))
                or hasattr(m, "quantized") or super().is_leaf_module(m, qualname))


def _only_user(node: fx.Node, of: fx.Node) -> bool:
    return isinstance(of, fx.Node) and of.op == "call_module" and list(of.users) == [node]


def frozen_for_inference(model: nn.Module) -> fx.GraphModule:
    """A copy of a float `model` for inference only (a distillation teacher): each batch norm that
    alone reads a float conv's output folded into that conv, and each ReLU that alone reads its
    input run in place. Eval mode, no gradients; the same logits to float rounding, two passes over
    memory fewer per conv. Quantized convs (a weight or input quantizer) are left as they are."""
    model = copy.deepcopy(model).eval()
    traced = fx.GraphModule(model, ModelTracer().trace(model))
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not node.args:
            continue
        module, source = modules[node.target], node.args[0]
        if isinstance(module, nn.BatchNorm2d) and _only_user(node, source):
            conv = modules[source.target]
            if type(conv) in (nn.Conv2d, QuantConv2d) and getattr(conv, "weight_quantizer", None) is None \
                    and getattr(conv, "input_quantizer", None) is None and module.track_running_stats:
                parent, _, name = source.target.rpartition(".")
                setattr(traced.get_submodule(parent) if parent else traced, name, fuse_conv_bn_eval(conv, module))
                node.replace_all_uses_with(source)
                traced.graph.erase_node(node)
        elif type(module) is nn.ReLU and _only_user(node, source):
            module.inplace = True
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    for p in traced.parameters():
        p.requires_grad_(False)
    return traced.eval()
