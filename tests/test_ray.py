"""RayPool against a real Ray head started here: lines, exit codes, stops, lost workers, and real
`mnist-hpo work` processes finishing a study (and resuming a killed one) on Ray."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import EXAMPLE_PLUGIN, IN_CI, SMALL_SPEC, write_spec
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.fleet.ray_pool import LOST, NODE_PYTHON, RayPool
from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec_files import load_spec
from test_crash import ONE_TRIAL

SIGKILL = 9
SIGTERM = 15

# A stand-in worker: prints its pid and N lines, then `exit CODE`, `env NAMES` (prints them),
# `await PATH` (prints "ready", exits 0 once PATH exists) or `hold K` (prints "ready", runs
# until its K-th SIGTERM, then exits 143). Each SIGTERM prints "got signal 15 (n)".
FAKE = """
import os, signal, sys, time
n, then, arg = int(sys.argv[1]), sys.argv[2], sys.argv[3]
got = 0

def on_term(signum, frame):
    global got
    got += 1
    print(f"got signal {signum} ({got})", flush=True)
    if then == "hold" and got >= int(arg):
        sys.exit(143)

signal.signal(signal.SIGTERM, on_term)
print(f"pid {os.getpid()}", flush=True)
for i in range(n):
    print(f"line {i}", flush=True)
if then == "exit":
    sys.exit(int(arg))
if then == "env":
    for name in arg.split(","):
        print(f"{name}={os.environ.get(name, '<unset>')!r}")
    sys.exit(0)
print("ready", flush=True)
while then == "hold" or not os.path.exists(arg):
    time.sleep(0.05)
print("go", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ours(marker: str) -> list[int]:
    """Processes whose command line names `marker` (the head's own temp folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_text(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@contextlib.contextmanager
def _head(**env: str) -> Iterator[str]:
    """A one-node Ray cluster (2 CPUs, no GPU) on loopback; its address.

    `ray start --block` in the foreground, ended with SIGTERM, stops exactly the processes it
    started; `ray stop` would stop every Ray instance of this user on the machine."""
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()  # never 6379, Ray's default and Redis's port
    args = ["start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}"]
    args += ["--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"]
    args += [f"--temp-dir={temp}", "--object-store-memory=100000000"]
    # Fixed by default (8265, 52365, 10001): free ones, so two heads on one machine coexist.
    args += [f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}"]
    args += [f"--dashboard-agent-listen-port={_free_port()}"]
    log = Path(temp) / "head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), *args],
            stdout=out,
            stderr=out,
            env={**os.environ, **env},
        )
    try:
        _await_head(head, log)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        head.wait(timeout=60)
        _end_stragglers(temp)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """The module's Ray head, and the environment its drivers need."""
    if importlib.util.find_spec("ray") is None:
        message = "Ray is not installed (dev extra): cannot test the Ray pool"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    if sys.platform != "linux":
        pytest.skip("the Ray pool tests read /proc")
    patch = pytest.MonkeyPatch()
    # Keeps every Ray address on 127.0.0.1: on Linux Ray swaps it for the host's routable IP.
    patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # No token: a `ray start` finding ~/.ray/auth_token (any local ray.init() writes one)
    # would ask for it, and a driver sends it only with RAY_AUTH_MODE=token.
    patch.setenv("RAY_AUTH_MODE", "disabled")
    try:
        with _head() as address:
            yield address
    finally:
        patch.undo()


def _await_head(head: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if head.poll() is not None or time.monotonic() > deadline:
            pytest.fail("the Ray head did not start:\n" + log.read_text(errors="replace"))
        time.sleep(0.2)


def _end_stragglers(temp: str) -> None:
    """Ray's processes go with the head; kill any still there after 30 s (ours alone: the
    marker is this head's own folder)."""
    deadline = time.monotonic() + 30
    while _ours(temp) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _ours(temp):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, SIGKILL)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[str]]:
    script = tmp_path_factory.mktemp("fake") / "fake_worker.py"
    script.write_text(FAKE)
    return lambda n, then, arg="": [NODE_PYTHON, str(script), str(n), then, str(arg)]


class Run:
    """One pool run: every (label, line) it delivered, and the codes wait() returned."""

    def __init__(self, pool: RayPool) -> None:
        self.pool = pool
        self.lines: list[tuple[str, str]] = []
        self.reactions: list[Callable[[str, str], None]] = []

    def on_line(self, label: str, text: str) -> None:
        self.lines.append((label, text))
        for react in self.reactions:
            react(label, text)

    def of(self, label: str) -> list[str]:
        return [text for lab, text in self.lines if lab == label]

    def __call__(self, commands: list[list[str]], **start: object) -> list[int]:
        self.pool.start(commands, self.on_line, **start)  # type: ignore[arg-type]
        return self.pool.wait()


