"""Crash safety and scale-out in real processes: SIGKILL, SIGTERM, Ctrl-C, a pause, 4 workers on one
study, a PostgreSQL restart mid-study, and an unreachable storage. Heartbeat 1 s, grace 5 s.
The worker-process tests are `slow` (scripts/test.sh -m slow; CI runs them too)."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from conftest import run_cli, write_spec
from mnist_hpo.resilience import retries
from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.resilience.stop import Stop
from mnist_hpo.resilience.trials import Swept, Trials
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.budget import uses_budget
from mnist_hpo.search.checkpoints import Pointer
from mnist_hpo.search.spec_files import load_spec
from mnist_hpo.settings import Settings

# One trial of 12 short epochs with fixed hyperparameters: long enough (12 epochs) that a test
# reacting to the "epoch 2/12" line always catches the trial still running.
ONE_TRIAL = """
family = "simple_mlp"
epochs = 12
n_trials = 1
seed = 0
train_size = 4000
validation_size = 1000

[params]
hidden = 64
dropout = 0.0
batch_size = 64
optimizer = "adam"
lr = 0.001
loss = "cross_entropy"
schedule = "cosine"
weight_decay = 0.0001
"""

# Many tiny trials for several workers at once.
MANY_TRIALS = """
family = "perceptron"
epochs = 2
n_trials = 8
seed = 0
train_size = 1000
validation_size = 500

[params]
batch_size = [64, 128]
"""


def _env(tmp_path: Path, storage: str, mnist_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "MNIST_HPO_STORAGE": storage,
        "MNIST_HPO_DATA": str(mnist_dir),
        "MNIST_HPO_ARTIFACTS": str(tmp_path / "artifacts"),
        "MNIST_HPO_HEARTBEAT": "1",
        "MNIST_HPO_GRACE": "5",
        "MNIST_HPO_STORAGE_WAIT": "60",
        **extra,
    }


class Worker:
    """A `mnist-hpo work` process whose output lines are read as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mnist_hpo", "work", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 120) -> str:
        """Read lines until one matches `pattern` (a regex); fail if the process ends first."""
        while True:
            line = self._queue.get(timeout=timeout)
            if line is None:
                pytest.fail(f"worker ended before printing {pattern!r}:\n" + self.output)
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def finish(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _create(url: str, tmp_path: Path, body: str, name: str = "crash") -> None:
    study_mod.create(
        storage_mod.open_storage(url), load_spec(str(write_spec(tmp_path, name, body)))
    )


def _trials(url: str, name: str = "crash") -> list[optuna.trial.FrozenTrial]:
    return study_mod.load(storage_mod.open_storage(url, must_exist=True), name)[0].get_trials()


def _checkpoint_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "artifacts"  # also holds what finished trials kept (search/kept.py)
    return sorted(p.name for p in folder.glob("ckpt-*")) if folder.is_dir() else []


def _assert_nothing_lost(trials: list[optuna.trial.FrozenTrial], budget: int, extra: int) -> None:
    """Every trial finished, or failed and was retried by a trial that finished; budget kept."""
    finished = {TrialState.COMPLETE, TrialState.PRUNED}
    retried = {
        n for t in trials if t.state in finished for n in t.system_attrs.get("retry_history", [])
    }
    for t in trials:
        assert t.state in finished or (t.state == TrialState.FAIL and t.number in retried), (
            t.number,
            t.state,
        )
    done = sum(t.state in finished for t in trials)
    # One worker at a time takes a new trial (the take-a-trial lock), so the budget is exact;
    # `extra` allows for a database restart in the instant a trial is created (README).
    assert budget <= done <= budget + extra, (done, budget)


@pytest.mark.slow
def test_sigkill_mid_trial_is_retried_from_its_checkpoint(tmp_path: Path, mnist_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path, ONE_TRIAL)
    env = _env(tmp_path, url, mnist_dir)
    a = Worker(env, "crash", "-v", "--threads", "1")
    a.wait_for(r"trial 0 epoch 2/12")
    a.proc.send_signal(signal.SIGKILL)
    assert a.finish() == -signal.SIGKILL
    [killed] = _trials(url)
    assert killed.state == TrialState.RUNNING  # killed mid-trial, not after it
    saved = max(killed.intermediate_values)  # each reported epoch has its checkpoint
    assert saved >= 2

    # The second worker waits for the heartbeat to expire (grace 5 s), fails trial 0 and
    # retries it as trial 1, resuming after the last checkpointed epoch.
    b = Worker(env, "crash", "-v", "--threads", "1")
    assert b.finish() == 0, b.output
    assert f"trial 1 started (resumed after epoch {saved})" in b.output
    trained = [int(m) for m in re.findall(r"trial 1 epoch (\d+)/12", b.output)]
    assert trained == list(range(saved + 1, 13))  # the finished epochs were not trained again
    first, retry = _trials(url)
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["retry_history"] == [0]
    assert retry.user_attrs["resumed_from_epoch"] == saved
    assert retry.user_attrs["epochs_trained"] == 12 - saved
    assert sorted(retry.intermediate_values) == list(range(1, 13))
    assert len(retry.user_attrs["val_accuracy_per_epoch"]) == 12
    assert retry.value is not None and retry.value > 0.8
    assert _checkpoint_files(tmp_path) == []  # a finished trial's checkpoints are deleted
    assert "Traceback" not in a.output + b.output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "name"),
    [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")],
)
def test_sigterm_or_ctrl_c_requeues_the_trial_and_exits(
    tmp_path: Path, mnist_dir: Path, signum: int, code: int, name: str
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path, ONE_TRIAL)
    a = Worker(_env(tmp_path, url, mnist_dir), "crash", "-v", "--threads", "1")
    a.wait_for(r"trial 0 epoch 2/12")
    a.proc.send_signal(signum)
    assert a.finish() == code, a.output
    assert re.search(
        rf"stopped by {name}: trial 0 \(stopped mid-trial\) was re-queued; its retry resumes "
        r"after epoch \d+",
        a.output,
    ), a.output
    assert "Traceback" not in a.output
    failed, waiting = _trials(url)
    assert failed.state == TrialState.FAIL and waiting.state == TrialState.WAITING
    saved = max(failed.intermediate_values)
    assert 2 <= saved < 12
    assert max(waiting.intermediate_values) == saved  # the retry resumes from there
    assert waiting.system_attrs["retry_history"] == [0]
    pointer = Pointer.of(waiting)  # the retry reads what trial 0 wrote
    assert pointer is not None and pointer.attempt == 0
    assert pointer.artifact_id(saved) in _checkpoint_files(tmp_path)


