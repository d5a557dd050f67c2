"""What the experiment scripts share: filling one marked section of README.md with text rendered
from JSON, and running the pixelq CLI."""
import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def load(path: Path):
    """The JSON at `path`, or None when it is not there (yet)."""
    return json.loads(path.read_text()) if path.is_file() else None


def fill(start: str, end: str, section: str, readme: Path = README) -> None:
    """Replace README's (or another page's, `readme`) text from the `start` marker through the `end`
    marker with `section`, which begins with `start` and ends with `end`."""
    text = readme.read_text()
    if start not in text:
        raise SystemExit(f"{readme.name} has no {start} ... {end} section to fill")
    readme.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: section, text, flags=re.S))


def run_pixelq(*args) -> str:
    """`pixelq ARGS...` in a subprocess (this interpreter's pixelq); its stdout."""
    return subprocess.run([sys.executable, "-m", "pixelq.cli", *map(str, args)], check=True, capture_output=True,
                          text=True).stdout
