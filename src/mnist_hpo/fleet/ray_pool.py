"""Worker commands on an existing Ray cluster: one Ray actor each, their lines streamed back."""

from __future__ import annotations

import logging
import math
import queue
import signal
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.fleet.ray_node import NODE_PYTHON, CommandRunner, Exited, Lines, Placement

__all__ = ["LOST", "NODE_PYTHON", "Placement", "RayPool"]

# Exit code of a worker whose Ray worker process or node died under it, as ssh's 255 says the
# far end was lost: distinct from every code a worker gives itself (0, 1, 2, 130, 143).
LOST = 255
FAILED = 1  # the Ray actor itself failed (mnist-hpo or Ray missing on that node)
# Seconds allowed to reach the head's port and then to join the cluster: joining took 0.05-0.8 s
# here; an unreachable GCS makes ray.init retry for over 200 s before it gives up.
CONNECT_TIMEOUT = 30.0
TICK = 0.2  # seconds between wait()'s looks at stop requests when no line arrives

OnLine = Callable[[str, str], None]


class RayPool:
    """Commands run as subprocesses on the nodes of a Ray cluster that is already running.

    Each command gets one Ray actor (`cpus_per_worker` CPUs, `gpus_per_worker` GPUs; fractions
    below 1 share a GPU) that starts it as a subprocess on whatever node Ray picks, so a worker's
    own signal handling, heartbeats and checkpoints stay as they are. Lines come back through
    `on_line(label, text)`, called from wait() in the caller's thread. On Linux a command dies
    with its Ray worker process (PR_SET_PDEATHSIG), so a lost worker never runs on unseen.

    Connecting (in the constructor) leaves the caller's SIGTERM handler as it was: ray.init
    replaces it when called from the main thread, so it is called from a helper thread.
    """

    def __init__(
        self,
        address: str,
        *,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
        env: Mapping[str, str] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        _check_amounts(gpus_per_worker, cpus_per_worker)
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        # A worker that reserved no GPU must not use one: Ray leaves CUDA_VISIBLE_DEVICES alone
        # for such tasks, so N CPU workers with --device auto would all crowd onto GPU 0.
        no_gpu = {"CUDA_VISIBLE_DEVICES": ""} if gpus_per_worker == 0 else {}
        self.env = {"PYTHONUNBUFFERED": "1", **no_gpu, **(env or {})}
        self.placements: dict[str, Placement] = {}  # label -> where it runs, once Ray placed it
        self._ray = _import_ray()
        _connect(self._ray, address, connect_timeout)
        try:
            _check_fits(self._ray, address, gpus_per_worker, cpus_per_worker)
        except HpoError:
            self.close()
            raise
        self._labels: list[str] = []
        self._codes: dict[str, int] = {}
        self._runners: dict[str, Any] = {}  # label -> its CommandRunner actor
        self._events: queue.Queue[tuple[str, object]] = queue.Queue()
        self._stops: list[int] = []
        self._forwarded = 0
        self._unstarted: set[str] = set()  # labels stopped while Ray had no room for them
        self._on_line: OnLine = lambda _label, _text: None

    def start(
        self,
        commands: Sequence[Sequence[str]],
        on_line: OnLine,
        labels: Sequence[str] | None = None,
    ) -> None:
        """Place one Ray actor per command (labels default to w0, w1, ...); returns at once."""
        if self._labels:
            raise RuntimeError("RayPool.start() may be called once")
        self._labels = list(labels or [f"w{i}" for i in range(len(commands))])
        if len(self._labels) != len(commands) or len(set(self._labels)) != len(commands):
            raise ValueError("one distinct label per command is needed")
        self._on_line = on_line
        runner = self._ray.remote(CommandRunner).options(
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
            max_concurrency=2,  # read() waits in one thread, signal() arrives in the other
            max_restarts=0,  # a lost worker is reported, never restarted: its trial is retried
            scheduling_strategy="SPREAD",  # across nodes first: a lost node takes fewer workers
        )
        for label, argv in zip(self._labels, commands, strict=True):
            self._runners[label] = runner.remote()
            args = (label, list(argv))
            threading.Thread(target=self._follow, args=args, daemon=True).start()

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask every command to stop: signal `signum` goes to each running one, twice at most,
        then SIGKILL; commands Ray has not placed yet never start. Safe in a signal handler:
        it only records the request, which wait() passes on within TICK seconds."""
        self._stops.append(signum)

    def wait(self) -> list[int]:
        """Deliver lines until every command has ended; their exit codes, in command order:
        the command's own (128 + N if signal N killed it), LOST if its Ray worker process or
        node died, FAILED if its Ray actor could not run it."""
        open_tasks = len(self._labels) - len(self._codes)
        while open_tasks:
            self._forward_stops()
            try:
                label, event = self._events.get(timeout=TICK)
            except queue.Empty:
                continue
            open_tasks -= self._handle(label, event)
        return [self._codes[label] for label in self._labels]

    def close(self) -> None:
        """Disconnect from the cluster, which keeps running. Ray then ends this driver's
        actors, and the kernel any command still running with them (call wait() first)."""
        self._ray.shutdown()

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _follow(self, label: str, argv: list[str]) -> None:
        """In a thread per command: start it, then pull its lines until it has exited."""
        ray, runner = self._ray, self._runners[label]
        try:
            event = ray.get(runner.start.remote(argv, self.env))
            self._events.put((label, event))
            while not isinstance(event, Exited):
                event = ray.get(runner.read.remote())
                self._events.put((label, event))
        except ray.exceptions.RayTaskError as e:
            self._events.put((label, f"its Ray actor failed: {_first_line(e.cause or e)}"))
        except ray.exceptions.RayError as e:
            self._events.put((label, e))
        self._events.put((label, None))

    def _handle(self, label: str, event: object) -> int:
        """Act on one thing a runner said; 1 when its stream has ended, else 0."""
        if event is None:
            if label not in self._codes:
                self._gone(label, "its stream ended without an exit code")
            return 1
        match event:
            case Placement() as placed:
                self.placements[label] = placed
                self._on_line(label, f"running on {placed.node_ip} (pid {placed.pid})")
            case Lines(texts):
                for text in texts:
                    self._on_line(label, text)
            case Exited(code):
                self._codes[label] = code
            case str(failure):
                self._codes[label] = FAILED
                self._on_line(label, failure)
            case _:  # a Ray error: the runner's process or node died, or stop() removed it
                self._gone(label, type(event).__name__)
        return 0

    def _gone(self, label: str, why: str) -> None:
        if label in self._unstarted:
            self._codes[label] = 128 + self._stops[0]
            self._on_line(label, "stopped before Ray found room for it")
            return
        self._codes[label] = LOST
        where = self.placements.get(label)
        node = f" on node {where.node_ip}" if where else ""
        self._on_line(
            label,
            f"lost: its Ray worker process{node} or the node died ({why}); "
            "its command was killed with it",
        )

    def _forward_stops(self) -> None:
        while self._forwarded < len(self._stops):
            signum = self._stops[self._forwarded]
            self._forwarded += 1
            for label, runner in self._runners.items():
                if label in self._codes:
                    continue
                if label in self.placements:
                    runner.signal.remote(signum)
                elif label not in self._unstarted:  # still waiting for room: never start it
                    self._unstarted.add(label)
                    self._ray.kill(runner)


def _check_amounts(gpus: float, cpus: float) -> None:
    if not (math.isfinite(gpus) and gpus >= 0):
        raise UsageError(f"--gpus-per-worker {gpus:g} must be 0 or more")
    if gpus > 1 and not gpus.is_integer():
        raise UsageError(
            f"--gpus-per-worker {gpus:g}: Ray shares a GPU only in fractions below 1; "
            "use a whole number of GPUs above 1"
        )
    if not (math.isfinite(cpus) and cpus >= 0):
        raise UsageError(f"--cpus-per-worker {cpus:g} must be 0 or more")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise HpoError(
            "Ray is not installed: pip install 'mnist-hpo[ray]' (on the driver and every node)"
        ) from None
    return ray


def _connect(ray: Any, address: str, timeout: float) -> None:
    """Join the cluster at `address`, or one HpoError sentence within `timeout` seconds."""
    if address in ("", "local"):
        raise UsageError(
            f"--ray {address!r} would start a new Ray instance; start a cluster with "
            "`ray start --head` and pass its address (HOST:PORT, ray://HOST:PORT or auto)"
        )
    if address != "auto":
        _reach(address, timeout)
    outcome: dict[str, BaseException | None] = {}

    def join() -> None:
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            outcome["error"] = None
        except BaseException as e:  # reported in the caller's thread below
            outcome["error"] = e

    logging.getLogger("ray").setLevel(logging.ERROR)  # its warnings would print before init
    thread = threading.Thread(target=join, name="ray-connect", daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" not in outcome:
        raise HpoError(
            f"no Ray cluster answered at {address} within {timeout:g} s; give the address "
            "`ray start --head` printed (HOST:PORT from a node of the cluster, "
            "ray://HOST:10001 from elsewhere)"
        )
    error = outcome["error"]
    if error is not None and "InvalidAuthToken" in _chain(error):
        raise HpoError(
            f"the Ray cluster at {address} asks for its auth token; set RAY_AUTH_MODE=token "
            "and give the head's token as RAY_AUTH_TOKEN (or in ~/.ray/auth_token)"
        )
    if error is not None:
        first = _first_line(error)
        raise HpoError(f"cannot join the Ray cluster at {address} ({first}); check the address")


def _reach(address: str, timeout: float) -> None:
    """Open and close a TCP connection to the head: a wrong address fails here at once."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise HpoError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with "
            "`ray start --head --port PORT` or check the address"
        ) from None


