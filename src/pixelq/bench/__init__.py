"""Benchmarks: commands that measure, as ratios against a baseline timed in the same run."""
from .training import data_throughput, train_step_throughput

__all__ = ["data_throughput", "train_step_throughput"]
