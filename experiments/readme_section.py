"""What the experiment scripts share: filling one marked section of a docs page (or README.md) with
text rendered from JSON, and running the pixelq CLI."""
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS_PAGE = ROOT / "docs" / "results.md"  # the generated tables of trained networks
BENCHMARKS_PAGE = ROOT / "docs" / "benchmarks.md"  # the generated speed tables


def load(path: Path):
    """The JSON at `path`, or None when it is not there (yet)."""
    return json.loads(path.read_text()) if path.is_file() else None


def fill(page: Path, start: str, end: str, section: str) -> None:
    """Replace `page`'s text from the `start` marker through the `end` marker with `section`, which
    begins with `start` and ends with `end`."""
    text = page.read_text()
    if start not in text:
        raise SystemExit(f"{page.name} has no {start} ... {end} section to fill")
    page.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: section, text, flags=re.S))


def run_pixelq(*args) -> str:
    """`pixelq ARGS...` in a subprocess (this interpreter's pixelq); its stdout."""
    return subprocess.run([sys.executable, "-m", "pixelq.cli", *map(str, args)], check=True, capture_output=True,
                          text=True).stdout
