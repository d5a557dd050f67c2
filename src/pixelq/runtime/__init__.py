"""The integer-only runtime: load a .pxq file and classify uint8 images."""
from .engine import Runtime, load

__all__ = ["Runtime", "load"]
