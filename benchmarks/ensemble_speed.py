"""Ensemble selection over 100 kept trials of 10,000 x 10 float16 probabilities: its wall time
(target: <= 2 s), against one scoring pass over every candidate in the same run (the least any
greedy step must do), so the ratio says how many such passes the selection costs. Also the
default path of `mnist-hpo ensemble`: the size chosen on held-out halves of validation
(selection.choose_size: 10 selections on 5,000 images), then the selection itself.

The trials are synthetic but shaped like a study's: each one about 98.8-99.3% accurate, with
errors that overlap (0.8% hard images most trials get wrong the same way, plus its own).

    .venv/bin/python benchmarks/ensemble_speed.py [--trials 100] [--size 25] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from common import machine
from mnist_hpo.outputs import selection

N, C = 10_000, 10


def library(trials: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, N)
    hard = rng.random(N) < 0.008  # images most trials get wrong, and the same way
    shared = (labels + rng.integers(1, C, N)) % C
    probs = []
    for _ in range(trials):
        own = rng.random(N) < rng.uniform(0.002, 0.008)
        wrong = (hard & (rng.random(N) < 0.7)) | own
        logits = rng.normal(0, 1, (N, C)).astype(np.float32)
        target = np.where(hard & wrong, shared, np.where(wrong, (labels + 1) % C, labels))
        logits[np.arange(N), target] += rng.uniform(4, 8)
        p = np.exp(logits - logits.max(1, keepdims=True))
        probs.append((p / p.sum(1, keepdims=True)).astype(np.float16))
    return probs, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--size", type=int, default=selection.SIZE)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    probs, labels = library(args.trials)
    print(f"{machine()}; numpy {np.__version__}")
    best = max(selection.accuracy(p, labels) for p in probs)
    walls, passes, chosen_walls = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        chosen = selection.select(probs, labels, size=args.size)
        walls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sized = selection.choose_size(probs, labels, max_size=args.size)
        selection.select(probs, labels, size=args.size)
        chosen_walls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stack = np.stack([p.astype(np.float32) for p in probs])
        (stack.argmax(axis=2) == labels).sum(axis=1)
        passes.append(time.perf_counter() - t0)
    wall, one = statistics.median(walls), statistics.median(passes)
    print(
        f"selection of {args.size} picks over {args.trials} trials of {N:,} x {C} float16: "
        f"{wall:.2f} s (median of {args.repeats}; target <= 2 s)"
    )
    print(f"one scoring pass over every candidate: {one:.3f} s; ratio {wall / one:.1f}")
    auto = statistics.median(chosen_walls)
    print(
        f"with the size chosen on held-out halves (the default): {auto:.2f} s, "
        f"{auto / wall:.1f}x the fixed-size selection (chose {sized.size} picks; target <= 2 s)"
    )
    print(
        f"validation: best single {100 * best:.2f}%, ensemble {100 * chosen.val_accuracy[-1]:.2f}%"
        f" ({len(chosen.weights)} distinct trials)"
    )


if __name__ == "__main__":
    main()
