"""The integer graph and its .pxq file: numpy only, so that a deployment needs no torch."""
from .fileformat import load_model, payload_bytes, read_manifest, save_model
from .graph import IntegerModel, graph_costs, graph_table
from .ops import OPS, check_graph, infer_shapes
from .packing import code_bits, pack_bits, unpack_bits

__all__ = ["OPS", "IntegerModel", "check_graph", "code_bits", "graph_costs", "graph_table", "infer_shapes",
           "load_model", "pack_bits", "payload_bytes", "read_manifest", "save_model", "unpack_bits"]
