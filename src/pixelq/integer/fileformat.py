"""The .pxq model file: safetensors holding bit-packed tensors, plus a JSON manifest and a checksum.

Tensors of one kind are concatenated into a few safetensors entries ("packed" uint8 bit streams,
"int32", "int8", "float32"), so the header stays small; the manifest says where each logical tensor
lies, its shape, and how it is encoded. Integer codes are packed at their bit width:
code = lowest + stride * u, u stored in `bits` bits. The manifest is zlib-compressed JSON (it is
most of the overhead of a small model); `pixelq inspect` prints it. The SHA-256 covers the
manifest and every tensor byte. Nothing is pickled.

The file stores, next to the graph, the plan the runtime executes (`pixelq.runtime.fusion.plan`,
run here at export): its nodes and the tensors the transforms made (a tensor they passed on as it
was is stored once, the plan's entry naming it: {"same_as": name}). Both graphs are checked op by
op at load, so a runtime (the C library included) only executes. Version 3 (typed nodes) holds each
node as its op's `to_dict` gives it, and a key its op does not have is an error; version 2's plans
carried attributes of the nodes a fusion absorbed, so its files are refused: export them again.
"""
from __future__ import annotations

import base64
import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from ..files import atomic_write
from ..zoo import resolve
from .graph import IntegerModel
from .ops import check_graph, nodes_from_dicts
from .packing import pack_bits, unpack_bits

INT32 = np.iinfo(np.int32)
FORMAT = "pixelq-model"
VERSION = 3

def _digest(manifest_bytes: bytes, blobs: dict) -> str:
    h = hashlib.sha256(manifest_bytes)
    for name in sorted(blobs):
        h.update(name.encode())
        h.update(np.ascontiguousarray(blobs[name]).tobytes())
    return h.hexdigest()


def _layout(nodes: list, tensors: dict, parts: dict, stored: dict) -> dict:
    """Each node's tensors encoded (its op's `encoding`) into `parts` (blob -> arrays), their places
    by name; a tensor already stored (`stored`: id of the array -> its name) is named, not repeated."""
    layout = {}
    for node in nodes:
        for key in node.tensors:
            name = node.tensor_name(key)
            array = tensors[name]
            if id(array) in stored:
                layout[name] = {"same_as": stored[id(array)]}
                continue
            array = np.asarray(array)
            enc = node.encoding(key)
            if enc["packed"]:
                u = (array.astype(np.int64) - enc["lowest"]) // enc["stride"]
                data, blob = pack_bits(u, enc["bits"]), "packed"
            else:
                data, blob = array.astype(enc["dtype"]).reshape(-1), enc["dtype"]
            offset = sum(len(p) for p in parts.get(blob, []))
            parts.setdefault(blob, []).append(data)
            layout[name] = {**enc, "blob": blob, "offset": offset, "length": len(data), "shape": list(array.shape)}
    return layout


def save_model(model: IntegerModel, path) -> int:
    """Write `model` and its runtime plan to `path` (.pxq); returns the file size in bytes."""
    from safetensors.numpy import save_file

    from ..runtime.fusion import plan as runtime_plan  # the transforms are the runtime's; they run here, once

    planned = runtime_plan(model)
    parts: dict = {}
    layout = _layout(model.nodes, model.tensors, parts, {})
    shared = {id(model.tensors[name]): name for name in layout}
    plan_layout = _layout(planned.nodes, planned.tensors, parts, shared)
    blobs = {k: np.concatenate(v) for k, v in parts.items()}
    manifest = {"format": FORMAT, "version": VERSION, "nodes": [n.to_dict() for n in model.nodes], "meta": model.meta,
                "tensors": layout, "plan": {"nodes": [n.to_dict() for n in planned.nodes], "tensors": plan_layout}}
    manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
    metadata = {
        "format": FORMAT, "version": str(VERSION),
        "manifest": base64.b64encode(zlib.compress(manifest_bytes, 9)).decode(),
        "sha256": _digest(manifest_bytes, blobs),
    }
    atomic_write(path, lambda tmp: save_file(blobs, str(tmp), metadata=metadata), ModelFileError, "model file")
    return Path(path).stat().st_size


