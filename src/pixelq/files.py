"""Writing files so that a failure never leaves a half-written file or a stray temp file behind."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable

from .errors import PixelqError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: setting it to read it would briefly change it for every thread


def atomic_write(path: "str | os.PathLike", write: Callable[[Path], None], error: type = PixelqError,
                 what: str = "file") -> None:
    """Call `write(tmp)` on a temp file beside `path`, then rename it onto `path`.

    A reader sees the old file or the new one, never a mix. On any failure (a full disk, a
    read-only folder, `path` being a folder) the temp file is removed, the old file is kept, and
    `error` is raised with a message that says so. The temp name is fixed per target, so even a
    killed writer leaves at most one stray file, which the next write replaces.
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a folder; give a file name for the {what}")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise error(f"{path}: cannot write the {what}: {blocking} is a file, not a folder")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would: some writers (safetensors) create files 0600
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # under a file, even the temp name cannot be looked at
            tmp.unlink(missing_ok=True)
        kept = " (the previous one is kept)" if path.exists() else ""
        raise error(f"{path}: cannot write the {what}{kept}: {e.strerror or e}") from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: "str | os.PathLike", obj, error: type = PixelqError, indent: "int | None" = 2) -> None:
    """`obj` as standard JSON (NaN and infinity are refused, not written), atomically."""
    text = json.dumps(obj, indent=indent, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text), error, "JSON file")


def write_jsonl(path: "str | os.PathLike", records: list, error: type = PixelqError) -> None:
    """One standard-JSON line per record, atomically."""
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
    atomic_write(path, lambda tmp: tmp.write_text(text), error, "JSON lines file")
