"""Builds the optional C kernels: the integer runtime's and the training's. Without a C compiler pixelq
still installs; the runtime falls back to its numpy reference executor and training to PyTorch ops."""
import sys

from setuptools import Extension, setup

openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
shared = ["src/pixelq/csrc"]  # buffers.h, included by both
setup(
    ext_modules=[
        Extension(
            "pixelq.runtime._kernels",
            sources=["src/pixelq/runtime/csrc/kernels.c"],
            include_dirs=shared,
            depends=["src/pixelq/csrc/buffers.h", *(f"src/pixelq/runtime/csrc/{name}.h"
                     for name in ("conv_avx2", "conv_avx512", "conv_lanes", "dot_vnni", "table_body"))],
            extra_compile_args=["-O3", "-std=c11", *openmp],
            extra_link_args=openmp,
            optional=True,
        ),
        Extension(
            "pixelq._train_kernels",
            sources=["src/pixelq/csrc/train_kernels.c"],
            include_dirs=shared,
            depends=["src/pixelq/csrc/buffers.h"],
            extra_compile_args=["-O3", "-std=c11", *openmp],
            extra_link_args=openmp,
            optional=True,
        ),
    ]
)
