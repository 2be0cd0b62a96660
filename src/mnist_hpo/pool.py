"""`work --jobs N`: N worker processes on this machine, each the same `mnist-hpo work` command.

Processes, not threads: training is CPU-bound, and one process per worker keeps each worker's
signal handling, heartbeats and exact budget exactly as when it runs alone. The parent passes
SIGTERM / Ctrl-C on and reports the worst exit code.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from mnist_hpo.resilience import stop
from mnist_hpo.settings import Settings
from mnist_hpo.worker import WorkOptions

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
) -> list[str]:
    """The command line of one worker process: every setting explicit, nothing inherited."""
    return [
        sys.executable,
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
        "--label",
        label,
    ]


def run_many(commands: list[list[str]], *, on_first_signal: Callable[[int], None]) -> int:
    """Run the commands as worker processes until all end; the worst exit code (0 if all did).

    The workers run in their own process group, so a terminal's Ctrl-C reaches them once,
    through here: the first signal asks each to stop after its epoch, a second stops them at
    once (each worker's own second-signal rule).
    """
    procs = [subprocess.Popen(cmd, process_group=0) for cmd in commands]
    received: list[int] = []

    def forward(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            on_first_signal(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    with stop.forwarding(forward):
        while any(p.poll() is None for p in procs):
            time.sleep(POLL)
    # A worker killed by a signal has a negative code; report it as the shell does (128 + N).
    codes = [128 - p.returncode if p.returncode < 0 else p.returncode for p in procs]
    return max(codes, key=lambda c: (c != 0, c))
