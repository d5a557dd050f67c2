"""`@register_model` beside each model function, and `create_model(name, **kwargs)`."""
from __future__ import annotations

from torch import nn

from ..registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
register_model = MODELS.register


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model `name`; the CLI and checkpoints only ever call this."""
    return MODELS.get(name)(**kwargs)


def list_models() -> list[str]:
    return MODELS.names()