@pytest.mark.slow
def test_second_signal_exits_at_once(tmp_path: Path, mnist_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path, ONE_TRIAL)
    # STOP_WAIT far above the test's time: only the second signal can end the worker early.
    a = Worker(
        _env(tmp_path, url, mnist_dir, MNIST_HPO_STOP_WAIT="600"), "crash", "-v", "--threads", "1"
    )
    a.wait_for(r"trial 0 epoch 1/12")
    a.proc.send_signal(signal.SIGTERM)
    a.wait_for(r"SIGTERM: stopping after the current epoch")
    a.proc.send_signal(signal.SIGTERM)
    assert a.finish() == 143
    assert "second SIGTERM: exiting at once" in a.output
    assert "Traceback" not in a.output


@pytest.mark.slow
def test_stop_wait_bounds_the_wait_for_an_epoch(tmp_path: Path, mnist_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    # Long epochs (40,000 images at batch 16: seconds each), so the signal lands mid-epoch.
    long = ONE_TRIAL.replace("train_size = 4000", "train_size = 40000")
    _create(url, tmp_path, long.replace("batch_size = 64", "batch_size = 16"))
    # STOP_WAIT 0: the epoch in progress is abandoned at the next batch, the trial re-queued
    # from the last finished one.
    a = Worker(
        _env(tmp_path, url, mnist_dir, MNIST_HPO_STOP_WAIT="0"), "crash", "-v", "--threads", "1"
    )
    a.wait_for(r"trial 0 epoch 1/12")
    time.sleep(0.5)  # into epoch 2's batches
    a.proc.send_signal(signal.SIGTERM)
    assert a.finish() == 143
    assert re.search(
        r"stopped by SIGTERM: the epoch did not finish within 0 s; trial 0 \(its epoch was cut "
        r"short\) was re-queued; its retry resumes after epoch 1",
        a.output,
    ), a.output
    failed, waiting = _trials(url)
    assert failed.state == TrialState.FAIL and waiting.state == TrialState.WAITING
    assert sorted(waiting.intermediate_values) == [1]  # the cut epoch 2 was never reported


@pytest.mark.slow
@pytest.mark.postgres
def test_a_paused_worker_whose_trial_was_taken_over_lets_it_go(
    tmp_path: Path, mnist_dir: Path, pg_url: str
) -> None:
    # A VM pause, a closed laptop lid, a scheduler's suspend: the worker stops sending
    # heartbeats past the grace period, another worker fails its trial as dead and resumes it.
    # PostgreSQL: on SQLite a worker paused inside a transaction holds the file's write lock,
    # so the others wait for it to wake up (docs/crash-safety.md).
    url = pg_url
    _create(url, tmp_path, ONE_TRIAL)
    env = _env(tmp_path, url, mnist_dir)
    a = Worker(env, "crash", "-v", "--threads", "1")
    a.wait_for(r"trial 0 epoch 2/12")
    a.proc.send_signal(signal.SIGSTOP)
    paused = time.monotonic()
    b = Worker(env, "crash", "-v", "--threads", "1")  # fails trial 0 as dead once its grace is up
    resumed = b.wait_for(r"trial 1 started \(resumed after epoch \d+\)")
    saved = int(re.findall(r"after epoch (\d+)", resumed)[0])
    stalled = time.monotonic() - paused
    a.proc.send_signal(signal.SIGCONT)
    line = a.wait_for(r"trial 0 was taken over")
    assert re.fullmatch(
        r"trial 0 was taken over by another worker after this one stalled for \d+ s; moving on",
        line,
    ), line
    assert int(re.findall(r"stalled for (\d+) s", line)[0]) >= min(5, int(stalled) - 1)
    assert a.finish() == 0, a.output
    assert b.finish() == 0, b.output
    assert "Traceback" not in a.output + b.output
    first, retry = _trials(url)
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from_epoch"] == saved
    # The woken worker wrote nothing more to its old trial: no epoch past what the retry took.
    assert max(first.intermediate_values) == saved
    assert not re.search(r"trial 0 epoch ([3-9]|1\d)/12", a.output.split(line)[1])
    assert _checkpoint_files(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_four_workers_share_one_study(
    tmp_path: Path, mnist_dir: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 's.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    _create(url, tmp_path, MANY_TRIALS)
    w = Worker(_env(tmp_path, url, mnist_dir), "crash", "--jobs", "4")
    assert w.finish(timeout=300) == 0, w.output
    for n in range(4):
        assert f"[w{n}] worker done" in w.output
    for bad in ("Traceback", "database is locked", "storage unavailable", "error:"):
        assert bad not in w.output, w.output
    _assert_nothing_lost(_trials(url), budget=8, extra=0)
    assert _checkpoint_files(tmp_path) == []


def _pg_restart_command() -> list[str]:
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None:
        pytest.skip("pg_lsclusters/pg_ctlcluster not found: cannot restart PostgreSQL here")
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        version, cluster, port, *_ = line.split()
        if port == "5432":
            return ["pg_ctlcluster", version, cluster, "restart"]
    pytest.skip("no PostgreSQL cluster on port 5432 in pg_lsclusters")


@pytest.mark.slow
def test_postgres_restart_mid_study(tmp_path: Path, mnist_dir: Path, pg_url: str) -> None:
    restart = _pg_restart_command()
    body = MANY_TRIALS.replace("epochs = 2", "epochs = 4")
    _create(pg_url, tmp_path, body)
    w = Worker(_env(tmp_path, pg_url, mnist_dir), "crash", "--jobs", "2")
    w.wait_for(r"trial \d+ (complete|pruned)")
    r = subprocess.run(restart, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        w.proc.kill()
        pytest.skip(f"cannot restart PostgreSQL here: {r.stderr.strip()}")
    assert w.finish(timeout=300) == 0, w.output
    assert "Traceback" not in w.output
    _assert_nothing_lost(_trials(pg_url), budget=8, extra=1)


def test_unreachable_storage_is_a_clear_error_after_a_bounded_wait(tmp_path: Path) -> None:
    env = {**os.environ, "MNIST_HPO_STORAGE_WAIT": "2"}
    r = subprocess.run(
        [sys.executable, "-m", "mnist_hpo", "work", "x"],
        env={**env, "MNIST_HPO_STORAGE": "postgresql://nobody@127.0.0.1:1/x"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert re.match(
        r"error: cannot open storage postgresql(\+psycopg)?://nobody@127\.0\.0\.1:1/x \(.*still "
        r"after [23] s of retries\); check that the database server is running",
        lines[0],
    ), lines[0]


def test_bad_heartbeat_settings_are_usage_errors(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MNIST_HPO_STORAGE": f"sqlite:///{tmp_path / 's.db'}",
        "MNIST_HPO_HEARTBEAT": "10",
        "MNIST_HPO_GRACE": "5",
    }
    r = subprocess.run(
        [sys.executable, "-m", "mnist_hpo", "work", "perceptron"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "MNIST_HPO_GRACE (5 s) must exceed --heartbeat / MNIST_HPO_HEARTBEAT (10 s)" in r.stderr


def _view(url: str, name: str = "crash", **settings: float) -> Trials:
    """One worker's view of the study, with short heartbeat settings."""
    storage = storage_mod.open_storage(url)
    study, spec = study_mod.load(storage, name)
    return Trials(
        study,
        storage,
        Settings(**{"heartbeat": 1, "grace": 2, **settings}),  # type: ignore[arg-type]
        budget=spec.budget(),
        counts=uses_budget,
        stop=Stop.unsignalled(),
        note=print,
    )


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path, ONE_TRIAL)
    trials = _view(url)
    trials.study.ask()  # RUNNING, and no heartbeat ever: the worker "died" right after taking it
    time.sleep(2.5)
    swept = trials.sweep_dead()
    assert [t.number for t in swept.retried] == [0] and swept.given_up == []
    states = [t.state for t in trials.study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert trials.sweep_dead() == Swept([], [])  # done once, not again


def test_sqlite_storage_uses_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    storage = storage_mod.open_storage(f"sqlite:///{tmp_path / 's.db'}")
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60_000


def _fail_latest(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """Take the queued (or a new) trial and fail it, as a dying or stopped worker leaves it."""
    trial = study.ask()
    return study.tell(trial, state=TrialState.FAIL)


def test_stops_never_use_up_the_retry_allowance_but_crashes_do(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path, ONE_TRIAL)
    study, _ = study_mod.load(storage_mod.open_storage(url), "crash")
    first = study.ask()
    first.set_user_attr("checkpoint", {"key": "k", "attempt": 0})
    first.report(0.5, 1)
    failed = study.tell(first, state=TrialState.FAIL)
    # A spot machine preempted again and again: every stop is re-queued (Optuna's own callback
    # gives up after max_retry of them, dropping the trial and its finished epochs).
    for _ in range(retries.MAX_RETRY + 2):
        assert retries.requeue(study, failed, stopped=True)
        failed = _fail_latest(study)
    # Then it kills its worker: crashes are retried MAX_RETRY times, then it is given up.
    for _ in range(retries.MAX_RETRY):
        assert retries.requeue(study, failed, stopped=False)
        failed = _fail_latest(study)
    assert not retries.requeue(study, failed, stopped=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * (2 * retries.MAX_RETRY + 3)
    last = trials[-1]
    assert last.system_attrs["failed_trial"] == 0
    assert last.system_attrs["retry_history"] == list(range(last.number))
    assert retries.crashes(last) == retries.MAX_RETRY
    # Each retry carried the parameters, the checkpoint pointer and the reported epoch.
    assert last.params == trials[0].params and last.user_attrs["checkpoint"]["key"] == "k"
    assert last.intermediate_values == {1: 0.5}


def test_a_retry_that_died_before_its_first_epoch_passes_on_the_older_checkpoint(
    tmp_path: Path,
) -> None:
    # Trial 0 checkpoints epoch 1 and dies; its retry (trial 1) resumes from it, names its own
    # files, and dies before finishing an epoch; trial 2 must still resume after epoch 1 (the
    # file is trial 0's), not start from scratch.
    from mnist_hpo.search.checkpoints import Checkpoints

    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path, ONE_TRIAL)
    study, _ = study_mod.load(storage_mod.open_storage(url), "crash")
    checkpoints = Checkpoints.at(str(tmp_path / "artifacts"))
    first = study.ask()
    first.set_user_attr("checkpoint", Pointer("k", first.number).to_attr())
    checkpoints.save(Pointer("k", first.number), 1, {"epoch": 1, "w": torch.ones(3)})
    first.report(0.5, 1)
    failed = study.tell(first, state=TrialState.FAIL)
    assert retries.requeue(study, failed, stopped=False)
    second = study.ask()
    second.set_user_attr("checkpoint", Pointer("k", second.number).to_attr())
    assert retries.requeue(study, study.tell(second, state=TrialState.FAIL), stopped=False)
    third = study.get_trials(states=(TrialState.WAITING,))[0]
    assert Pointer.of(third) == Pointer("k", 1) and max(third.intermediate_values) == 1
    with pytest.raises(LookupError, match="is not in"):
        checkpoints.load(Pointer("k", 1), 1)  # the newest attempt never wrote epoch 1
    state = checkpoints.load_inherited(third, 1)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_a_given_up_trial_is_said_and_its_checkpoints_removed(
    tmp_path: Path, mnist_dir: Path
) -> None:
    from mnist_hpo.fleet import worker
    from mnist_hpo.search.checkpoints import Checkpoints, Pointer

    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path, ONE_TRIAL.replace("epochs = 12", "epochs = 1"))
    study, _ = study_mod.load(storage_mod.open_storage(url), "crash")
    first = study.ask()
    pointer = Pointer("ckpt-crash-t0-x", 0)
    first.set_user_attr("checkpoint", pointer.to_attr())
    folder = str(tmp_path / "artifacts")
    Checkpoints.at(folder).save(pointer, 1, {"epoch": 1})
    failed = study.tell(first, state=TrialState.FAIL)
    for i in range(retries.MAX_RETRY):
        assert retries.requeue(study, failed, stopped=False)
        if i < retries.MAX_RETRY - 1:
            failed = _fail_latest(study)
    last = study.ask()  # the third retry: its worker dies too, before any heartbeat
    assert _checkpoint_files(tmp_path) == ["ckpt-crash-t0-x-a0-e1"]
    time.sleep(2.5)  # longer than the grace: the next worker fails it as dead and gives it up
    notes: list[str] = []
    options = worker.WorkOptions(data_dir=mnist_dir, artifacts=folder, wait=False, n_trials=1)
    worker.run(
        url,
        "crash",
        options,
        Settings(heartbeat=1, grace=2),
        listener=lambda e: notes.append(getattr(e, "text", "")),
    )
    said = [n for n in notes if "given up" in n]
    assert said == [
        f"trial {last.number} was given up: its worker died {retries.MAX_RETRY + 1} times "
        "(out of memory?); its checkpoints are removed"
    ], notes
    assert _checkpoint_files(tmp_path) == []
    r = run_cli("status", "crash", env={"MNIST_HPO_STORAGE": url})
    assert f"given up: trial {last.number}: its worker died 4 times" in r.stdout, r.stdout


def test_the_worker_that_ends_a_study_removes_checkpoints_a_cleanup_missed(
    tmp_path: Path, mnist_dir: Path
) -> None:
    from mnist_hpo.fleet import worker
    from mnist_hpo.search.checkpoints import Checkpoints, Pointer

    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path, ONE_TRIAL)
    study, _ = study_mod.load(storage_mod.open_storage(url), "crash")
    trial = study.ask()
    pointer = Pointer("ckpt-crash-t0-y", 0)
    trial.set_user_attr("checkpoint", pointer.to_attr())
    folder = str(tmp_path / "artifacts")
    Checkpoints.at(folder).save(pointer, 1, {"epoch": 1})
    study.tell(trial, 0.9)  # its worker was killed right after this, before its cleanup
    notes: list[str] = []
    options = worker.WorkOptions(data_dir=mnist_dir, artifacts=folder)
    summary = worker.run(
        url, "crash", options, listener=lambda e: notes.append(getattr(e, "text", ""))
    )
    assert summary.trials == 0 and "budget of 1 trials is spent" in summary.stop_reason
    assert "removed 1 checkpoint file(s) of interrupted trials" in notes, notes
    assert _checkpoint_files(tmp_path) == []


class Outage:
    """A TCP relay to the PostgreSQL server that can drop every connection and refuse new ones:
    a database that is gone for as long as the test wants (a restart is over in seconds)."""

    def __init__(self, target: tuple[str, int]) -> None:
        import socket

        self.target = target
        self.down = threading.Event()
        self.open: list[socket.socket] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:  # type: ignore[no-untyped-def]
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            a.close()
            b.close()

    def cut(self) -> None:
        import socket

        self.down.set()
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


@pytest.mark.slow
def test_a_database_gone_longer_than_the_wait_is_one_line_and_no_work_is_lost(
    tmp_path: Path, mnist_dir: Path, pg_url: str
) -> None:
    from sqlalchemy.engine import make_url

    _create(pg_url, tmp_path, ONE_TRIAL.replace("epochs = 12", "epochs = 30"))
    url = make_url(pg_url)
    outage = Outage((url.host or "127.0.0.1", url.port or 5432))
    relayed = url.set(host="127.0.0.1", port=outage.port).render_as_string(hide_password=False)
    env = _env(tmp_path, relayed, mnist_dir, MNIST_HPO_STORAGE_WAIT="3")
    try:
        w = Worker(env, "crash", "-v")
        w.wait_for(r"epoch 3/30")
        outage.cut()
        assert w.finish(timeout=120) == 1, w.output
        assert "Traceback" not in w.output, w.output
        errors = [line for line in w.lines if line.startswith("error: ")]
        assert len(errors) == 1 and "did not come back within 3 s" in errors[0], w.output
        assert "start the worker again" in errors[0]
        outage.restore()
        w = Worker(env, "crash")  # after the grace, it retries the trial from its checkpoint
        assert w.finish(timeout=180) == 0, w.output
        assert "Traceback" not in w.output
    finally:
        outage.close()
    trials = _trials(pg_url)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["resumed_from_epoch"] >= 3
    assert _checkpoint_files(tmp_path) == []


def test_a_trial_that_raises_is_recorded_and_skipped_and_three_in_a_row_stop_the_worker(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import mnist_hpo.search.objective as objective_mod
    from mnist_hpo.cli import app

    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path, MANY_TRIALS.replace("n_trials = 8", "n_trials = 2"))
    real_train = objective_mod.train
    calls = 0

    def first_one_fails(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:  # as torch says when a large configuration does not fit
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(objective_mod, "train", first_one_fails)
    env = _env(tmp_path, url, mnist_dir)
    threads = torch.get_num_threads()  # `work` in this process sets the process's thread count
    try:
        r = CliRunner().invoke(app, ["work", "crash"], env=env)
        assert r.exit_code == 0, r.output
        assert "trial 0 failed: RuntimeError: DefaultCPUAllocator: not enough memory" in r.output
        assert "it is not retried" in r.output and "Traceback" not in r.output
        trials = _trials(url)
        # The failed trial does not use up the budget: two more ran and finished.
        assert trials[0].state == TrialState.FAIL
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
        assert trials[0].user_attrs["error"].startswith("RuntimeError: DefaultCPUAllocator")
        r = CliRunner().invoke(app, ["status", "crash"], env=env)
        assert "given up: trial 0: RuntimeError: DefaultCPUAllocator" in r.output, r.output

        def always_fails(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise ValueError("a bug")

        monkeypatch.setattr(objective_mod, "train", always_fails)
        _create(url, tmp_path, MANY_TRIALS, name="broken")
        r = CliRunner().invoke(app, ["work", "broken"], env=env)
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert "error: 3 trials in a row failed, the last with ValueError: a bug; fix the cause" in (
        r.output
    ), r.output
    assert [t.state for t in _trials(url, "broken")] == [TrialState.FAIL] * 3
