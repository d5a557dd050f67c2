"""Self-describing checkpoints: tensors plus JSON, never pickled code; load with weights_only=True."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..files import atomic_write
from ..models import create_model

FORMAT = "pixelq-checkpoint"
VERSION = 1
JSON_FIELDS = ("model_kwargs", "config", "history", "classes", "data", "init")
REQUIRED = ("model", "state_dict", "optimizer", "epoch", "model_kwargs", "config", "history", "classes")


def save_checkpoint(path: "str | os.PathLike", *, model_name: str, model_kwargs: dict, model: nn.Module,
                    optimizer: "torch.optim.Optimizer | None" = None, epoch: int = 0, config: "dict | None" = None,
                    history: "list | None" = None, classes: "list | None" = None,
                    data: "dict | None" = None, init: "dict | None" = None, averaged: "dict | None" = None) -> None:
    """Write atomically (temp file + rename), so a run killed mid-write keeps the previous one, and a
    failed write (a full disk) leaves no temp file and raises CheckpointError.

    `classes` are the class names the logits index; `data` describes the data trained on
    (`DataSplits.identity()`: image shape and a content fingerprint), so eval and resume can check it;
    `init` says what the run started from (`--init`), if anything. With a weight average (`--ema`),
    `model` is the average (what eval, export and --init read) and `averaged` holds what resuming
    needs besides: {"trained": the weights the optimizer steps, "steps": updates averaged}.
    """
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
        "data": json.dumps(data or {}),
        "init": json.dumps(init),
        "torch_version": str(torch.__version__),
        **({"averaged": averaged} if averaged is not None else {}),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp), CheckpointError, "checkpoint")


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
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: not a complete pixelq checkpoint (missing {', '.join(missing)})")
    raw.setdefault("data", "{}")  # written before checkpoints described their data and start
    raw.setdefault("init", "null")
    try:
        for key in JSON_FIELDS:
            raw[key] = json.loads(raw[key])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the checkpoint's {key!r} field is not valid JSON ({e})") from e
    problems = _field_problems(raw)
    if problems:
        raise CheckpointError(f"{path}: not a valid pixelq checkpoint ({'; '.join(problems)})")
    return raw


def _field_problems(raw: dict) -> list:
    """What is wrong with a decoded checkpoint's fields, field by field (a file edited by hand)."""
    problems = []
    for key, kind in (("model", str), ("model_kwargs", dict), ("config", dict), ("history", list), ("classes", list),
                      ("data", dict), ("state_dict", dict)):
        if not isinstance(raw[key], kind):
            problems.append(f"{key} must be a {kind.__name__}, got {type(raw[key]).__name__}")
    if isinstance(raw["epoch"], bool) or not isinstance(raw["epoch"], int) or raw["epoch"] < 0:
        problems.append(f"epoch must be an integer >= 0, got {raw['epoch']!r}")
    if isinstance(raw["classes"], list) and not all(isinstance(c, str) for c in raw["classes"]):
        problems.append("classes must be names (text)")
    shape = raw["data"].get("image_shape") if isinstance(raw["data"], dict) else None
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        problems.append(f"data.image_shape must be [H, W, C] of positive integers, got {shape!r}")
    return problems


def model_from_checkpoint(ckpt: dict, path: str = "checkpoint") -> nn.Module:
    """The registered model the checkpoint names, with its weights. CheckpointError if they do not fit
    it, or if any is NaN or infinite (a diverged run: every answer it gave would be meaningless)."""
    try:
        model = create_model(ckpt["model"], **ckpt["model_kwargs"])
        model.load_state_dict(ckpt["state_dict"])
    except (ConfigError, RuntimeError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: the weights do not fit model {ckpt['model']!r} ({e})") from e
    check_finite(ckpt["state_dict"], path)
    return model


def check_finite(state_dict: dict, path: str) -> None:
    """CheckpointError naming the tensors of `state_dict` that hold NaN or infinity (a diverged run)."""
    bad = [name for name, t in state_dict.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{path}: holds non-finite values (NaN or infinity) in {', '.join(bad[:3])}"
                              f"{' and more' if len(bad) > 3 else ''}; the run that wrote it diverged. Use a "
                              "checkpoint from before it diverged")


def load_checkpoint(path: "str | os.PathLike") -> nn.Module:
    """The model saved at `path`, rebuilt with `create_model`, weights loaded, in eval mode."""
    return model_from_checkpoint(read_checkpoint(path), str(path)).eval()


def save_weights_only(source: "str | os.PathLike", path: "str | os.PathLike") -> None:
    """A finished run's checkpoint `source` written to `path` without what only resuming needs (the
    optimizer state, a weight average's trained weights): what eval, export and `--init` read."""
    ckpt = read_checkpoint(source)
    save_checkpoint(path, model_name=ckpt["model"], model_kwargs=ckpt["model_kwargs"], model=model_from_checkpoint(ckpt),
                    epoch=ckpt["epoch"], config=ckpt["config"], history=ckpt["history"], classes=ckpt["classes"],
                    data=ckpt["data"], init=ckpt["init"])

