"""The integer-only runtime: load a .pxq file and classify uint8 images."""
from .clib import get_include, get_library
from .engine import Runtime, load
from .fast import available_isas

__all__ = ["Runtime", "available_isas", "get_include", "get_library", "load"]
