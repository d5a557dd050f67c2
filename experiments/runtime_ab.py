"""The runtime's speed before and after a change, timed in turns: the zoo models' logits() at batch 1
and 64, on 1 and 2 threads, in this tree and in another checkout (built in place: `python setup.py
build_ext --inplace` there), each run in its own process, ROUNDS rounds, the best of each.

    git worktree add /tmp/before <commit> && (cd /tmp/before && python setup.py build_ext --inplace)
    python experiments/runtime_ab.py /tmp/before [--rounds 3]

Trainings on this machine should be paused meanwhile (SIGSTOP): the numbers are wall times.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet20-w1a2-pe-qlast", "resnet20-w1a2-pe-qlast-r4s")
TIMING = """
import json, time
import numpy as np
import pixelq.runtime as rt
out = {}
for name in %r:
    for threads in (1, 2):
        r = rt.load("zoo:" + name, threads=threads)
        for batch in (1, 64):
            x = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
            r.logits(x)
            calls, best = (200 if batch == 1 else 20), float("inf")
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(calls):
                    r.logits(x)
                best = min(best, (time.perf_counter() - start) / calls)
            out[f"{name} t{threads} b{batch}"] = best
print(json.dumps(out))
""" % (MODELS,)


def timed(tree: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", TIMING], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(tree / "src"), "PATH": ""})
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the other checkout, built in place")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best = {"before": {}, "after": {}}
    for _ in range(args.rounds):
        for side, tree in (("before", args.before), ("after", ROOT)):
            for key, seconds in timed(tree).items():
                best[side][key] = min(best[side].get(key, float("inf")), seconds)
    for key in best["after"]:
        before, after = best["before"][key], best["after"][key]
        print(f"{key:40s} before {1e3 * before:8.3f} ms  after {1e3 * after:8.3f} ms  after/before {after / before:5.2f}")


if __name__ == "__main__":
    main()
