"""Builds the optional C code: libpixelq (the integer runtime's kernels, a plain C library that ctypes
loads and C programs link) and the training kernels (a Python extension). Without a C compiler pixelq
still installs; the runtime falls back to its numpy reference executor and training to PyTorch ops."""
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
LIBRARY = "pixelq.runtime.libpixelq"
RUNTIME = Path("src/pixelq/runtime")


class BuildExt(build_ext):
    """libpixelq holds no Python: it is built as libpixelq.so (the name a linker's -lpixelq finds),
    exporting its own functions rather than a module's init."""

    def get_ext_filename(self, fullname):
        if fullname.split(".")[-1] == LIBRARY.split(".")[-1]:  # called with the full name and with the last part
            return str(Path(*fullname.split("."))) + ".so"
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):
        return [] if ext.name == LIBRARY else super().get_export_symbols(ext)


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            LIBRARY,
            sources=[str(RUNTIME / "csrc/kernels.c"), str(RUNTIME / "csrc/net.c")],
            include_dirs=[str(RUNTIME / "include")],
            depends=[str(RUNTIME / "include/pixelq_kernels.h"), *map(str, (RUNTIME / "csrc").glob("*.h"))],
            extra_compile_args=["-O3", "-std=c11", *openmp],
            extra_link_args=openmp,
            optional=True,
        ),
        Extension(
            "pixelq._train_kernels",
            sources=["src/pixelq/csrc/train_kernels.c"],
            include_dirs=["src/pixelq/csrc"],
            depends=["src/pixelq/csrc/buffers.h"],
            extra_compile_args=["-O3", "-std=c11", *openmp],
            extra_link_args=openmp,
            optional=True,
        ),
    ]
)