@pytest.fixture
def run(ray_head: str) -> Iterator[Run]:
    with RayPool(ray_head, env={"FROM_DRIVER": "yes"}) as pool:
        yield Run(pool)


def _when(run: Run, label: str | None, text: str, act: Callable[[str], None]) -> None:
    """Call act(label) once, the first time `label` (any, if None) prints `text`."""
    done: list[str] = []

    def react(lab: str, line: str) -> None:
        if not done and line == text and label in (None, lab):
            done.append(lab)
            act(lab)

    run.reactions.append(react)


def _when_all_ready(run: Run, count: int, act: Callable[[], None]) -> list[str]:
    """Call act() once `count` commands have printed "ready" (a signal sent before a command
    has set its handler up kills it without a word); the labels, as they come."""
    ready: list[str] = []

    def react(label: str, text: str) -> None:
        if text == "ready":
            ready.append(label)
            if len(ready) == count:
                act()

    run.reactions.append(react)
    return ready


def test_lines_stream_back_labelled_as_they_come_with_each_exit_code(
    run: Run, fake: Callable[..., list[str]], tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    # w0 ends only once the driver has seen its "ready": lines arrive while it still runs.
    _when(run, "w0", "ready", lambda _: flag.touch())
    codes = run([fake(3, "await", flag), fake(2, "exit", 3)])
    assert codes == [0, 3]
    placed = run.pool.placements
    assert set(placed) == {"w0", "w1"}
    pid = placed["w0"].pid
    assert run.of("w0") == [
        f"running on 127.0.0.1 (pid {pid})",
        f"pid {pid}",  # the command's own pid: the launcher exec'd it
        "line 0",
        "line 1",
        "line 2",
        "ready",
        "go",
    ]
    assert run.of("w1")[2:] == ["line 0", "line 1"]
    assert placed["w0"].ray_pid != pid and placed["w0"].node_ip == "127.0.0.1"


def test_the_driver_env_extras_reach_the_command_and_no_gpu_is_visible(
    run: Run, fake: Callable[..., list[str]]
) -> None:
    names = "FROM_DRIVER,CUDA_VISIBLE_DEVICES,PYTHONUNBUFFERED"
    assert run([fake(0, "env", names)], labels=["solo"]) == [0]
    assert run.of("solo")[2:] == [
        "FROM_DRIVER='yes'",
        "CUDA_VISIBLE_DEVICES=''",  # it reserved no GPU: it must not use one
        "PYTHONUNBUFFERED='1'",
    ]


def test_stop_sends_sigterm_to_each_command_and_a_second_stop_sends_it_again(
    run: Run, fake: Callable[..., list[str]]
) -> None:
    # A worker finishes its epoch on the first SIGTERM and exits at once on the second.
    _when_all_ready(run, 2, lambda: run.pool.stop(SIGTERM))
    _when(run, "w0", "got signal 15 (1)", lambda _: run.pool.stop(SIGTERM))
    assert run([fake(0, "hold", 2), fake(0, "hold", 1)]) == [143, 143]
    assert run.of("w0")[-2:] == ["got signal 15 (1)", "got signal 15 (2)"]
    assert "got signal 15 (1)" in run.of("w1")


def test_a_third_stop_kills_a_command_that_does_not_exit(
    run: Run, fake: Callable[..., list[str]]
) -> None:
    _when(run, "w0", "ready", lambda _: run.pool.stop(SIGTERM))
    _when(run, "w0", "got signal 15 (1)", lambda _: run.pool.stop(SIGTERM))
    _when(run, "w0", "got signal 15 (2)", lambda _: run.pool.stop(SIGTERM))
    assert run([fake(0, "hold", 99)]) == [128 + SIGKILL]


def test_commands_waiting_for_room_never_start_once_stopped(
    run: Run, fake: Callable[..., list[str]]
) -> None:
    # Two ready: the head's 2 CPUs are taken, the third waits for room.
    ready = _when_all_ready(run, 2, lambda: run.pool.stop(SIGTERM))
    assert run([fake(0, "hold", 1) for _ in range(3)]) == [143, 143, 143]
    (waiting,) = {"w0", "w1", "w2"} - set(ready)
    assert run.of(waiting) == ["stopped before Ray found room for it"]
    assert waiting not in run.pool.placements


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "State:\tZ" in status  # a zombie, dead until init reaps it


def test_a_killed_ray_worker_process_is_reported_lost_and_its_command_dies_with_it(
    run: Run, fake: Callable[..., list[str]]
) -> None:
    _when(run, "w0", "ready", lambda lab: os.kill(run.pool.placements[lab].ray_pid, SIGKILL))
    assert run([fake(0, "hold", 1)]) == [LOST]
    assert run.of("w0")[-1] == (
        "lost: its Ray worker process on node 127.0.0.1 or the node died (ActorDiedError); "
        "its command was killed with it"
    )
    command = run.pool.placements["w0"].pid
    deadline = time.monotonic() + 30
    while not _gone(command) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(command), "the command outlived its Ray worker process"


def test_a_command_that_cannot_be_run_exits_127(run: Run) -> None:
    assert run([["/nonexistent/mnist-hpo"]]) == [127]
    assert run.of("w0")[-1] == "cannot run /nonexistent/mnist-hpo: No such file or directory"


def test_connecting_leaves_the_callers_sigterm_handler_alone(ray_head: str) -> None:
    import signal  # only to read the handler: ray.init from the main thread replaces it

    def mine(_signum: int, _frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with RayPool(ray_head):
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_gpus_asked_of_a_cluster_without_gpus_is_one_clear_error(ray_head: str) -> None:
    with pytest.raises(HpoError, match=r"^--gpus-per-worker 0\.5: the Ray cluster at .* has no "):
        RayPool(ray_head, gpus_per_worker=0.5)
    with pytest.raises(
        HpoError, match=r"has 3 CPU\(s\) and 0 GPU\(s\) for one worker \(the largest has 2 CPU"
    ):
        RayPool(ray_head, cpus_per_worker=3)


@pytest.mark.slow
def test_a_cluster_that_wants_a_token_is_one_clear_error(ray_head: str) -> None:
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0123456789abcdef" * 2}
    with _head(**token) as address:
        # In a process of its own: a failed ray.init leaves Ray half set up in its process.
        code = f"from mnist_hpo.fleet.ray_pool import RayPool; RayPool({address!r})"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1
    assert (
        f"HpoError: the Ray cluster at {address} asks for its auth token; set RAY_AUTH_MODE=token"
    ) in r.stderr, r.stderr


def test_an_unreachable_address_is_one_clear_error() -> None:
    pytest.importorskip("ray")
    port = _free_port()  # nothing listens there
    with pytest.raises(HpoError, match=rf"^cannot reach a Ray cluster at 127\.0\.0\.1:{port} \("):
        RayPool(f"127.0.0.1:{port}")
    with pytest.raises(UsageError, match="is not HOST:PORT, ray://HOST:PORT or auto"):
        RayPool("head-without-port")
    with pytest.raises(UsageError, match="would start a new Ray instance"):
        RayPool("local")


def test_without_ray_installed_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(HpoError, match=r"pip install 'mnist-hpo\[ray\]'"):
        RayPool("127.0.0.1:1")


@pytest.mark.parametrize(
    ("gpus", "cpus", "says"),
    [
        (1.5, 1.0, "Ray shares a GPU only in fractions below 1"),
        (-1.0, 1.0, "--gpus-per-worker -1 must be 0 or more"),
        (0.0, math.nan, "--cpus-per-worker nan must be 0 or more"),
    ],
)
def test_impossible_amounts_are_usage_errors(gpus: float, cpus: float, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(says)):
        RayPool("127.0.0.1:1", gpus_per_worker=gpus, cpus_per_worker=cpus)


def _work(study: str, url: str, mnist_dir: Path, *extra: str) -> list[str]:
    """The real CLI worker, as `work --ray` would start it on each node."""
    argv = [sys.executable, "-m", "mnist_hpo", "work", study, "--storage", url, "--threads", "1"]
    return [*argv, "--data-dir", str(mnist_dir), *extra]


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return study_mod.load(storage_mod.open_storage(url, must_exist=True), name)[0].get_trials()


@pytest.mark.slow
def test_real_workers_on_ray_spend_exactly_the_budget(
    ray_head: str, storage_url: str, mnist_dir: Path, tmp_path: Path
) -> None:
    spec = load_spec(str(write_spec(tmp_path, "onray", SMALL_SPEC)))
    study_mod.create(storage_mod.open_storage(storage_url), spec)
    env = {"MNIST_HPO_ARTIFACTS": str(tmp_path / "artifacts")}
    with RayPool(ray_head, env=env) as pool:
        run = Run(pool)
        codes = run([_work("onray", storage_url, mnist_dir) for _ in range(2)])
    output = "\n".join(f"[{lab}] {text}" for lab, text in run.lines)
    assert codes == [0, 0], output
    assert "Traceback" not in output
    for label in ("w0", "w1"):
        assert any(t.startswith("worker done:") for t in run.of(label)), output
    states = [t.state for t in _trials(storage_url, "onray")]
    assert len(states) == spec.budget() == 4, states
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, states


@pytest.mark.slow
def test_a_ray_worker_killed_mid_trial_is_retried_and_resumed_by_another(
    ray_head: str, mnist_dir: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_spec(str(write_spec(tmp_path, "crash", ONE_TRIAL)))
    study_mod.create(storage_mod.open_storage(url), spec)
    env = {"MNIST_HPO_HEARTBEAT": "1", "MNIST_HPO_GRACE": "5"}
    env |= {"MNIST_HPO_ARTIFACTS": str(tmp_path / "artifacts"), "MNIST_HPO_STORAGE_WAIT": "60"}
    with RayPool(ray_head, env=env) as pool:
        run = Run(pool)
        killed: list[str] = []

        def kill_mid_trial(label: str, text: str) -> None:
            if not killed and text.startswith("trial 0 epoch 2/12"):
                killed.append(label)
                os.kill(pool.placements[label].ray_pid, SIGKILL)

        run.reactions.append(kill_mid_trial)
        codes = run([_work("crash", url, mnist_dir, "-v") for _ in range(2)])
    output = "\n".join(f"[{lab}] {text}" for lab, text in run.lines)
    (victim,) = killed
    (other,) = {"w0", "w1"} - {victim}
    assert dict(zip(["w0", "w1"], codes, strict=True)) == {victim: LOST, other: 0}, output
    first, retry = _trials(url, "crash")
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    saved = max(first.intermediate_values)
    assert retry.user_attrs["resumed_from_epoch"] == saved >= 1
    assert any(f"trial 1 started (resumed after epoch {saved})" in t for t in run.of(other))
    assert "Traceback" not in output


@pytest.mark.slow
def test_work_with_ray_runs_a_study_to_exactly_its_budget(
    ray_head: str, mnist_dir: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_spec(str(write_spec(tmp_path, "viaray", SMALL_SPEC)))
    study_mod.create(storage_mod.open_storage(url), spec)
    env = {**os.environ, "MNIST_HPO_ARTIFACTS": str(tmp_path / "artifacts")}
    cmd = [sys.executable, "-m", "mnist_hpo", "work", "viaray", "--storage", url]
    cmd += ["--data-dir", str(mnist_dir), "--ray", ray_head, "--workers", "2"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"starting 2 workers on the Ray cluster at {ray_head}" in r.stdout
    assert "[w0] worker done" in r.stdout and "[w1] worker done" in r.stdout, r.stdout
    assert "trials: 4/4 of the budget used" in r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    states = [t.state for t in _trials(url, "viaray")]
    assert len(states) == 4 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}


@pytest.mark.slow
def test_work_with_ray_runs_a_plugin_family_checked_on_each_node(
    ray_head: str, mnist_dir: Path, tmp_path: Path, lenet5_plugin: str
) -> None:
    # The example plugin, installed where the nodes' Python finds it (one node here: this
    # environment), as docs/families.md asks of every node.
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_spec(str(EXAMPLE_PLUGIN / "lenet5.toml"))
    study_mod.create(storage_mod.open_storage(url), spec)
    env = {**os.environ, "MNIST_HPO_ARTIFACTS": str(tmp_path / "artifacts")}
    cmd = [sys.executable, "-m", "mnist_hpo", "work", "lenet5", "--storage", url]
    cmd += ["--data-dir", str(mnist_dir), "--ray", ray_head, "--workers", "2"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for label in ("w0", "w1"):  # each worker resolved the plugin and compared its origin
        assert f"[{label}] family lenet5: plugin lenet5_family.lenet5 (package lenet5-family" in (
            r.stdout
        ), r.stdout
    assert "trials: 4/4 of the budget used" in r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_work_with_ray_and_jobs_is_one_sentence(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_hpo",
            "work",
            "x",
            "--storage",
            url,
            "--ray",
            "h:1",
            "-j",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--ray places --workers N workers" in r.stderr, r.stderr


def test_work_with_an_unreachable_ray_address_is_one_sentence(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study_mod.create(
        storage_mod.open_storage(url), load_spec(str(write_spec(tmp_path, "x", SMALL_SPEC)))
    )
    cmd = [sys.executable, "-m", "mnist_hpo", "work", "x", "--storage", url]
    r = subprocess.run(
        [*cmd, "--ray", f"127.0.0.1:{_free_port()}"], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
