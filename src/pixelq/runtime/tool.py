"""`pixelq-run`: the C command-line tool on libpixelq (runtime/tools/pixelq_run.c), built at install
next to the library. This script only finds it and hands over (the tool itself needs no Python:
`make tool` builds it alone); `pixelq-run --help` says what it takes."""
from __future__ import annotations

import os
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent / "bin" / "pixelq-run"


def main() -> None:
    if not TOOL.is_file():
        print("pixelq-run: error: the C tool was not built (no C compiler or zlib headers when pixelq was "
              "installed); install a compiler and zlib1g-dev, then reinstall pixelq", file=sys.stderr)
        sys.exit(1)
    os.execv(TOOL, [str(TOOL), *sys.argv[1:]])
