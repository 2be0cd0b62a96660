"""The same search three ways: Optuna's PyTorch example, Ray Tune, and mnist-hpo.

The search space is that of Optuna's pytorch_simple example: 1-3 hidden layers of 4-128 units,
dropout 0.2-0.5 after each, Adam, RMSprop or SGD, learning rate 1e-5..1e-1 (log); 10 epochs of
batch 128, 16 trials, 2 at a time (one per core, one torch thread each), on full MNIST split as
mnist-hpo splits it (the first 50,000 training images train, the last 10,000 validate).

- example: the example's own pipeline (a torchvision-style per-sample Dataset, images decoded
  to PIL and back per sample as torchvision's MNIST does, a DataLoader, the training loop),
  TPE + MedianPruner (Optuna's defaults), two processes on one SQLite study.
- ray-tune: the same trainable under Ray Tune, OptunaSearch (the same define-by-run space) +
  ASHAScheduler, at most 2 trials at a time on a local 2-CPU Ray instance.
- mnist-hpo: `mnist-hpo work --jobs 2` on a spec narrowing the deep_mlp family as close as
  it goes (2-3 layers, one dropout for all layers, Adam or SGD: it has no 1-layer deep_mlp and
  no RMSprop), median pruner, its own data pipeline.

Printed: wall time (each from its processes' start to the end), epochs trained, epochs per
second, the best validation accuracy of a trial that trained all its epochs, and the machine
with its load average (other users' load slows every row). Ray Tune needs the optional extra
`pip install 'mnist-hpo[peers]'`; torchvision is not needed (the example's Dataset is here).

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/vs_peers.py [--only example,ray-tune]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common import cpu_model
from mnist_hpo.ml.data import load_dir

BATCH = 128
JOBS = 2  # one trial per core
VALIDATION = 10_000  # the last 10,000 training images, as mnist-hpo's validation_size
RUNNERS = ("example", "ray-tune", "mnist-hpo")


@dataclass(frozen=True)
class Search:
    epochs: int = 10  # per trial, unless pruned or stopped
    trials: int = 16  # the whole search, over both processes


# mnist-hpo's nearest spec to the example's space.
MNIST_HPO_SPEC = """
family = "deep_mlp"
epochs = {epochs}
n_trials = {trials}
sampler = "tpe"
pruner = "median"
validation_size = {validation}

[params]
n_layers = {{ low = 2, high = 3 }}
width_0 = {{ low = 4, high = 128, log = false }}
width_1 = {{ low = 4, high = 128, log = false }}
width_2 = {{ low = 4, high = 128, log = false }}
dropout = {{ low = 0.2, high = 0.5 }}
optimizer = ["adam", "sgd"]
lr = {{ low = 1e-5, high = 1e-1, log = true }}
momentum = 0.0
weight_decay = 0.0
loss = "cross_entropy"
schedule = "constant"
batch_size = {batch}
"""


class IdxMnist(Dataset[tuple[torch.Tensor, int]]):
    """torchvision.datasets.MNIST over already-read IDX tensors, with ToTensor applied."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[index].numpy())  # mode "L", as torchvision does
        pixels = torch.from_numpy(np.array(img, copy=True)).view(28, 28, 1)
        return pixels.permute(2, 0, 1).contiguous().float().div(255), int(self.labels[index])


def mnist_split(folder: Path) -> tuple[IdxMnist, IdxMnist]:
    raw = load_dir(folder)
    cut = len(raw.train_labels) - VALIDATION
    train = IdxMnist(raw.train_images[:cut], raw.train_labels[:cut])
    return train, IdxMnist(raw.train_images[cut:], raw.train_labels[cut:])


def suggest(trial: optuna.Trial) -> None:
    """The example's space, asked of an Optuna trial (also OptunaSearch's define-by-run)."""
    for i in range(trial.suggest_int("n_layers", 1, 3)):
        trial.suggest_int(f"n_units_l{i}", 4, 128)
        trial.suggest_float(f"dropout_l{i}", 0.2, 0.5)
    trial.suggest_categorical("optimizer", ["Adam", "RMSprop", "SGD"])
    trial.suggest_float("lr", 1e-5, 1e-1, log=True)


