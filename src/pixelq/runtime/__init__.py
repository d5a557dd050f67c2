"""The integer-only runtime: load a .pxq file and classify uint8 images."""
from .engine import Runtime, load
from .fast import available_isas

__all__ = ["Runtime", "available_isas", "load"]
