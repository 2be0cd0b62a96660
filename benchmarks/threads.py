"""Two single-thread worker processes against one two-thread process, for the same work.

The work is two trainings (one epoch each, different seeds) of one model: run as two processes
with 1 torch thread each at the same time (what `mnist-hpo work --jobs 2` does on 2 cores), or
one after the other in one process with 2 threads (`--jobs 1`). Small-batch training is mostly
per-operation overhead that a second thread cannot share, so separate processes win.

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/threads.py \
        [--families deep_mlp,cnn] [--batch 64] [--limit 0]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from multiprocessing.synchronize import Barrier

import torch

from common import family_models, mnist
from mnist_hpo.ml.data import Data
from mnist_hpo.ml.train import TrainConfig, prepare, train


def trainings(family: str, seeds: list[int], threads: int, batch: int, limit: int) -> list[float]:
    """Train one epoch per seed; returns the validation accuracies."""
    torch.set_num_threads(threads)
    data = mnist()
    if limit:
        data = Data(data.train_x[:limit], data.train_y[:limit], *_eval(data))
    accs = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = prepare(family_models()[family], data.device)
        cfg = TrainConfig(1, batch, "adam", 1e-3, 0.0, 0.0, "cross_entropy", "constant", seed)
        accs.append(train(model, cfg, data).val_accuracy)
    return accs


def _eval(d: Data) -> tuple[torch.Tensor, ...]:
    return d.val_x, d.val_y, d.test_x, d.test_y


def child(
    family: str, seed: int, batch: int, limit: int, barrier: Barrier, out: mp.Queue[object]
) -> None:
    torch.set_num_threads(1)
    mnist()  # load before the barrier: only training is timed
    barrier.wait()
    t0 = time.perf_counter()
    acc = trainings(family, [seed], 1, batch, limit)[0]
    out.put((time.perf_counter() - t0, acc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="deep_mlp,cnn")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--limit", type=int, default=0, help="training images (0 = all 50,000)")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    print(f"one epoch per training, batch {args.batch}, two trainings per configuration")
    print(
        f"{'family':<10} {'2 procs x 1 thread':>19} {'1 proc x 2 threads':>19} {'ratio':>6}  "
        "val acc"
    )
    for family in args.families.split(","):
        barrier = ctx.Barrier(3)
        out: mp.Queue[object] = ctx.Queue()
        procs = [
            ctx.Process(target=child, args=(family, s, args.batch, args.limit, barrier, out))
            for s in (0, 1)
        ]
        for p in procs:
            p.start()
        barrier.wait()
        t0 = time.perf_counter()
        results = [out.get() for _ in procs]
        parallel = time.perf_counter() - t0
        for p in procs:
            p.join()
        # The same two trainings in this process, one after the other, on 2 threads.
        mnist()
        t0 = time.perf_counter()
        accs = trainings(family, [0, 1], 2, args.batch, args.limit)
        serial = time.perf_counter() - t0
        par_accs = [r[1] for r in results]  # type: ignore[index]
        print(
            f"{family:<10} {parallel:>18.1f}s {serial:>18.1f}s {serial / parallel:>5.2f}x  "
            f"{' '.join(f'{a:.2%}' for a in par_accs)} | {' '.join(f'{a:.2%}' for a in accs)}"
        )


if __name__ == "__main__":
    main()
