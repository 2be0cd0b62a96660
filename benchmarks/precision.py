"""float32 against bfloat16 autocast: epoch time and final accuracy of full trainings on real MNIST.

For each family, the first [[enqueue]] configuration of its shipped study (studies/FAMILY.toml,
the tuned default) is trained for the study's epochs from the same seeds in both precisions, on
the same tensors and thread count. Prints validation and test accuracy per seed, their means,
the mean training time per epoch and the speed-up. `work --precision auto` picks bf16 only where
this shows no accuracy cost on hardware with native bfloat16 (see device.bf16_native).

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/precision.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from common import machine, mnist
from mnist_hpo.ml.device import PRECISIONS, bf16_native
from mnist_hpo.ml.space import Fixed
from mnist_hpo.ml.train import accuracy, train
from mnist_hpo.search.build import build_trial
from mnist_hpo.search.spec_files import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="perceptron,simple_mlp,deep_mlp,cnn")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: a --jobs 2 worker)"
    )
    parser.add_argument("--epochs", type=int, default=0, help="override the study's epochs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = mnist()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"machine: {machine()}; native bf16: {bf16_native(data.device)}")
    print(f"{'family':<11} {'precision':<9} {'seed':>4} {'s/epoch':>8} {'val':>7} {'test':>7}")
    summary = []
    for family in args.families.split(","):
        spec = load_spec(family)
        params = spec.enqueue[0]
        runs: dict[str, list[tuple[float, float, float]]] = {p: [] for p in PRECISIONS}
        for seed in seeds:
            for precision in PRECISIONS:
                built = build_trial(spec, Fixed(params), seed, data.device)  # as a trial does
                model, cfg = built.model, built.cfg
                if args.epochs:
                    cfg = replace(cfg, epochs=args.epochs)
                t0 = time.perf_counter()
                result = train(model, cfg, data, precision=precision)
                wall = time.perf_counter() - t0
                per_epoch = sum(result.epoch_seconds) / len(result.epoch_seconds)
                test = accuracy(model, data.test_x, data.test_y)
                runs[precision].append((per_epoch, result.val_accuracy, test))
                print(
                    f"{family:<11} {precision:<9} {seed:>4} {per_epoch:>8.2f} "
                    f"{result.val_accuracy:>7.2%} {test:>7.2%}"
                    f"  ({cfg.epochs} epochs, {wall:.0f} s)",
                    flush=True,
                )
        summary.append((family, params, runs))
    print(f"\nmeans over seeds {args.seeds}")
    print(
        f"{'family':<11} {'fp32 s/ep':>9} {'bf16 s/ep':>9} {'speed-up':>8} "
        f"{'fp32 val':>8} {'bf16 val':>8} {'fp32 test':>9} {'bf16 test':>9} {'test diff':>9}"
    )
    for family, _, runs in summary:
        f, b = runs["fp32"], runs["bf16"]

        def mean(rows: list[tuple[float, float, float]], k: int) -> float:
            return statistics.mean(r[k] for r in rows)

        print(
            f"{family:<11} {mean(f, 0):>9.2f} {mean(b, 0):>9.2f} {mean(f, 0) / mean(b, 0):>7.2f}x "
            f"{mean(f, 1):>8.2%} {mean(b, 1):>8.2%} {mean(f, 2):>9.2%} {mean(b, 2):>9.2%} "
            f"{100 * (mean(b, 2) - mean(f, 2)):>+8.2f}pt"
        )


if __name__ == "__main__":
    main()
