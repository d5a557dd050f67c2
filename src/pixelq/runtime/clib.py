"""libpixelq from Python: ctypes mirrors of the structs in include/pixelq_kernels.h (the same fields in
the same order; `tests/test_kernels.py` checks each offset against the library's own) and one call
per kernel family, whose keyword arguments are the struct's field names.

    from pixelq.runtime import clib
    clib.conv(kind="planes", input=codes, batch=n, height=h, width=w, channels=c, ...)

A caller that runs one conv many times prepares its fixed fields once (`Call`) and passes only what
changes per call (the input, the output, the batch). Arrays go in as numpy arrays, C-contiguous; the
library checks every array's size against the geometry and the Python side every dtype it fixes.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LIBRARY = HERE / "libpixelq.so"


def get_include() -> str:
    """The folder of pixelq's C headers, for `cc -I$(python -c "import pixelq.runtime as r; print(r.get_include())")`."""
    return str(HERE / "include")


def get_library() -> str:
    """The path of the installed libpixelq shared library."""
    return str(LIBRARY)


class Buffer(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("bytes", ctypes.c_int64)]


class Output(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("bytes", ctypes.c_int64)]


i32, i64 = ctypes.c_int32, ctypes.c_int64


class ConvParams(ctypes.Structure):
    _fields_ = [
        ("kind", i32), ("input", Buffer), ("batch", i64), ("height", i64), ("width", i64), ("channels", i64),
        ("input_planes", i32), ("weights", Buffer), ("kernel_h", i32), ("kernel_w", i32), ("weight_bits", i32),
        ("weight_lowest", i32), ("weight_stride", i32), ("table_entry_bytes", i32), ("out_channels", i64),
        ("out_channels_padded", i64), ("lookup_bits", Buffer), ("lookup_sums", Buffer), ("lookup_tables", i32),
        ("lookup_depth", i32), ("stride", i32), ("pad", i32), ("direction", Buffer), ("thresholds", Buffer),
        ("levels", i32), ("qmin", i32), ("residual", Buffer), ("residual_height", i64), ("residual_width", i64),
        ("residual_channels", i64), ("residual_stride", i32), ("residual_qmax", i32), ("residual_shift", i32),
        ("out", Output), ("threads", i32), ("isa", ctypes.c_char_p),
    ]


class ThresholdParams(ctypes.Structure):
    _fields_ = [("acc", Buffer), ("positions", i64), ("channels", i64), ("direction", Buffer),
                ("thresholds", Buffer), ("levels", i32), ("qmin", i32), ("out", Output), ("threads", i32)]


class LookupParams(ctypes.Structure):
    _fields_ = [("image", Buffer), ("positions", i64), ("channels", i64), ("tables", Buffer), ("tables_count", i32),
                ("depth", i32), ("out", Output), ("threads", i32)]


class PoolParams(ctypes.Structure):
    _fields_ = [("codes", Buffer), ("batch", i64), ("positions", i64), ("channels", i64), ("out", Output),
                ("threads", i32)]


class Step(ctypes.Structure):
    _fields_ = [
        ("op", i32), ("inputs", i32 * 2), ("conv", ConvParams), ("input_shift", i32), ("shift_padding", i32),
        ("shift_border", Buffer), ("offset", Buffer), ("threshold", ThresholdParams), ("lookup", LookupParams),
        ("qmin", i32), ("qmax", i32), ("shift", i32), ("kernel", i32), ("stride", i32), ("extra_channels", i32),
        ("weight", Buffer), ("rows", i64), ("cols", i64), ("threads", i32), ("bias", Buffer), ("step", ctypes.c_double),
    ]


class Codes(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("ndim", i32), ("shape", i64 * 4)]


class Floats(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("ndim", i32), ("shape", i64 * 4)]


