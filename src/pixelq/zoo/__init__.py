"""The model zoo: trained integer models shipped inside the package as .pxq files, each with its
measured accuracy, cost and speed in `registry.json` (written by `experiments/build_zoo.py` from the
runs in results/). Anything that reads a .pxq file takes "zoo:NAME" instead of a path.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import ConfigError

PREFIX = "zoo:"


def _folder():
    return resources.files("pixelq.zoo")


def list_zoo() -> dict:
    """{name: registry entry} of every shipped model."""
    return json.loads((_folder() / "registry.json").read_text())["models"]


def zoo_path(name: str) -> Path:
    """The installed .pxq file of zoo model `name`; ConfigError naming the shipped ones if unknown."""
    models = list_zoo()
    if name not in models:
        raise ConfigError(f"unknown zoo model {name!r}; the zoo holds: {', '.join(models)} (`pixelq zoo` lists them)")
    return Path(str(_folder() / models[name]["file"]))


def resolve(path) -> Path:
    """"zoo:NAME" as the shipped file's path; anything else as the path it is."""
    text = str(path)
    return zoo_path(text[len(PREFIX):]) if text.startswith(PREFIX) else Path(path)
