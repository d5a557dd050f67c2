"""libpixelq's speed before and after a change: the two builds loaded side by side in one process
(ctypes, each its own copy of the library) and their pxq_logits called in turns, the zoo models at
batch 1 and 64, on 1 and 2 threads, the best of ROUNDS calls each. Taking turns call by call, a slow
spell of this shared machine hits both builds alike; timed in processes of their own, one after the
other, the same two builds have read 1.5x apart.

    git worktree add /tmp/before <commit> && (cd /tmp/before && python setup.py build_ext --inplace)
    python experiments/runtime_ab.py /tmp/before [--rounds 30] [--isa avx2]

Each build reads the zoo files of its own tree (the file format may differ between them). Trainings
on this machine should be paused meanwhile (SIGSTOP): the numbers are wall times.
"""
import argparse
import ctypes
import time
from pathlib import Path

import numpy as np

from pixelq.runtime.clib import Options  # pxq_options, the same in both builds

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet20-w1a2-pe-qlast", "resnet20-w1a2-pe-qlast-r4s")


class Build:
    """One tree's libpixelq, loaded on its own."""

    def __init__(self, tree: Path):
        self.tree = tree
        self.lib = ctypes.CDLL(str(tree / "src" / "pixelq" / "runtime" / "libpixelq.so"), mode=ctypes.RTLD_LOCAL)
        self.lib.pxq_load.restype = ctypes.c_void_p
        self.lib.pxq_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(Options), ctypes.c_char_p, ctypes.c_size_t]
        self.lib.pxq_num_classes.argtypes = [ctypes.c_void_p]
        self.lib.pxq_logits.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]

    def model(self, name: str, threads: int, isa: "str | None"):
        """A call that runs the model's pxq_logits on `images` (uint8 NHWC)."""
        error = ctypes.create_string_buffer(512)
        options = Options(threads, isa.encode() if isa else None)
        path = self.tree / "src" / "pixelq" / "zoo" / f"{name}.pxq"
        m = self.lib.pxq_load(str(path).encode(), ctypes.byref(options), error, len(error))
        if not m:
            raise SystemExit(f"{self.tree}: {error.value.decode()}")
        classes = self.lib.pxq_num_classes(m)

        def run(images: np.ndarray) -> None:
            out = np.empty((len(images), classes), np.int32)
            if self.lib.pxq_logits(m, images.ctypes.data, len(images), out.ctypes.data) != 0:
                raise SystemExit(f"{self.tree}: pxq_logits failed")
        return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the other checkout, built in place")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--isa", help="the instruction set both builds run (default: the best this CPU has)")
    args = parser.parse_args()
    builds = {"before": Build(args.before), "after": Build(ROOT)}
    for name in MODELS:
        for threads in (1, 2):
            runs = {side: b.model(name, threads, args.isa) for side, b in builds.items()}
            for batch in (1, 64):
                images = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
                best = {side: float("inf") for side in runs}
                for _ in range(args.rounds):
                    for side, run in runs.items():
                        run(images)  # untimed: the caches hold this build's data
                        start = time.perf_counter()
                        run(images)
                        best[side] = min(best[side], time.perf_counter() - start)
                before, after = best["before"], best["after"]
                print(f"{name} t{threads} b{batch:<3d} before {1e3 * before:8.3f} ms  after {1e3 * after:8.3f} ms  "
                      f"after/before {after / before:5.3f}")


if __name__ == "__main__":
    main()
