"""`python -m pixelq.runtime.flags`: the compiler flags that build a C program against the installed
libpixelq (header folder, library, and a run path so the program finds the library), e.g.

    cc app.c -o app $(python -m pixelq.runtime.flags)
"""
from pathlib import Path

from .clib import get_include, get_library


def flags() -> str:
    library = Path(get_library())
    return f"-I{get_include()} {library} -Wl,-rpath,{library.parent}"


if __name__ == "__main__":
    print(flags())