class Node(ctypes.Structure):
    _fields_ = [
        ("op", i32), ("inputs", i32 * 2), ("in_channels", i64), ("out_channels", i64), ("kernel", i64), ("stride", i64),
        ("padding", i64), ("groups", i64), ("weight_bits", i64), ("weight_lowest", i64), ("weight_stride", i64),
        ("input_range", i64 * 2), ("input_shift", i64), ("qmin", i64), ("qmax", i64), ("shift", i64),
        ("extra_channels", i64), ("residual_stride", i64), ("residual_qmax", i64), ("residual_shift", i64),
        ("table_sums", i64), ("weight", Codes), ("lut", Codes), ("direction", Codes), ("thresholds", Codes), ("offset", Codes),
        ("float_weight", Floats), ("bias", Floats), ("step", ctypes.c_double),
    ]


class Options(ctypes.Structure):
    _fields_ = [("threads", i32), ("isa", ctypes.c_char_p)]


class Value(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("type", i32), ("ndim", i32), ("shape", i64 * 4)]


# struct -> its C name
STRUCTS = {ConvParams: "pxq_conv_params", ThresholdParams: "pxq_threshold_params", LookupParams: "pxq_lookup_params",
           PoolParams: "pxq_pool_params", Buffer: "pxq_buffer", Output: "pxq_output", Step: "pxq_step",
           Value: "pxq_value", Options: "pxq_options", Codes: "pxq_codes", Node: "pxq_node", Floats: "pxq_floats"}
ENTRY = {ConvParams: "pxq_conv", ThresholdParams: "pxq_threshold", LookupParams: "pxq_lookup", PoolParams: "pxq_sum_pool"}
CONV_KINDS = {"planes": 0, "lookup": 1, "table": 2, "dot": 3}
STEP_OPS = {"conv": 0, "threshold": 1, "lookup": 2, "add_clip": 3, "subsample_pad": 4, "max_pool": 5, "sum_pool": 6,
            "linear": 7, "linear_float": 8}
VALUE_TYPES = {0: np.dtype(np.uint8), 1: np.dtype(np.int32), 2: np.dtype(np.int64),
               3: np.dtype(np.float32)}  # enum pxq_value_type
# The arrays whose element type the kernels fix (the library checks sizes, not types); weights and
# outputs depend on the kernel and are checked by their sizes only.
DTYPES = {name: np.dtype(dtype) for name, dtype in [
    ("input", np.uint8), ("image", np.uint8), ("codes", np.uint8), ("residual", np.uint8), ("tables", np.uint8),
    ("direction", np.int8), ("thresholds", np.int32), ("acc", np.int32), ("lookup_bits", np.uint64),
    ("lookup_sums", np.int32)]}
OK, ERROR_ARGUMENT, ERROR_MEMORY, ERROR_ISA, ERROR_FILE, ERROR_UNSUPPORTED = 0, 1, 2, 3, 4, 5


def _load():
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError:  # built without a C compiler: the engine falls back to the reference executor
        return None
    for struct, entry in ENTRY.items():
        fn = getattr(lib, entry)
        fn.argtypes, fn.restype = [ctypes.POINTER(struct)], ctypes.c_int
    for name, args, result in [("pxq_last_error", [], ctypes.c_char_p), ("pxq_isas", [], ctypes.c_char_p),
                               ("pxq_last_status", [], ctypes.c_int), ("pxq_dot_isa", [ctypes.c_char_p], ctypes.c_char_p),
                               ("pxq_cpu_has", [ctypes.c_char_p], ctypes.c_int),
                               ("pxq_field_offset", [ctypes.c_char_p, ctypes.c_char_p], i64),
                               ("pxq_struct_size", [ctypes.c_char_p], i64),
                               ("pxq_conv_out_size", [i64, i32, i32, i32], i64),
                               ("pxq_net_new", [], ctypes.c_void_p), ("pxq_net_free", [ctypes.c_void_p], None),
                               ("pxq_net_add", [ctypes.c_void_p, ctypes.POINTER(Step)], i32),
                               ("pxq_net_run", [ctypes.c_void_p, Buffer, i64, i64, i64, i64], ctypes.c_int),
                               ("pxq_net_value", [ctypes.c_void_p, i32, ctypes.POINTER(Value)], ctypes.c_int),
                               ("pxq_net_pool_count", [ctypes.c_void_p], i64),
                               ("pxq_net_add_node", [ctypes.c_void_p, ctypes.POINTER(Node), ctypes.c_char_p, i32], i32),
                               ("pxq_net_step_kernel", [ctypes.c_void_p, i32, ctypes.POINTER(i32), ctypes.POINTER(i32),
                                                        ctypes.POINTER(i32)], ctypes.c_int),
                               ("pxq_net_profile", [ctypes.c_void_p, i32], ctypes.c_int),
                               ("pxq_net_step_seconds", [ctypes.c_void_p, ctypes.POINTER(ctypes.c_double), i32],
                                ctypes.c_int),
                               ("pxq_net_steps", [ctypes.c_void_p], i32),
                               ("pxq_load", [ctypes.c_char_p, ctypes.POINTER(Options), ctypes.c_char_p, ctypes.c_size_t],
                                ctypes.c_void_p),
                               ("pxq_free", [ctypes.c_void_p], None),
                               ("pxq_input_shape", [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)], ctypes.c_int),
                               ("pxq_num_classes", [ctypes.c_void_p], ctypes.c_int),
                               ("pxq_class_name", [ctypes.c_void_p, ctypes.c_int], ctypes.c_char_p),
                               ("pxq_predict", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p],
                                ctypes.c_int),
                               ("pxq_logits", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p],
                                ctypes.c_int),
                               ("pxq_float_logits", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p],
                                ctypes.c_int)]:
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


lib = _load()


def available() -> bool:
    return lib is not None


def _address(name: str, value, writable: bool) -> int:
    """The data address of numpy array `value`, checked for layout and, where fixed, dtype."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(value).__name__}")
    flags = value.flags
    if not flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if writable and not flags.writeable:
        raise ValueError(f"{name} must be writable")
    want = DTYPES.get(name)
    if want is not None and value.dtype != want:
        raise ValueError(f"{name} must be {want.name}, got {value.dtype}")
    if flags.writeable and value.nbytes:  # a third of the time of value.ctypes.data, on every kernel call
        return ctypes.addressof(ctypes.c_char.from_buffer(value))
    return value.ctypes.data


def _setter(params: ctypes.Structure, name: str, keep: list):
    """A function that sets field `name` of `params` from a Python value: an array into its buffer
    (kept alive in `keep`), a string encoded, a conv kind by name, a number as it is."""
    kind = dict(type(params)._fields_).get(name)
    if kind is None:
        raise TypeError(f"{type(params).__name__} has no field {name!r}; it has "
                        f"{', '.join(field for field, _ in params._fields_)}")
    if kind is Buffer or kind is Output:
        view, last = getattr(params, name), [None]  # a view into params; the array it was last set from

        def set_buffer(value):
            if value is not last[0]:  # the executor passes the same arrays call after call
                view.data, view.bytes = _address(name, value, kind is Output), value.nbytes
                last[0] = value
        return set_buffer
    if kind in STRUCTS and kind not in (Buffer, Output):  # a nested struct: a dict of its fields
        setters = {}

        def set_struct(fields):
            for field, value in fields.items():
                if value is not None:
                    if field not in setters:
                        setters[field] = _setter(getattr(params, name), field, keep)
                    setters[field](value)
        return set_struct
    if kind is ctypes.c_char_p:
        def set_string(value):
            keep.append(value.encode())
            setattr(params, name, keep[-1])
        return set_string
    if name == "kind":
        return lambda value: setattr(params, name, CONV_KINDS[value] if isinstance(value, str) else value)
    return lambda value: setattr(params, name, value)


class Unsupported(ValueError):
    """A valid input libpixelq has no kernel for yet (PXQ_ERROR_UNSUPPORTED)."""


def _check(status: int) -> None:
    if status == OK:
        return
    message = lib.pxq_last_error().decode()
    raise MemoryError(message) if status == ERROR_MEMORY else Unsupported(message) if status == ERROR_UNSUPPORTED \
        else ValueError(message)


class Call:
    """One kernel's parameters, the fields fixed at load (weights, geometry, thresholds) set once;
    calling it with the rest (input, output, batch, ...) sets those in place and runs the kernel, so
    each call pays for its own fields only. A Call is for one thread at a time (the executor holds a
    lock); a field set by one call stays for the next, so each call passes the same set of fields.
    It holds the last array each field was set from, so that array stays valid while the field
    points at it."""

    def __init__(self, struct: type, **fixed):
        self._params, self._keep, self._setters = struct(), [], {}
        self._set(fixed)
        self._pointer = ctypes.byref(self._params)
        self._entry = getattr(lib, ENTRY[struct])

    def _set(self, fields: dict) -> None:
        for name, value in fields.items():
            if value is None:
                continue
            setter = self._setters.get(name)
            if setter is None:
                setter = self._setters[name] = _setter(self._params, name, self._keep)
            setter(value)

    def __call__(self, **fields) -> None:
        self._set(fields)
        _check(self._entry(self._pointer))


def conv(**fields) -> None:
    """pxq_conv with the ConvParams `fields` (kind by name: "planes", "lookup", "table", "dot")."""
    Call(ConvParams)(**fields)


def threshold(**fields) -> None:
    Call(ThresholdParams)(**fields)


def lookup(**fields) -> None:
    Call(LookupParams)(**fields)


def sum_pool(**fields) -> None:
    Call(PoolParams)(**fields)


def conv_out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output rows (or columns) of a conv, 0 where the window does not fit."""
    return lib.pxq_conv_out_size(size, kernel, stride, pad)


