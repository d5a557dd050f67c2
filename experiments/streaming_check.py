"""Streaming against in-memory training on real image folders: the same top-1 after one epoch, and
peak memory that grows with the data set in memory but not when streaming.

    python experiments/streaming_check.py FOLDERS [--out results/streaming/check.json]

FOLDERS is an image-folder tree such as the extracted CIFAR-10-JPEG (`tar -xzf cifar10-jpeg.tar.gz`).
Each run is a `pixelq train` subprocess (1 epoch, seed 0, 1 thread); its peak resident memory is
read from the kernel's accounting of that process (wait4). The smaller data set is every fifth
train image of each class, linked (not copied) into a second tree.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIXELQ = [sys.executable, "-m", "pixelq.cli"]


def linked_fifth(src: Path, dst: Path) -> Path:
    """dst/{train,test}/<class>/...: every fifth train image of each class, all test images (symlinks)."""
    for split in ("train", "test"):
        for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            (dst / split / cls.name).mkdir(parents=True, exist_ok=True)
            files = sorted(cls.iterdir())
            for f in files[::5] if split == "train" else files:
                (dst / split / cls.name / f.name).symlink_to(f.resolve())
    return dst


def train_run(folders: Path, out: Path, stream: bool, cache: Path) -> dict:
    cmd = [*PIXELQ, "train", "--data", str(folders), "--epochs", "1", "--seed", "0", "--threads", "1", "--quiet",
           "--out", str(out)] + (["--stream", "--workers", "2"] if stream else [])
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}  # a cold decode cache for every in-memory run
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    output = proc.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"stream": stream, "train_images": metrics["train_size"], "top1": metrics["top1"],
            "peak_rss_mib": usage.ru_maxrss / 1024, "wall_s": time.perf_counter() - t0, "printed": output.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "streaming" / "check.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = linked_fifth(args.folders, tmp / "fifth")
        runs = {}
        for label, folders in (("fifth", small), ("full", args.folders)):
            for stream in (False, True):
                name = f"{label}-{'stream' if stream else 'memory'}"
                runs[name] = train_run(folders, tmp / name, stream, tmp / f"cache-{name}")
                print(name, runs[name], flush=True)
    result = {
        "runs": runs,
        "same_top1_full": runs["full-stream"]["top1"] == runs["full-memory"]["top1"],
        "same_top1_fifth": runs["fifth-stream"]["top1"] == runs["fifth-memory"]["top1"],
        "memory_growth_mib": runs["full-memory"]["peak_rss_mib"] - runs["fifth-memory"]["peak_rss_mib"],
        "stream_growth_mib": runs["full-stream"]["peak_rss_mib"] - runs["fifth-stream"]["peak_rss_mib"],
        "note": "peak RSS of the training process itself; streaming's decode workers are separate processes "
                "holding a batch or two each",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
