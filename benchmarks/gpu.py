"""GPU benchmark, ready for a machine with one: epoch time per family, and trials/hour with 1 vs 4
workers sharing the GPU.

1. Epoch time: each family (the course report's configuration) trains one epoch of real MNIST
   with the data resident on the device, at batch sizes the search samples, in float32 and with
   bfloat16 autocast (--amp), printing validation accuracy beside each time. mnist-hpo trains in
   float32; bf16 is only worth switching on where this shows no accuracy cost.
2. Trials/hour: a short real study (studies/FAMILY.toml with --trials/--epochs) run by
   `mnist-hpo work --jobs 1` and `--jobs 4 --device DEVICE`: several worker processes share one
   GPU, each keeping its own copy of MNIST there (~200 MB).

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/gpu.py --device cuda
    .venv/bin/python benchmarks/gpu.py --dry      # seconds on a CPU: checks the script runs

--dry runs everything on tiny data on the CPU (or --device) so the script can be checked on a
machine without a GPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from common import family_models, mnist
from mnist_hpo.ml.data import Data
from mnist_hpo.ml.device import resolve_device
from mnist_hpo.ml.train import TrainConfig, prepare, train
from time_to_accuracy import toml_value

ROOT = Path(__file__).resolve().parents[1]


def epoch_times(data: Data, batches: list[int], amp: bool) -> None:
    device = data.device
    print(f"\n1. one epoch of {len(data.train_x):,} images on {device}")
    print(
        f"{'family':<11} {'batch':>5} {'precision':<9} {'s/epoch':>8} {'samples/s':>10} {'val':>7}"
    )
    for family in family_models():
        for batch in batches:
            for precision in ("fp32", "bf16") if amp else ("fp32",):
                torch.manual_seed(0)
                model = prepare(family_models()[family], device)
                cfg = TrainConfig(1, batch, "adam", 1e-3, 0.0, 0.0, "cross_entropy", "constant", 0)
                train(model, cfg, data, precision=precision)  # warm-up: kernels, allocator
                torch.manual_seed(0)
                model = prepare(family_models()[family], device)
                result = train(model, cfg, data, precision=precision)
                s = result.epoch_seconds[0]
                print(
                    f"{family:<11} {batch:>5} {precision:<9} {s:>8.2f} "
                    f"{len(data.train_x) / s:>10,.0f} {result.val_accuracy:>7.2%}"
                )


def trials_per_hour(args: argparse.Namespace, device: str, dry: bool) -> None:
    print(f"\n2. study of {args.trials} {args.family} trials x {args.epochs} epochs on {device}")
    print(f"{'workers':>7} {'wall s':>7} {'trials/hour':>11} {'speed-up':>8} {'best val':>8}")
    base = 0.0
    for jobs in (1, args.jobs):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/gpu.db"
            spec = Path(tmp) / "gpu.toml"
            keys = {"family": args.family, "epochs": args.epochs, "n_trials": args.trials}
            keys |= {"sampler": "random", "pruner": "none", "seed": 0}
            if dry:  # tiny and fast: 600 training images, 200 validation, batch >= 64
                keys |= {"train_size": 600, "validation_size": 200}
                keys["params"] = {"batch_size": {"low": 64, "high": 128}}
            spec.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items()))
            cli = [sys.executable, "-m", "mnist_hpo"]
            store = ["--storage", url]
            subprocess.run(
                [*cli, "create-study", str(spec), "--name", "gpu", *store],
                check=True,
                capture_output=True,
            )
            t0 = time.perf_counter()
            work = [*cli, "work", "gpu", "--jobs", str(jobs), "--device", device, *store]
            subprocess.run(work, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            trials = optuna.load_study(study_name="gpu", storage=url).trials
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        rate = len(done) / wall * 3600
        base = base or rate
        best = max((t.value or 0.0 for t in done), default=0.0)
        print(f"{jobs:>7} {wall:>7.0f} {rate:>11.0f} {rate / base:>7.2f}x {best:>8.2%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N (cpu with --dry)")
    parser.add_argument("--batches", default="64,256,512")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--family", default="deep_mlp", help="family of the trials/hour study")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=4, help="workers sharing the GPU")
    parser.add_argument("--dry", action="store_true", help="tiny CPU run to check the script")
    args = parser.parse_args()
    device = resolve_device("cpu" if args.dry and args.device == "auto" else args.device)
    if device.type != "cuda" and not args.dry:
        sys.exit("no CUDA device here: run with --device cuda on a GPU machine, or --dry")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    data = mnist(str(device))
    if args.dry:
        data = Data(
            data.train_x[:512],
            data.train_y[:512],
            *(data.val_x[:256], data.val_y[:256]),
            data.test_x[:256],
            data.test_y[:256],
        )
        args.trials, args.epochs, args.jobs = 2, 1, 2
    epoch_times(data, [int(b) for b in args.batches.split(",")], args.amp)
    trials_per_hour(args, str(device), args.dry)


if __name__ == "__main__":
    main()
