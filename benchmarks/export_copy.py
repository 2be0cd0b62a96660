"""`export-best` of a finished study: copying the kept weights against retraining the trial, in
the same run, with both walls, their ratio, and whether each scores exactly what the trial
recorded on validation.

Without --storage it first runs a small study of its own in a temporary folder (deep_mlp, 3
epochs, 2 trials, one worker, full MNIST from MNIST_HPO_DATA); with --storage/--study/--artifacts
it exports the best trial of a study you ran (a shipped cnn study: a retrain costs as long as
the trial did).

    .venv/bin/python benchmarks/export_copy.py [--epochs 3] [--threads 1]
    .venv/bin/python benchmarks/export_copy.py --storage sqlite:///s.db --study cnn --artifacts DIR
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from common import machine
from mnist_hpo.fleet import worker
from mnist_hpo.outputs import export
from mnist_hpo.resilience.storage import open_storage
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec import parse

SPEC = {
    "family": "deep_mlp",
    "n_trials": 2,
    "seed": 0,
    "params": {"n_layers": 2, "width_0": 512, "width_1": 256, "batch_norm": True},
}


def small_study(folder: Path, epochs: int, threads: int) -> tuple[str, str, str]:
    url, art = f"sqlite:///{folder / 's.db'}", str(folder / "art")
    spec = parse({**SPEC, "epochs": epochs}, source="export_copy", default_name="export_copy")
    study_mod.create(open_storage(url), spec)
    data = os.environ.get("MNIST_HPO_DATA")
    options = worker.WorkOptions(
        threads=threads, data_dir=Path(data) if data else None, artifacts=art, download=False
    )
    t0 = time.perf_counter()
    worker.run(url, "export_copy", options)
    print(
        f"study: {SPEC['n_trials']} deep_mlp trials of {epochs} epochs, {threads} thread(s), "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return url, "export_copy", art


def timed(label: str, run) -> export.Exported:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    done = run()
    wall = time.perf_counter() - t0
    m = done.meta
    exact = "exactly" if done.reproduced else "NOT exactly"
    print(
        f"{label}: {wall:.1f} s, weights {m['weights_from']}; validation "
        f"{100 * m['validation_accuracy']:.2f}%, {exact} the recorded "
        f"{100 * m['recorded']['validation_accuracy']:.2f}%"
    )
    done.meta["wall"] = wall
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage")
    parser.add_argument("--study")
    parser.add_argument("--artifacts")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        if args.storage:
            url, name, art = args.storage, args.study, args.artifacts
        else:
            url, name, art = small_study(Path(tmp), args.epochs, args.threads)
        data = os.environ.get("MNIST_HPO_DATA")
        where = Path(data) if data else None
        copy = timed(
            "copy   ",
            lambda: export.export_best(
                url, name, Path(tmp) / "c.st", data_dir=where, artifacts=art
            ),
        )
        again = timed(
            "retrain", lambda: export.export_best(url, name, Path(tmp) / "r.st", data_dir=where)
        )
        print(
            f"retrain / copy: {again.meta['wall'] / copy.meta['wall']:.0f}x "
            f"(precision {copy.meta['recorded']['precision']})"
        )


if __name__ == "__main__":
    main()