def build(params: dict[str, Any]) -> nn.Module:
    """The example's define_model, from the sampled parameters."""
    layers: list[nn.Module] = []
    fan_in = 28 * 28
    for i in range(params["n_layers"]):
        width = params[f"n_units_l{i}"]
        layers += [nn.Linear(fan_in, width), nn.ReLU(), nn.Dropout(params[f"dropout_l{i}"])]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, 10), nn.LogSoftmax(dim=1))


def fit(
    params: dict[str, Any],
    data: tuple[IdxMnist, IdxMnist],
    epochs: int,
    report: Callable[[int, float], bool],
) -> float:
    """The example's training loop; report(epoch, accuracy) returns True to stop early."""
    model = build(params)
    optimizer = getattr(torch.optim, params["optimizer"])(model.parameters(), lr=params["lr"])
    train_loader = DataLoader(data[0], batch_size=BATCH, shuffle=True)
    valid_loader = DataLoader(data[1], batch_size=BATCH, shuffle=True)
    accuracy = 0.0
    for epoch in range(epochs):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            F.nll_loss(model(x.view(x.size(0), -1)), y).backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in valid_loader:
                correct += int((model(x.view(x.size(0), -1)).argmax(1) == y).sum())
        accuracy = correct / len(data[1])
        if report(epoch, accuracy):
            break
    return accuracy


def example_worker(url: str, trials: int, epochs: int, folder: Path) -> None:
    """One of the example's two processes: `trials` trials of the shared study."""
    torch.set_num_threads(1)
    data = mnist_split(folder)
    study = optuna.load_study(study_name="example", storage=url)

    def objective(trial: optuna.Trial) -> float:
        suggest(trial)

        def report(epoch: int, accuracy: float) -> bool:
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
            return False

        return fit(trial.params, data, epochs, report)

    study.optimize(objective, n_trials=trials)


