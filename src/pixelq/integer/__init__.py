"""The integer graph and its .pxq file: numpy only, so that a deployment needs no torch."""
from .fileformat import load_model, payload_bytes, read_manifest, save_model
from .graph import NODE_SCHEMA, IntegerModel, check_node, graph_costs, graph_table
from .packing import code_bits, pack_bits, unpack_bits

__all__ = ["NODE_SCHEMA", "IntegerModel", "check_node", "code_bits", "graph_costs", "graph_table", "load_model", "pack_bits",
           "payload_bytes", "read_manifest", "save_model", "unpack_bits"]
