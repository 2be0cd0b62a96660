"""Running a study's workers as processes on this machine, and relaying what they report.

`mnist-hpo work --jobs N` and `Study.work` both come here: N worker processes, each the same
`mnist-hpo work --jobs 1` command with the same crash safety (heartbeats, hand-back on SIGTERM
or Ctrl-C), whose JSON event lines are read back into one view. Nothing here prints: the view's
reporter decides where lines go (the terminal for the CLI, a notebook cell for the API).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from mnist_hpo.errors import EnvironmentFault, Interrupted
from mnist_hpo.events import WorkerDone, from_record
from mnist_hpo.settings import Settings
from mnist_hpo.view.live import Board, Poller, Reporter, View

if TYPE_CHECKING:
    from mnist_hpo.fleet.worker import WorkOptions
    from mnist_hpo.search.progress import Snapshot

Progress = Callable[[str, int, int | None], None]  # a download's (file, bytes done, total)
ExitNow = Callable[[int, str], NoReturn]  # the caller's last word on a second signal: (code, text)


def open_view(url: str, study: str, report: Reporter, board: Board, *, label: str = "") -> View:
    """The view a launcher shows. A `--jobs N` worker (it has a label) only reports its events;
    the process the user started also reads the study for the view's study line."""
    if label:
        return View(report, board)
    poller = Poller(reader(url, study), report)
    poller.kick()
    return View(report, board, poller)


def reader(url: str, name: str) -> Callable[[], Snapshot]:
    """Reads the study's snapshot through a storage of its own (opened at the first read)."""
    opened: dict[str, Any] = {}

    def read() -> Snapshot:
        from mnist_hpo.resilience.retry import storage_errors
        from mnist_hpo.resilience.storage import open_storage
        from mnist_hpo.search import study as study_mod

        with storage_errors("reading the study"):
            if not opened:
                storage = open_storage(url, must_exist=True, connections=1)
                opened["study"], opened["spec"] = study_mod.load(storage, name)
            return study_mod.snapshot(opened["study"], opened["spec"])

    return read


def relay_line(view: View, label: str, text: str, err: bool) -> None:
    """A worker process's line: its JSON record as an event of worker `label`; anything else
    (its stderr: an error, a stop; a line from Ray) as it is."""
    record: Any = None
    if not err and text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
    event = from_record(record) if isinstance(record, dict) else None
    if event is None:
        view.text(text if err else f"[{label}] {text}", err=err)
        return
    view(event, label, record.get("ts"))


def run_here(
    url: str,
    study: str,
    options: WorkOptions,
    settings: Settings,
    *,
    view: View,
    exit_now: ExitNow,
    label: str = "",
    download_progress: Progress | None = None,
) -> int:
    """One worker in this process until it ends (`mnist-hpo work` without `--jobs`, and each
    of `--jobs N`'s processes, whose `label` says which); 0, or Interrupted / EnvironmentFault
    after the trial was handed back. A first SIGINT / SIGTERM finishes the epoch and hands the
    trial back; a second, or the stop deadline, calls `exit_now(code, text)`, which must end
    the process without unwinding (the main thread may be deep inside a training step)."""
    import torch

    from mnist_hpo.fleet import worker
    from mnist_hpo.resilience import stop as stop_mod

    if options.threads:
        torch.set_num_threads(options.threads)  # this process is this worker: set it once here
    stop = stop_mod.Stop(settings.stop_wait, note=view.note, exit_now=exit_now)
    uninstall = stop_mod.install(stop)
    try:
        summary = worker.run(
            url,
            study,
            options,
            settings,
            listener=view,
            stop=stop,
            download_progress=download_progress,
        )
    except Interrupted as e:
        if label:  # say which of `--jobs N`'s workers this is
            raise Interrupted(f"[{label}] {e}", e.signum) from None
        raise
    except EnvironmentFault as e:
        if label:
            raise EnvironmentFault(f"[{label}] {e.problem}", e.advice, e.outcome) from None
        raise
    finally:
        uninstall()
    view(WorkerDone(summary.trials, summary.seconds, summary.stop_reason))
    return 0


def run_processes(
    url: str,
    study: str,
    options: WorkOptions,
    settings: Settings,
    *,
    jobs: int,
    verbose: bool,
    view: View,
    download_progress: Progress | None = None,
    ray: Any = None,
) -> int:
    """`jobs` worker processes here (or `ray.workers` Ray actors, `ray` a pool.RayPlan) until
    they end; the worst exit code. A first SIGINT / SIGTERM (Ctrl-C in a terminal, Interrupt in
    Jupyter) asks each worker to finish its epoch and hand its trial back; a second stops them
    at once. 130 then says they were interrupted."""
    from mnist_hpo.fleet import pool, worker

    # Check the study and fetch the data once here, so N workers do not each report the same
    # mistake or download the same files at the same time.
    worker.prepare(
        url, study, options, settings, download_progress=download_progress, here=ray is None
    )
    n = ray.workers if ray is not None else jobs

    def first_signal(signum: int) -> None:
        from mnist_hpo.resilience.stop import signal_name

        view.text(
            f"{signal_name(signum)}: asking {n} workers to stop after their current epoch "
            "and re-queue their trials; again to stop them at once",
            err=True,
        )

    def environment_fault(worker: int) -> None:
        view.text(
            f"w{worker} stopped: the disk or the artifact store failed (its error line says "
            "what to fix); asking the other workers to stop after their current epoch and "
            "re-queue their trials",
            err=True,
        )

    if ray is not None:
        return _on_ray(ray, url, study, options, settings, verbose, first_signal, view)
    commands = pool.local_commands(url, study, options, settings, jobs=jobs, verbose=verbose)
    view.note(f"starting {jobs} worker processes with {options.threads} thread(s) each")
    labels = [f"w{i}" for i in range(jobs)]

    def relay(i: int, text: str, err: bool) -> None:
        relay_line(view, labels[i], text, err)

    return pool.run_many(
        commands,
        on_first_signal=first_signal,
        on_environment_fault=environment_fault,
        on_line=relay,
    )


def _on_ray(
    plan: Any,
    url: str,
    study: str,
    options: WorkOptions,
    settings: Settings,
    verbose: bool,
    first_signal: Callable[[int], None],
    view: View,
) -> int:
    from mnist_hpo.fleet import pool
    from mnist_hpo.fleet.ray_pool import LOST

    view.note(
        f"starting {plan.workers} workers on the Ray cluster at {plan.address}, "
        f"{plan.cpus_per_worker} CPU(s) and {plan.gpus_per_worker:g} GPU(s) each"
    )
    codes = pool.run_on_ray(
        plan,
        url,
        study,
        options,
        settings,
        verbose=verbose,
        on_line=lambda label, text: relay_line(view, label, text, err=False),
        on_first_signal=first_signal,
    )
    lost = [f"w{i}" for i, c in enumerate(codes) if c == LOST]
    if lost and pool.worst([c for c in codes if c != LOST]) == 0:
        # A lost node is a dead worker: its trial was retried by the others (or is queued).
        view.note(
            f"{', '.join(lost)}: lost with its node or Ray worker; its trial is retried from its "
            "checkpoint by another worker once its heartbeat expires (status shows it)"
        )
        return 0
    return pool.worst(codes)
