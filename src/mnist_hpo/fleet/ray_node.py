"""What RayPool runs on a Ray node: one command as a subprocess, its output streamed back."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# An argv item replaced, on the node, by the Python that runs Ray's worker there: mnist-hpo is
# installed beside Ray on every node, while the driver's own interpreter path may not exist.
NODE_PYTHON = "{node_python}"
# Seconds one read() waits for a line before it answers empty: a line reaches the driver within
# about this of being written, and an idle worker costs 5 small actor calls a second.
POLL = 0.2
# Stops passed on as they are before the command is killed: the worker's first signal finishes
# the epoch and re-queues, its second exits at once (143); a third means it did not listen.
FORWARDED_STOPS = 2
NOT_FOUND = 127  # the shell's code for a command that cannot be run

# Started before the command on Linux: PR_SET_PDEATHSIG makes the kernel SIGKILL the command
# when the Ray worker process that started it dies, so a killed Ray worker cannot leave a
# worker running unseen (its trial would keep a live heartbeat and never be retried). Then
# exec: the command keeps this process id, so a signal sent to the pid reaches it directly.
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_LAUNCH = f"""\
import ctypes, os, sys
ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, {int(signal.SIGKILL)})
if os.getppid() != int(sys.argv[1]):
    os._exit(137)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as e:
    print(f"cannot run {{sys.argv[2]}}: {{e.strerror}}", flush=True)
    os._exit(127)
"""


@dataclass(frozen=True)
class Placement:
    """Where Ray runs one command, as its actor's start() reports it."""

    node_ip: str  # the node's address, as Ray knows it
    node_id: str  # Ray's id of the node (hex)
    ray_pid: int  # the Ray worker process that runs the actor, on that node
    pid: int  # the command's own process, on that node


@dataclass(frozen=True)
class Lines:
    texts: list[str]  # output lines of the command (stdout and stderr merged), in order


@dataclass(frozen=True)
class Exited:
    code: int  # the command's exit code; killed by signal N: 128 + N, as a shell says


class CommandRunner:
    """A Ray actor that runs one command: start() it, read() its lines until it has exited.

    An actor, not a task: a task blocked in a Ray call hands its CPUs back to the scheduler,
    which then starts more workers than fit; an actor holds its CPUs and GPUs until it ends.
    The driver pulls (read() waits up to POLL s for lines) instead of Ray streaming generators,
    which Ray Client (ray://) does not carry. Two threads: signal() arrives while read() waits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stops: list[int] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        self._refused = NOT_FOUND  # the exit code reported when the command never ran

    def start(self, argv: Sequence[str], env: Mapping[str, str]) -> Placement | Exited:
        """Start `argv` unless a stop came first: where it runs, or why it never ran."""
        import ray

        with self._lock:
            if self._stops:  # stopped while Ray looked for room: it never starts
                return self._refuse("stopped before it started", 128 + self._stops[0])
            started: queue.Queue[subprocess.Popen[bytes] | OSError] = queue.Queue()
            threading.Thread(target=self._keep, args=(argv, env, started), daemon=True).start()
            proc = started.get()
            if isinstance(proc, OSError):
                return self._refuse(f"cannot run {argv[0]}: {proc.strerror}", NOT_FOUND)
            self._proc = proc
        node = ray.get_runtime_context().get_node_id()
        return Placement(ray.util.get_node_ip_address(), node, os.getpid(), proc.pid)

    def read(self) -> Lines | Exited:
        """The lines written since the last read (waits up to POLL s for one), or, once its
        output has ended and it has exited, its exit code."""
        batch, ended = ([], True) if self._ended else _drain(self._lines)
        self._ended = self._ended or ended
        if batch or not self._ended:
            return Lines(batch)
        return Exited(_shell_code(self._proc.wait()) if self._proc else self._refused)

    def signal(self, signum: int) -> None:
        """Pass a stop on: `signum` the first FORWARDED_STOPS times, then SIGKILL."""
        with self._lock:
            self._stops.append(signum)
            if self._proc is not None and self._proc.poll() is None:
                again = len(self._stops) > FORWARDED_STOPS
                self._proc.send_signal(signal.SIGKILL if again else signum)

    def _refuse(self, why: str, code: int) -> Exited:
        self._lines.put(why)
        self._lines.put(None)
        self._refused = code
        return Exited(code)

    def _keep(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        started: queue.Queue[subprocess.Popen[bytes] | OSError],
    ) -> None:
        """Start the command and read its output, in a thread that lives exactly as long as it:
        PR_SET_PDEATHSIG watches the thread that started the command, not the process."""
        try:
            proc = _start(argv, {**os.environ, **env})
        except OSError as e:
            started.put(e)
            return
        started.put(proc)
        assert proc.stdout is not None
        for raw in proc.stdout:
            self._lines.put(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        proc.wait()
        self._lines.put(None)


def _start(argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    args = [sys.executable if a == NODE_PYTHON else a for a in argv]
    if sys.platform == "linux":
        args = [sys.executable, "-c", _LAUNCH, str(os.getpid()), *args]
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        # Its own process group: signals meant for the Ray worker (a terminal's Ctrl-C on
        # `ray start --block`) do not reach the command; only the pool's stops do.
        process_group=0,
    )


def _drain(lines: queue.Queue[str | None]) -> tuple[list[str], bool]:
    """The lines waiting now, or the first to arrive within POLL seconds; True at the end."""
    batch: list[str] = []
    try:
        item = lines.get(timeout=POLL)
        while item is not None:
            batch.append(item)
            item = lines.get_nowait()
    except queue.Empty:
        return batch, False
    return batch, True


def _shell_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode
