"""Benchmarks: commands that measure, as ratios against a baseline timed in the same run."""
from .training import data_throughput, decode_throughput, train_step_throughput

__all__ = ["data_throughput", "decode_throughput", "run_benchmark", "train_step_throughput"]


def run_benchmark(*args, **kwargs) -> dict:
    """See `pixelq.bench.inference.run_benchmark` (imported lazily: it needs onnx and onnxruntime)."""
    from .inference import run_benchmark as run

    return run(*args, **kwargs)
