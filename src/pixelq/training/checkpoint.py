"""Self-describing checkpoints: tensors plus JSON, never pickled code; load with weights_only=True."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models import create_model

FORMAT = "pixelq-checkpoint"
VERSION = 1


def save_checkpoint(path: "str | os.PathLike", *, model_name: str, model_kwargs: dict, model: nn.Module,
                    optimizer: "torch.optim.Optimizer | None" = None, epoch: int = 0, config: "dict | None" = None,
                    history: "list | None" = None, classes: "list | None" = None) -> None:
    """Write atomically (temp file + rename), so a run killed mid-write keeps the previous one."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_name,
        "model_kwargs": json.dumps(model_kwargs),
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "config": json.dumps(config or {}),
        "history": json.dumps(history or []),
        "classes": json.dumps(classes or []),
        "torch_version": str(torch.__version__),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: "str | os.PathLike") -> dict:
    """The checkpoint as a dict, with its JSON fields decoded. CheckpointError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e}); "
                              "the file is corrupt, truncated or not a pixelq checkpoint") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pixelq checkpoint")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {raw.get('version')}, this pixelq reads version {VERSION}")
    for key in ("model_kwargs", "config", "history", "classes"):
        raw[key] = json.loads(raw[key])
    return raw


def model_from_checkpoint(ckpt: dict, path: str = "checkpoint") -> nn.Module:
    try:
        model = create_model(ckpt["model"], **ckpt["model_kwargs"])
        model.load_state_dict(ckpt["state_dict"])
    except (ConfigError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: the weights do not fit model {ckpt['model']!r} ({e})") from e
    return model


def load_checkpoint(path: "str | os.PathLike") -> nn.Module:
    """The model saved at `path`, rebuilt with `create_model`, weights loaded, in eval mode."""
    return model_from_checkpoint(read_checkpoint(path), str(path)).eval()