def read_manifest(path) -> tuple:
    """(manifest dict, blobs dict) after checking format, version and checksum. `path` may name a
    shipped model as "zoo:NAME"."""
    from safetensors import safe_open

    path = resolve(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            blobs = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a bad header or short file
        raise ModelFileError(f"{path}: cannot read the model file ({type(e).__name__}: {e}); it is truncated, "
                             "corrupt or not a .pxq file; export it again with `pixelq export`") from e
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a pixelq model file")
    if metadata.get("version") != str(VERSION):
        raise ModelFileError(f"{path}: model file version {metadata.get('version')}, this pixelq reads version "
                             f"{VERSION}; export the model again with this pixelq")
    try:
        manifest_bytes = zlib.decompress(base64.b64decode(metadata["manifest"]))
        manifest = json.loads(manifest_bytes)
    except Exception as e:
        raise ModelFileError(f"{path}: the manifest is damaged ({e})") from e
    if _digest(manifest_bytes, blobs) != metadata.get("sha256"):
        raise ModelFileError(f"{path}: checksum mismatch: the file was altered or damaged after export")
    return manifest, blobs


def _tensor(blobs: dict, name: str, t: dict) -> np.ndarray:
    """One manifest entry's tensor; ValueError unless the entry lies inside its blob and its length
    is exactly what its shape and encoding need (so a shifted or stretched entry is caught)."""
    count = int(np.prod(t["shape"], dtype=np.int64))
    if any(not isinstance(v, int) or v < 0 for v in (*t["shape"], t["offset"], t["length"])):
        raise ValueError(f"{name}: shape, offset and length must be non-negative integers")
    blob = blobs[t["blob"]]
    if t["offset"] + t["length"] > len(blob):
        raise ValueError(f"{name}: lies past the end of blob {t['blob']!r} ({t['offset']} + {t['length']} > {len(blob)})")
    data = blob[t["offset"]:t["offset"] + t["length"]]
    if t["packed"]:
        if not all(isinstance(t[k], int) and not isinstance(t[k], bool) and abs(t[k]) <= INT32.max
                   for k in ("lowest", "stride", "bits")):
            raise ValueError(f"{name}: lowest, stride and bits must be integers in the int32 range")
        if not 1 <= t["bits"] <= 32 or t["length"] != -(-count * t["bits"] // 8):
            raise ValueError(f"{name}: {t['length']} bytes do not hold {count} codes of {t['bits']} bits")
        codes = t["lowest"] + t["stride"] * unpack_bits(data, t["bits"], count).astype(np.int64)
        if count and not (INT32.min <= codes.min() and codes.max() <= INT32.max):
            raise ValueError(f"{name}: its codes leave the int32 range (lowest {t['lowest']}, stride {t['stride']})")
        return codes.reshape(t["shape"]).astype(np.int32)
    if data.dtype != np.dtype(t["dtype"]) or t["length"] != count:
        raise ValueError(f"{name}: {t['length']} {data.dtype} values do not fill shape {t['shape']} of {t['dtype']}")
    return data.reshape(t["shape"])


def load_model(path) -> IntegerModel:
    """Read a .pxq file back into an IntegerModel with unpacked integer tensors. ModelFileError if
    the manifest does not describe the stored tensors (even when its checksum was recomputed)."""
    manifest, blobs = read_manifest(path)
    try:
        meta, layout, plan = manifest["meta"], manifest["tensors"], manifest["plan"]
        if not isinstance(layout, dict) or not isinstance(plan, dict) or not isinstance(plan["tensors"], dict):
            raise ValueError("the manifest's tensors and its plan's must be objects")
        nodes, plan_nodes = nodes_from_dicts(manifest["nodes"]), nodes_from_dicts(plan["nodes"])
        tensors = {name: _tensor(blobs, name, t) for name, t in layout.items()}
        check_graph(nodes, tensors, meta)
        plan_tensors = {}
        for name, t in plan["tensors"].items():
            if isinstance(t, dict) and set(t) == {"same_as"}:
                if t["same_as"] not in tensors:
                    raise ValueError(f"plan tensor {name}: same_as names no tensor of the graph ({t['same_as']!r})")
                plan_tensors[name] = tensors[t["same_as"]]
            else:
                plan_tensors[name] = _tensor(blobs, name, t)
        check_graph(plan_nodes, plan_tensors, meta)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as e:
        raise ModelFileError(f"{path}: the manifest does not describe a valid model ({type(e).__name__}: {e}); "
                             "export it again with `pixelq export`") from e
    return IntegerModel(nodes, tensors, meta, plan=IntegerModel(plan_nodes, plan_tensors, meta))


def payload_bytes(model: IntegerModel) -> float:
    """What the file must hold at least: packed weights and LUT at their bits, thresholds and the rest raw."""
    total = 0.0
    for node in model.nodes:
        for key in node.tensors:
            array = np.asarray(model.tensors[node.tensor_name(key)])
            enc = node.encoding(key)
            total += array.size * enc["bits"] / 8 if enc["packed"] else array.size * np.dtype(enc["dtype"]).itemsize
    return total