def _check_fits(ray: Any, address: str, gpus: float, cpus: float) -> None:
    """Refuse at once what no node can run: Ray would keep such a task pending forever."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if gpus and not ray.cluster_resources().get("GPU"):
        raise HpoError(
            f"--gpus-per-worker {gpus:g}: the Ray cluster at {address} has no GPUs; start its "
            "GPU nodes with `ray start --num-gpus N`, or leave --gpus-per-worker out"
        )
    if not any(n.get("GPU", 0) >= gpus and n.get("CPU", 0) >= cpus for n in nodes):
        most: dict[str, float] = max(
            nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={}
        )
        raise HpoError(
            f"no node of the Ray cluster at {address} has {cpus:g} CPU(s) and {gpus:g} GPU(s) "
            f"for one worker (the largest has {most.get('CPU', 0):g} CPU(s) and "
            f"{most.get('GPU', 0):g} GPU(s)); "
            "lower --cpus-per-worker or --gpus-per-worker"
        )


def _chain(error: BaseException | None) -> str:
    """The messages of an error and of all its causes."""
    return f"{error}\n{_chain(error.__cause__)}" if error is not None else ""


def _first_line(error: BaseException) -> str:
    """`Type: first line of the message`, and its cause's, which Ray often hides behind it."""
    text = str(error).strip().splitlines()
    said = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return f"{said}: {_first_line(error.__cause__)}" if error.__cause__ else said
