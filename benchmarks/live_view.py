"""What the live view of `work` costs against the epochs it watches.

The view's work: a refresh of the rows and the study line once a second (view/live.py REFRESH),
its bookkeeping per event, and a read of the study from storage every POLL_EVERY seconds and
when a trial starts or ends. Measured here one by one on a terminal console writing to
/dev/null (what a refresh really renders and writes), on a SQLite study of 60 finished trials,
then set against real epochs: the cost per second of training, as a share of it, is what the
view takes from a worker (`--jobs 1`: the same process; `--jobs N`: the launcher, sharing the
cores). Last, an A/B run: the same epochs trained with the view running (refresh thread and
study reads) and without, in ABBA order; on a busy machine its noise (a few percent between
rounds) exceeds the view's cost, so it bounds the cost rather than measures it.

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/live_view.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from optuna.distributions import FloatDistribution
from rich.console import Console

from common import family_models, machine, mnist
from mnist_hpo.api.work import relay_line
from mnist_hpo.events import EpochDone, TrialStarted, to_record
from mnist_hpo.ml.data import Data
from mnist_hpo.ml.train import EpochEnd, TrainConfig, train
from mnist_hpo.resilience.storage import open_storage
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec import StudySpec
from mnist_hpo.view import live

PARAMS = {"lr": 0.0031, "batch_size": 128, "optimizer": "adamw", "dropout": 0.2, "n_layers": 2}


def _study(folder: Path, trials: int = 60) -> Callable[[], object]:
    """A SQLite study of `trials` finished trials of 20 epochs; returns its snapshot read."""
    url = f"sqlite:///{folder / 's.db'}"
    spec = StudySpec(name="bench", family="deep_mlp", epochs=20, n_trials=100)
    study, _ = study_mod.create(open_storage(url), spec)
    for i in range(trials):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.001 * (i + 1)},
                distributions={"lr": FloatDistribution(1e-4, 0.3, log=True)},
                value=0.9 + i / 1000,
                intermediate_values={e: 0.8 + e / 100 for e in range(1, 21)},
                user_attrs={"test_accuracy": 0.9, "n_params": 1000, "epoch_seconds": [1.0] * 20},
            )
        )
    loaded, spec = study_mod.load(open_storage(url, must_exist=True), "bench")
    return lambda: study_mod.snapshot(loaded, spec)


def _median_ms(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _reporter(read: Callable[[], object]) -> live.LiveReporter:
    console = Console(force_terminal=True, width=120, file=open(os.devnull, "w"))  # noqa: SIM115
    board = live.Board()
    report = live.LiveReporter(board, verbose=False, console=console)
    report.event(TrialStarted(7, PARAMS, 0, 20), "w0")
    report.event(TrialStarted(8, {**PARAMS, "lr": 0.012}, 0, 20), "w1")
    report.event(EpochDone(7, 3, 20, 0.97, 1.9), "w0")
    report.snapshot(read(), announce=False)  # type: ignore[arg-type]
    return report


def _epochs(data: Data, epochs: int, on_epoch: Callable[[EpochEnd], None]) -> tuple[float, float]:
    """Seconds per epoch of the deep_mlp family at the report's shape (784-256-128-10): the
    median wall time, and this process's CPU time (every thread's: the view's too) per epoch."""
    model = family_models()["deep_mlp"]
    cfg = TrainConfig(epochs, 128, "adam", 1e-3, 0.0, 0.0, "cross_entropy", "constant", 0)
    cpu = time.process_time()
    result = train(model, cfg, data, on_epoch)
    return statistics.median(result.epoch_seconds), (time.process_time() - cpu) / epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6, help="A/B rounds of --epochs each")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)  # a `--jobs 2` worker on 2 cores
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        read = _study(Path(tmp))
        report = _reporter(read)
        report.start()
        assert report.live is not None
        refresh = _median_ms(report.live.refresh, 200)
        # As `--jobs N`'s launcher gets an event: a worker's JSON line, parsed and shown.
        view = live.View(report, report.board)
        line = json.dumps(to_record(EpochDone(7, 4, 20, 0.97, 1.9)))
        event = _median_ms(lambda: relay_line(view, "w0", line, False), 2000)
        poll = _median_ms(read, 20)
        report.close()
        per_second = refresh * live.REFRESH + poll / live.POLL_EVERY  # ms of CPU per second
        print(f"refresh {refresh:.2f} ms ({live.REFRESH:g}/s), a worker's JSON event line", end=" ")
        print(f"{1000 * event:.0f} us,")
        # Optuna caches finished trials in the study object, which the view keeps: a read after
        # the first fetches the unfinished ones only.
        print(f"study read {poll:.1f} ms (60 trials; every {live.POLL_EVERY:g} s and per trial)")
        print(f"view: {per_second:.2f} ms of CPU per second = {per_second / 10:.3f}% of a core")

        data = mnist()
        plain, _ = _epochs(data, 1, lambda e: None)
        # Per epoch: the view's steady cost, one event, and two study reads per trial (start,
        # end) spread over a 20-epoch trial's epochs.
        share = per_second / 1000 + (event + 2 * poll / 20) / (1000 * plain)
        print(f"deep_mlp epoch {plain:.2f} s: the view costs {100 * share:.3f}% of it")

        on: list[tuple[float, float]] = []
        off: list[tuple[float, float]] = []
        for i in range(args.rounds):
            # ABBA: whichever ran second in a round was 4-7% slower here, whatever it was.
            for with_view in (False, True) if i % 2 == 0 else (True, False):
                if not with_view:
                    off.append(_epochs(data, args.epochs, lambda e: None))
                    continue
                report = _reporter(read)
                report.start()
                poller = live.Poller(read, report)  # type: ignore[arg-type]

                def tell(e: EpochEnd, report: live.LiveReporter = report) -> None:
                    report.event(EpochDone(7, e.epoch, 20, e.val_accuracy, e.seconds), "w0")

                on.append(_epochs(data, args.epochs, tell))
                poller.close()
                report.close()
    for what, k in (("wall", 0), ("CPU", 1)):
        a, b = (statistics.median(x[k] for x in runs) for runs in (off, on))
        print(
            f"A/B, {args.rounds} x {args.epochs} epochs, {what} time: {a:.3f} s/epoch without "
            f"the view, {b:.3f} s with it: {b / a:.3f}x"
        )
    print(f"(load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