def isas() -> list:
    """The instruction sets this CPU runs the kernels with, worst to best; empty without the library."""
    return lib.pxq_isas().decode().split(",") if lib is not None else []


def dot_isa(isa: str) -> str:
    """The instructions the dot-product conv of build `isa` runs with."""
    name = lib.pxq_dot_isa(isa.encode())
    if name is None:
        raise ValueError(f"instruction set {isa} is not available on this CPU")
    return name.decode()


# Every build of the kernels, worst to best per architecture (kernels.c ISAS); isas() says which run here.
ISA_NAMES = ("portable", "avx2", "avx512vpopcntdq", "avx512bitalg", "neon", "neon-dotprod")
CPU_FEATURES = ("popcnt", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vpopcntdq", "avx512bitalg",
                "avx512vnni", "avxvnni", "asimd", "asimddp")


def cpu_features() -> dict:
    """{feature: whether this CPU has it} for the features the kernels choose by."""
    return {name: bool(lib.pxq_cpu_has(name.encode())) for name in CPU_FEATURES}


class Net:
    """A network in libpixelq (pixelq_kernels.h, "A network"): steps added in order, each reading
    earlier values (0: the images) and writing its own; `run(images)` runs them all in one call.
    `add` takes the step's fields by name, the kernel's own as dicts (conv=..., threshold=...,
    lookup=...); the library copies every array, so the caller's may go. Not for two threads at once."""

    def __init__(self):
        self._net = lib.pxq_net_new()
        if not self._net:
            raise MemoryError(lib.pxq_last_error().decode())
        self._images = None

    def __del__(self):
        if getattr(self, "_net", None) and lib is not None:
            lib.pxq_net_free(self._net)
            self._net = None

    def add(self, op: str, inputs: list, **fields) -> int:
        """Adds a step; the number of the value it writes."""
        step, keep = Step(op=STEP_OPS[op], inputs=(i32 * 2)(*(list(inputs) + [-1, -1])[:2])), []
        for name, value in fields.items():
            if value is not None:
                _setter(step, name, keep)(value)
        index = lib.pxq_net_add(self._net, ctypes.byref(step))
        if index < 0:
            raise ValueError(lib.pxq_last_error().decode())
        return index

    def add_node(self, node: Node, isa: "str | None", threads: int) -> int:
        """Adds the step that runs plan node `node` (its kernel chosen, its weights laid out in C);
        the number of the value it writes. Unsupported for a node no kernel runs yet."""
        index = lib.pxq_net_add_node(self._net, ctypes.byref(node), isa.encode() if isa else None, threads)
        if index < 0:
            _check(lib.pxq_last_status())
        return index

    def step_kernel(self, step: int) -> tuple:
        """(conv kind (-1: no conv), input planes, weight bits) of step `step` (0-based)."""
        kind, planes, bits = i32(), i32(), i32()
        _check(lib.pxq_net_step_kernel(self._net, step, ctypes.byref(kind), ctypes.byref(planes), ctypes.byref(bits)))
        return kind.value, planes.value, bits.value

    def profile(self, on: bool) -> None:
        """Time each step of the runs from now on (`step_seconds`), or stop."""
        _check(lib.pxq_net_profile(self._net, int(on)))

    def step_seconds(self) -> list:
        steps = lib.pxq_net_steps(self._net)
        seconds = (ctypes.c_double * steps)()
        _check(lib.pxq_net_step_seconds(self._net, seconds, steps))
        return list(seconds)

    def run(self, images: np.ndarray) -> None:
        """Runs every step on uint8 images (N, H, W, C), C-contiguous."""
        address = _address("images", images, False)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        self._images = images  # value 0 points at them
        _check(lib.pxq_net_run(self._net, Buffer(address, images.nbytes), *images.shape))

    def value(self, index: int) -> np.ndarray:
        """Value `index` of the last run, as a numpy view of the net's buffer: valid until the next run."""
        if index == 0:
            return self._images
        v = Value()
        _check(lib.pxq_net_value(self._net, index, ctypes.byref(v)))
        dtype, shape = VALUE_TYPES[v.type], tuple(v.shape[:v.ndim])
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.empty(shape, dtype)
        raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(v.data)
        return np.frombuffer(raw, dtype).reshape(shape)

    def pool_count(self) -> int:
        """The positions the last run's sum pool summed over."""
        return lib.pxq_net_pool_count(self._net)


