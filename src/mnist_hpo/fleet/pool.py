"""Many workers, each the same `mnist-hpo work` command: `--jobs N` on this machine (processes
dealt over its GPUs), or `--ray ADDRESS --workers N` on a Ray cluster (ray_pool.py).

Processes, not threads: training is CPU-bound, and one process per worker keeps each worker's
signal handling, heartbeats and exact budget exactly as when it runs alone. The launcher
passes SIGTERM / Ctrl-C on and reports the worst exit code.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from mnist_hpo.errors import EnvironmentFault
from mnist_hpo.fleet.gpus import assign_devices, visible_gpus
from mnist_hpo.fleet.worker import WorkOptions
from mnist_hpo.resilience import stop
from mnist_hpo.settings import Settings

POLL = 0.2  # seconds between looks at the children: a finished worker is noticed at once


def options_argv(options: Any) -> list[str]:
    """A frozen options dataclass as `work` options: field `n_trials` -> `--n-trials 5`, a bool
    field -> `--wait` / `--no-wait`, None -> left out (the option's own default)."""
    argv: list[str] = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        flag = "--" + f.name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def worker_command(
    storage_url: str,
    study: str,
    options: WorkOptions,
    settings: Settings,
    *,
    label: str,
    verbose: bool,
    log_format: str = "json",
    python: str = sys.executable,
) -> list[str]:
    """The command line of one worker process: every setting explicit, nothing inherited.
    `label` names it in its lines ("" where the launcher labels them itself); `log_format`
    json: one record a line, which the launcher reads back into events (view/live.py)."""
    return [
        python,
        "-m",
        "mnist_hpo",
        "work",
        study,
        "--jobs",
        "1",
        "--storage",
        storage_url,
        *options_argv(options),
        *options_argv(settings),
        *(["--verbose"] if verbose else []),
        *(["--label", label] if label else []),
        "--log-format",
        log_format,
    ]


def local_commands(
    storage_url: str,
    study: str,
    options: WorkOptions,
    settings: Settings,
    *,
    jobs: int,
    verbose: bool,
) -> list[list[str]]:
    """`--jobs N`'s workers; with `--device cuda` (or auto where a GPU is visible) each gets
    the next GPU in turn, so a host with several GPUs is used whole."""
    devices = assign_devices(jobs, options.device, visible_gpus())
    return [
        worker_command(
            storage_url,
            study,
            dataclasses.replace(options, device=device),
            settings,
            label=f"w{i}",
            verbose=verbose,
        )
        for i, device in enumerate(devices)
    ]


@dataclasses.dataclass(frozen=True)
class RayPlan:
    """Where `work --ray` puts its workers."""

    address: str  # of a running cluster: HOST:PORT, or ray://HOST:PORT through Ray Client
    workers: int
    gpus_per_worker: float  # a fraction shares a GPU (0.25: four workers per GPU)
    cpus_per_worker: int  # also each worker's torch threads


def run_on_ray(
    plan: RayPlan,
    storage_url: str,
    study: str,
    options: WorkOptions,
    settings: Settings,
    *,
    verbose: bool,
    on_line: Callable[[str, str], None],
    on_first_signal: Callable[[int], None],
) -> list[int]:
    """The same worker command, `plan.workers` times, as Ray actors on the cluster's nodes;
    each worker's exit code (ray_pool.LOST where its node or Ray worker died)."""
    from mnist_hpo.fleet.ray_pool import NODE_PYTHON, RayPool

    device = "cuda" if plan.gpus_per_worker > 0 else "cpu"  # Ray shows a worker its GPUs only
    options = dataclasses.replace(options, device=device, threads=plan.cpus_per_worker)
    command = worker_command(
        storage_url, study, options, settings, label="", verbose=verbose, python=NODE_PYTHON
    )
    received: list[int] = []

    def forward(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            on_first_signal(signum)
        pool.stop(signum)

    with RayPool(
        plan.address,
        gpus_per_worker=plan.gpus_per_worker,
        cpus_per_worker=plan.cpus_per_worker,
    ) as pool:
        pool.start([command] * plan.workers, on_line)
        with stop.forwarding(forward):
            return pool.wait()


def worst(codes: list[int]) -> int:
    """The exit code of several workers: 0 if all were, else EnvironmentFault's if a worker had
    it (the others were stopped because of it), else the largest non-zero one."""
    if EnvironmentFault.exit_code in codes:
        return EnvironmentFault.exit_code
    return max(codes, key=lambda c: (c != 0, c))


def _nobody(_worker: int) -> None:
    """The default: nobody to tell."""


# A worker's line: (which command, the line without its newline, whether it came on stderr).
OnLine = Callable[[int, str, bool], None]


def run_many(
    commands: list[list[str]],
    *,
    on_first_signal: Callable[[int], None],
    on_environment_fault: Callable[[int], None] = _nobody,
    on_line: OnLine | None = None,
) -> int:
    """Run the commands as worker processes until all end; the worst exit code (0 if all did).

    The workers run in their own process group, so a terminal's Ctrl-C reaches them once,
    through here: the first signal asks each to stop after its epoch, a second stops them at
    once (each worker's own second-signal rule). A worker that exits on an environment fault
    (a full disk, a store gone) has handed its trial back; the others, on the same machine and
    store, are stopped the same way: SIGTERM, after `on_environment_fault(its index)`. With
    `on_line`, their stdout and stderr are read line by line and handed to it in this thread
    (else they write to this process's).
    """
    piped = subprocess.PIPE if on_line is not None else None
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as soon as it is written
    procs = [
        subprocess.Popen(
            cmd, process_group=0, stdout=piped, stderr=piped, text=True, errors="replace", env=env
        )
        for cmd in commands
    ]
    lines: queue.Queue[tuple[int, str, bool]] = queue.Queue()
    readers = [
        threading.Thread(target=_pump, args=(stream, i, err, lines), daemon=True)
        for i, p in enumerate(procs)
        for stream, err in ((p.stdout, False), (p.stderr, True))
        if stream is not None
    ]
    for r in readers:
        r.start()
    received: list[int] = []

    def signal_all(signum: int) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    def forward(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            on_first_signal(signum)
        signal_all(signum)

    def busy() -> bool:
        alive = any(p.poll() is None for p in procs) or any(r.is_alive() for r in readers)
        return alive or not lines.empty()

    with stop.forwarding(forward):
        while busy():
            faulted = [i for i, p in enumerate(procs) if p.poll() == EnvironmentFault.exit_code]
            if faulted and not received:
                on_environment_fault(faulted[0])
                received.append(signal.SIGTERM)  # a Ctrl-C after this is the second signal
                signal_all(signal.SIGTERM)
            try:
                i, text, err = lines.get(timeout=POLL)
            except queue.Empty:
                continue
            if on_line is not None:
                on_line(i, text, err)
    # A worker killed by a signal has a negative code; report it as the shell does (128 + N).
    return worst([128 - p.returncode if p.returncode < 0 else p.returncode for p in procs])


def _pump(
    stream: IO[str], index: int, err: bool, lines: queue.Queue[tuple[int, str, bool]]
) -> None:
    """A worker's output stream, line by line, into the launcher's queue until it closes."""
    with stream:
        for line in stream:
            lines.put((index, line.rstrip("\n"), err))