def run_example(search: Search, folder: Path, tmp: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp / 'example.db'}"
    optuna.create_study(study_name="example", storage=url, direction="maximize")  # TPE, median
    me = [sys.executable, __file__, *_settings(search, folder)]
    me += ["--example-worker", url, str(search.trials // JOBS)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(me) for _ in range(JOBS)]
    if any(p.wait() for p in procs):
        raise SystemExit("an example process failed")
    wall = time.perf_counter() - t0
    return _from_study(optuna.load_study(study_name="example", storage=url), wall)


def _from_study(study: optuna.Study, wall: float) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return {
        "wall_s": wall,
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "best": max((t.value for t in complete), default=None),  # type: ignore[type-var]
        "trials": f"{len(complete)} complete, {len(trials) - len(complete)} pruned",
    }


def _settings(search: Search, folder: Path) -> list[str]:
    return ["--epochs", str(search.epochs), "--trials", str(search.trials), "--data", str(folder)]


def tune_run(out: Path, search: Search, folder: Path, tmp: Path) -> None:
    """Ray Tune in its own process, on a local Ray instance of its own (never another's)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1 only
    # A new local Ray instance would otherwise write ~/.ray/auth_token, which every later
    # `ray start` on this machine then enforces (and drivers without RAY_AUTH_MODE=token fail).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=JOBS, include_dashboard=False, _temp_dir=str(tmp))
    data = mnist_split(folder)

    def trainable(config: dict[str, Any], data: tuple[IdxMnist, IdxMnist]) -> None:
        torch.set_num_threads(1)
        fit(config, data, search.epochs, lambda _e, acc: bool(tune.report({"accuracy": acc})))

    goal = {"metric": "accuracy", "mode": "max"}  # to each: max_concurrent_trials wraps the
    config = tune.TuneConfig(  # searcher in a limiter that does not pass TuneConfig's on
        search_alg=OptunaSearch(space=suggest, **goal),
        scheduler=ASHAScheduler(max_t=search.epochs, grace_period=1, **goal),
        num_samples=search.trials,
        max_concurrent_trials=JOBS,
    )
    run = tune.RunConfig(storage_path=str(tmp / "ray_results"), verbose=0)
    with_data = tune.with_parameters(trainable, data=data)  # in Ray's object store, once
    grid = tune.Tuner(with_data, tune_config=config, run_config=run).fit()
    wall = time.perf_counter() - t0
    rows = [r.metrics for r in grid if r.metrics]
    full = [m["accuracy"] for m in rows if m.get("training_iteration") == search.epochs]
    out.write_text(
        json.dumps(
            {
                "wall_s": wall,
                "epochs": sum(int(m.get("training_iteration", 0)) for m in rows),
                "best": max(full, default=None),
                "trials": f"{len(full)} ran all epochs, {len(rows) - len(full)} stopped",
            }
        )
    )
    ray.shutdown()


def run_ray_tune(search: Search, folder: Path, tmp: Path) -> dict[str, Any]:
    out = tmp / "tune.json"
    cmd = [sys.executable, __file__, *_settings(search, folder), "--tune-run", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def run_mnist_hpo(search: Search, folder: Path, tmp: Path) -> dict[str, Any]:
    spec = tmp / "peers.toml"
    settings = {"epochs": search.epochs, "trials": search.trials, "batch": BATCH}
    spec.write_text(MNIST_HPO_SPEC.format(validation=VALIDATION, **settings))
    url = f"sqlite:///{tmp / 'mnist_hpo.db'}"
    cli = [sys.executable, "-m", "mnist_hpo"]
    subprocess.run(
        [*cli, "create-study", str(spec), "--storage", url], check=True, stdout=subprocess.DEVNULL
    )
    work = [*cli, "work", "peers", "--jobs", str(JOBS), "--storage", url, "--data-dir"]
    t0 = time.perf_counter()
    subprocess.run([*work, str(folder), "--no-download"], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return _from_study(optuna.load_study(study_name="peers", storage=url), wall)


def table(rows: dict[str, dict[str, Any]], load: tuple[str, str]) -> None:
    print(
        f"machine: {os.cpu_count()} CPU cores ({cpu_model()}), torch {torch.__version__}, "
        f"{JOBS} trials at a time with 1 torch thread each; load average (1, 5, 15 min) "
        f"{load[0]} before, {load[1]} after"
    )
    print(f"{'pipeline':<10} {'wall s':>7} {'epochs':>7} {'epochs/s':>9} {'best val':>9}  trials")
    for name, r in rows.items():
        best = f"{r['best']:.2%}" if r["best"] is not None else "-"
        rate = r["epochs"] / r["wall_s"]
        print(
            f"{name:<10} {r['wall_s']:>7.0f} {r['epochs']:>7} {rate:>9.2f} {best:>9}  {r['trials']}"
        )


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--only", default=",".join(RUNNERS), help="comma-separated: " + ", ".join(RUNNERS)
    )
    p.add_argument("--epochs", type=int, default=Search.epochs, help="per trial (default 10)")
    p.add_argument("--trials", type=int, default=Search.trials, help="in all (default 16)")
    p.add_argument("--data", default=os.environ.get("MNIST_HPO_DATA", ""), help=argparse.SUPPRESS)
    p.add_argument("--example-worker", nargs=2, metavar=("URL", "TRIALS"), help=argparse.SUPPRESS)
    p.add_argument("--tune-run", metavar="OUT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.data:
        raise SystemExit("set MNIST_HPO_DATA to the folder with the 4 MNIST IDX .gz files")
    folder, search = Path(args.data), Search(args.epochs, args.trials)
    if args.example_worker:
        url, trials = args.example_worker
        example_worker(url, int(trials), search.epochs, folder)
        return 0
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        if args.tune_run:
            tune_run(Path(args.tune_run), search, folder, Path(tmp))
            return 0
        before = _load()
        runs = {"example": run_example, "ray-tune": run_ray_tune, "mnist-hpo": run_mnist_hpo}
        rows = {n: runs[n](search, folder, Path(tmp)) for n in args.only.split(",")}
    table(rows, (before, _load()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
