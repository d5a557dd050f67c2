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

    def run(self):
        super().run()
        self.build_tool()

    def build_tool(self):
        """pixelq-run, the command-line tool on libpixelq: an executable with the library's objects
        linked in, next to the library (the `pixelq-run` script runs it). Skipped, as the library is,
        without a C compiler."""
        library = Path(self.get_ext_fullpath(LIBRARY))
        if not library.exists():
            return
        ext = next(e for e in self.extensions if e.name == LIBRARY)
        try:
            objects = self.compiler.compile([str(RUNTIME / "tools/pixelq_run.c"), *ext.sources],
                                            output_dir=self.build_temp, include_dirs=ext.include_dirs,
                                            extra_postargs=[*ext.extra_compile_args, "-fPIE"])
            self.compiler.link_executable(objects, "pixelq-run", output_dir=str(library.parent / "bin"),
                                          libraries=["z", "m"], extra_postargs=openmp)
        except Exception as e:  # noqa: BLE001 - distutils raises its own error types; the library still works
            print(f"warning: pixelq-run was not built ({e})")


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            LIBRARY,
            sources=[str(RUNTIME / "csrc" / name) for name in ("kernels.c", "net.c", "steps.c", "loader.c", "vendor/sha256.c")],
            include_dirs=[str(RUNTIME / "include")],
            depends=[*map(str, (RUNTIME / "include").glob("*.h")), *map(str, (RUNTIME / "csrc").glob("**/*.h"))],
            extra_compile_args=["-O3", "-std=c11", "-fvisibility=hidden", *openmp],
            extra_link_args=openmp,
            libraries=["z"],  # zlib: the manifest is zlib-compressed
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
