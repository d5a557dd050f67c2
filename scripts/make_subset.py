"""Re-create the embedded data: a stratified CIFAR-10-JPEG subset, as a .tar.gz of image folders.

    python scripts/make_subset.py SOURCE.tar.gz src/pixelq/data/assets/cifar10-jpeg-subset.tar.gz

Takes the first N_TRAIN / N_TEST files (by name) of every class, keeping the original JPEG bytes.
"""
import argparse
import io
import tarfile
from collections import defaultdict
from pathlib import PurePosixPath


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("dest")
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=100)
    args = ap.parse_args()
    quota = {"train": args.train_per_class, "test": args.test_per_class}
    picked = defaultdict(list)
    with tarfile.open(args.source) as src:
        members = sorted((m for m in src if m.isfile()), key=lambda m: m.name)
        for m in members:
            parts = PurePosixPath(m.name).parts
            split, cls = parts[-3], parts[-2]
            if split in quota and len(picked[split, cls]) < quota[split]:
                picked[split, cls].append((f"cifar10-jpeg-subset/{split}/{cls}/{parts[-1]}", src.extractfile(m).read()))
    with tarfile.open(args.dest, "w:gz") as dst:
        for key in sorted(picked):
            for name, data in picked[key]:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 0
                dst.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
