"""Time spent in storage calls per trial, on SQLite and PostgreSQL, against the trial's own time.

Runs a short real study per family and storage through `worker.run` (the code `mnist-hpo work`
runs), with every public method of the RDBStorage timed, and the worker's own SQL beside them
(the dead-worker query, taking the study lock). Calls made from the training thread block
the trial and count as overhead; the heartbeat thread's calls run beside training (torch releases
the GIL) and are shown apart. Optuna's sampler and pruner logic is not storage and not counted.

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/storage_overhead.py \
        [--families simple_mlp,deep_mlp] [--trials 6] [--epochs 3] [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from common import machine
from mnist_hpo.fleet import worker
from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.resilience import trials as trials_mod
from mnist_hpo.resilience.lock import StudyLock
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec import parse

PG_ADMIN = os.environ.get("MNIST_HPO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


class Timings:
    def __init__(self) -> None:
        self.main = threading.main_thread()
        self.seconds: dict[str, float] = defaultdict(float)  # method -> training-thread seconds
        self.calls: dict[str, int] = defaultdict(int)
        self.side = 0.0  # seconds in other threads (heartbeat)
        self.depth = 0  # storage methods call each other: time only the outermost call

    def wrap(self, storage: RDBStorage) -> RDBStorage:
        for name, method in inspect.getmembers(storage, inspect.ismethod):
            if not name.startswith("_"):
                setattr(storage, name, self._timed(name, method))
        return storage

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            on_main = threading.current_thread() is self.main
            outer = on_main and self.depth == 0
            if on_main:
                self.depth += 1
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                if on_main:
                    self.depth -= 1
                if outer:
                    self.seconds[name] += dt
                    self.calls[name] += 1
                elif not on_main:
                    self.side += dt

        return timed


@contextmanager
def pg_database() -> Iterator[str]:
    import psycopg

    name = f"mnist_hpo_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _timed_lock(timings: Timings, held: Callable[..., Any], lock: StudyLock) -> Iterator[None]:
    """Count the time to take the study lock (not the time it is held: the work inside is
    timed by its own calls)."""
    t0 = time.perf_counter()
    with held(lock):
        timings.seconds["study lock"] += time.perf_counter() - t0
        timings.calls["study lock"] += 1
        yield


def measure(url: str, family: str, trials: int, epochs: int, data_dir: Path | None) -> None:
    spec = parse(
        {"family": family, "epochs": epochs, "n_trials": trials, "seed": 0, "pruner": "median"},
        source="benchmark",
        default_name=f"bench_{family}",
    )
    study_mod.create(storage_mod.open_storage(url), spec)
    timings = Timings()
    real_open, real_stale = worker.open_storage, trials_mod.optuna_internals.stale_trial_ids
    real_held = StudyLock.held
    worker.open_storage = lambda u, **kw: timings.wrap(real_open(u, **kw))  # type: ignore[assignment]
    # Our own SQL beside Optuna's methods: the dead-worker query and taking the study lock.
    trials_mod.optuna_internals.stale_trial_ids = timings._timed("stale check", real_stale)  # type: ignore[assignment]
    StudyLock.held = lambda self: _timed_lock(timings, real_held, self)  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        worker.run(
            url,
            spec.name,
            worker.WorkOptions(device="cpu", threads=torch.get_num_threads(), data_dir=data_dir),
        )
        wall = time.perf_counter() - t0
    finally:
        worker.open_storage = real_open  # type: ignore[assignment]
        trials_mod.optuna_internals.stale_trial_ids = real_stale  # type: ignore[assignment]
        StudyLock.held = real_held  # type: ignore[method-assign]
    study = optuna.load_study(study_name=spec.name, storage=url)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    trial_s = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in done
        if t.datetime_complete and t.datetime_start
    )
    epochs_run = sum(len(t.intermediate_values) for t in done)
    storage_s = sum(timings.seconds.values())
    best = max((t.value or 0.0 for t in done if t.state == TrialState.COMPLETE), default=0.0)
    kind = url.split(":", 1)[0]
    print(
        f"{family:<11} {kind:<11} {len(done):>6} {epochs_run:>6} {trial_s / len(done):>9.2f} "
        f"{storage_s / len(done) * 1000:>10.0f} {storage_s / trial_s:>8.2%} "
        f"{timings.side:>8.2f} {wall:>7.1f} {best:>8.2%}"
    )
    top = sorted(timings.seconds.items(), key=lambda kv: -kv[1])[:4]
    print(
        "    slowest calls: "
        + ", ".join(f"{k} {v * 1000:.0f} ms/{timings.calls[k]}" for k, v in top)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="simple_mlp,deep_mlp")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--storages", default="sqlite,postgresql")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = os.environ.get("MNIST_HPO_DATA")
    data_dir = Path(folder) if folder else None
    print(f"machine: {machine()}; one worker, {args.epochs} epochs/trial, median pruner")
    print(
        f"{'family':<11} {'storage':<11} {'trials':>6} {'epochs':>6} {'trial s':>9} "
        f"{'storage ms':>10} {'overhead':>8} {'hb s':>8} {'wall s':>7} {'best val':>8}"
    )
    for family in args.families.split(","):
        for kind in args.storages.split(","):
            if kind == "sqlite":
                with tempfile.TemporaryDirectory() as tmp:
                    measure(f"sqlite:///{tmp}/b.db", family, args.trials, args.epochs, data_dir)
            else:
                with pg_database() as url:
                    measure(url, family, args.trials, args.epochs, data_dir)
    print("storage ms = training-thread storage time per trial; hb s = heartbeat thread in all")


if __name__ == "__main__":
    main()