class Model:
    """A .pxq file loaded by libpixelq itself (pixelq.h: pxq_load and the calls after it): read,
    checked and planned in C, no Python in the way. `LoadError` (a ValueError) says why a file was
    refused, with the library's code (`code`: ERROR_FILE, ERROR_UNSUPPORTED, ...)."""

    class LoadError(ValueError):
        def __init__(self, message: str, code: int):
            super().__init__(message)
            self.code = code

    def __init__(self, path, threads: "int | None" = None, isa: "str | None" = None):
        error = ctypes.create_string_buffer(512)
        options = Options(threads or 0, isa.encode() if isa else None)
        self._model = lib.pxq_load(str(path).encode(), ctypes.byref(options), error, len(error))
        if not self._model:
            raise self.LoadError(error.value.decode(), lib.pxq_last_status())
        shape = (ctypes.c_int * 3)()
        lib.pxq_input_shape(self._model, shape)
        self.image_shape, self.num_classes = tuple(shape), lib.pxq_num_classes(self._model)
        self.classes = [lib.pxq_class_name(self._model, k).decode() for k in range(self.num_classes)]

    def __del__(self):
        if getattr(self, "_model", None) and lib is not None:
            lib.pxq_free(self._model)
            self._model = None

    def _call(self, fn, images: np.ndarray, out: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            raise ValueError(f"images must be uint8 (N, {', '.join(map(str, self.image_shape))}), got "
                             f"{images.dtype} {images.shape}")
        _check(fn(self._model, images.ctypes.data, len(images), out.ctypes.data))
        return out

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._call(lib.pxq_predict, images, np.empty(len(images), np.int32))

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self._call(lib.pxq_logits, images, np.empty((len(images), self.num_classes), np.int32))

    def float_logits(self, images: np.ndarray) -> np.ndarray:
        return self._call(lib.pxq_float_logits, images, np.empty((len(images), self.num_classes), np.float32))
