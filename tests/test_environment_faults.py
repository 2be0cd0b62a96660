"""A broken environment never costs a configuration: damaged checkpoints are skipped and the
retry resumes from the newest one that reads; a full artifact folder (a real tmpfs), a deleted
one and an S3 store that refuses or vanishes (a local fake that boto3 talks to over HTTP) hand
the trial back and stop the worker with exit 74 and one sentence. Every fault is real: real
files, a real filesystem, real boto3 errors; nothing on the error path is mocked."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from conftest import write_spec
from mnist_hpo.errors import EnvironmentFault, Interrupted
from mnist_hpo.events import EpochDone, Event, Note
from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.resilience.environment import environment_fault
from mnist_hpo.resilience.stop import Stop
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.checkpoints import Checkpoints, Damaged, Pointer
from mnist_hpo.search.spec_files import load_spec
from mnist_hpo.settings import Settings

# One trial, 4 short epochs of a perceptron (a checkpoint is ~95 KB with Adam's state): each
# in-process run takes a few seconds.
ONE_TRIAL = """
family = "perceptron"
epochs = 4
n_trials = 1
seed = 0
train_size = 1000
validation_size = 500

[params]
batch_size = 64
optimizer = "adam"
lr = 0.003
"""


# ---------------------------------------------------------------- the rule itself


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.EIO, "input/output error"),
    ],
)
def test_disk_errors_anywhere_in_a_trial_are_the_environments(code: int, words: str) -> None:
    error = OSError(code, os.strerror(code), "/data/x")
    fault = environment_fault(error)
    assert fault is not None and fault.exit_code == 74
    assert str(fault).startswith(f"/data/x: {words}"), str(fault)
    try:  # torch and others wrap the OSError: the cause chain is read
        try:
            raise error
        except OSError as e:
            raise RuntimeError("PytorchStreamWriter failed writing file") from e
    except RuntimeError as wrapped:
        assert environment_fault(wrapped) is not None


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 10 GB"),
        MemoryError(),
        OSError(errno.ENOMEM, "Cannot allocate memory"),  # out of memory is the trial's own
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x784 and 100x10)"),
        ValueError("optimizer got an empty parameter list"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "x"),
    ],
)
def test_a_trials_own_errors_stay_its_own(error: BaseException) -> None:
    assert environment_fault(error) is None


def test_in_the_artifact_store_any_os_error_is_the_environments(tmp_path: Path) -> None:
    gone = FileNotFoundError(errno.ENOENT, "No such file or directory")
    fault = environment_fault(gone, store=str(tmp_path), doing="writing x")
    assert fault is not None
    assert str(fault).startswith(f"artifact folder {tmp_path} is gone (No such file")
    assert "restore or remount it" in str(fault)


# ---------------------------------------------------------------- damaged checkpoints


def _chain_of_three(tmp_path: Path) -> tuple[Checkpoints, FrozenTrial]:
    """A trial that saved epochs 1-3 (real torch.save files) and was handed back: its retry."""
    checkpoints = Checkpoints.at(str(tmp_path / "artifacts"))
    pointer = Pointer("ckpt-x-t0-ab", 0)
    for epoch in (1, 2, 3):
        checkpoints.save(pointer, epoch, {"epoch": epoch, "val_history": [0.5] * epoch})
    retry = optuna.create_trial(
        state=TrialState.WAITING,
        user_attrs={"checkpoint": pointer.to_attr()},
        system_attrs={"retry_history": [0], "failed_trial": 0},
        intermediate_values={1: 0.5, 2: 0.6, 3: 0.7},
    )
    return checkpoints, retry


def _file(tmp_path: Path, epoch: int, attempt: int = 0) -> Path:
    return tmp_path / "artifacts" / f"ckpt-x-t0-ab-a{attempt}-e{epoch}"


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(path.stat().st_size))


def _half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _other_trials(path: Path) -> None:
    """Another trial's checkpoint of the same epoch, copied over this one."""
    other = Checkpoints.at(str(path.parent))
    other.save(Pointer("ckpt-x-t9-cd", 9), 3, {"epoch": 3, "val_history": [0.1] * 3})
    os.replace(path.parent / "ckpt-x-t9-cd-a9-e3", path)


def _older_epoch(path: Path) -> None:
    shutil.copyfile(path.with_name(path.name.replace("-e3", "-e2")), path)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_random_bytes, "is unreadable (UnpicklingError"),
        (_half, "is unreadable ("),
        (_other_trials, "holds ckpt-x-t9-cd-a9-e3 (epoch 3), not its own"),
        (_older_epoch, "holds ckpt-x-t0-ab-a0-e2 (epoch 2), not its own"),
    ],
)
def test_a_damaged_checkpoint_is_skipped_for_the_newest_that_reads(
    tmp_path: Path, damage: Callable[[Path], None], says: str
) -> None:
    checkpoints, retry = _chain_of_three(tmp_path)
    damage(_file(tmp_path, 3))
    with pytest.raises(Damaged, match=r"ckpt-x-t0-ab-a0-e3"):
        checkpoints.load(Pointer("ckpt-x-t0-ab", 0), 3)
    resume = checkpoints.resume(retry, 3)
    assert resume.state is not None and resume.state["epoch"] == 2
    [note] = resume.damaged
    assert says in note and "\n" not in note and "error:" not in note, note


def test_when_no_checkpoint_reads_the_retry_starts_from_scratch(tmp_path: Path) -> None:
    checkpoints, retry = _chain_of_three(tmp_path)
    for epoch in (1, 2, 3):
        _random_bytes(_file(tmp_path, epoch))
    resume = checkpoints.resume(retry, 3)
    assert resume.state is None and len(resume.damaged) == 3


def test_a_write_is_atomic_and_a_killed_one_leaves_nothing_under_the_real_name(
    tmp_path: Path,
) -> None:
    # A kill mid-write leaves at most `<name>.partial` (here: written by hand, as a killed
    # writer leaves it); the real name is never torn, and removing the artifact removes both.
    checkpoints, _ = _chain_of_three(tmp_path)
    folder = tmp_path / "artifacts"
    assert not list(folder.glob("*.partial"))
    partial = folder / "ckpt-x-t0-ab-a0-e4.partial"
    partial.write_bytes(b"half a checkpoint")
    with pytest.raises(LookupError, match="is not in"):
        checkpoints.load(Pointer("ckpt-x-t0-ab", 0), 4)
    assert checkpoints.remove(Pointer("ckpt-x-t0-ab", 0), range(1, 5)) == 3
    assert list(folder.iterdir()) == []


# ---------------------------------------------------------------- whole trials, in-process


def _create(url: str, tmp_path: Path, body: str = ONE_TRIAL) -> optuna.Study:
    storage = storage_mod.open_storage(url)
    return study_mod.create(storage, load_spec(str(write_spec(tmp_path, "env", body))))[0]


def _trials(url: str) -> list[FrozenTrial]:
    return study_mod.load(storage_mod.open_storage(url, must_exist=True), "env")[0].get_trials()


def _work(
    url: str,
    mnist_dir: Path,
    artifacts: str,
    on_event: Callable[[Event], None] | None = None,
    stop: Stop | None = None,
) -> list[str]:
    """One worker in this process; its notes. `on_event` sees every event first."""
    from mnist_hpo.fleet import worker

    notes: list[str] = []

    def listener(event: Event) -> None:
        if on_event is not None:
            on_event(event)
        if isinstance(event, Note):
            notes.append(event.text)

    options = worker.WorkOptions(data_dir=mnist_dir, artifacts=artifacts, threads=1)
    settings = Settings(heartbeat=1, grace=5)
    worker.run(url, "env", options, settings, listener=listener, stop=stop or Stop(60.0))
    return notes


def _stop_after_epoch(n: int) -> tuple[Callable[[Event], None], Stop]:
    """What SIGTERM after epoch `n` does: the trial is handed back with its checkpoints, as a
    killed worker's is once its heartbeat expires."""
    stop = Stop(60.0)

    def on_event(event: Event) -> None:
        if isinstance(event, EpochDone) and event.epoch == n:
            stop.request(signal.SIGTERM)

    return on_event, stop


def _assert_handed_back(trials: list[FrozenTrial]) -> None:
    """The first try FAIL without an error of its own, its retry queued: nothing dropped."""
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert "error" not in trials[0].user_attrs
    assert trials[1].system_attrs["retry_history"] == [0]
    assert trials[1].params == trials[0].params


def _assert_completed_after(trials: list[FrozenTrial], resumed: int) -> None:
    assert trials[-1].state == TrialState.COMPLETE
    assert trials[-1].user_attrs["resumed_from_epoch"] == resumed
    assert sorted(trials[-1].intermediate_values) == [1, 2, 3, 4]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 1  # the budget, exactly


@pytest.mark.parametrize(
    ("damage", "resumed"),
    [
        pytest.param(_random_bytes, 2, id="random-bytes"),
        # The same damage as above, each proven fast on the files alone; the slow run trains.
        pytest.param(_half, 2, id="half", marks=pytest.mark.slow),
        pytest.param(_other_trials, 2, id="another-trial", marks=pytest.mark.slow),
        pytest.param(_older_epoch, 2, id="another-epoch", marks=pytest.mark.slow),
        pytest.param("all", 0, id="every-file"),
    ],
)
def test_a_retry_of_a_damaged_chain_completes(
    tmp_path: Path, mnist_dir: Path, damage: Callable[[Path], None] | str, resumed: int
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path)
    artifacts = tmp_path / "artifacts"
    with pytest.raises(Interrupted):
        _work(url, mnist_dir, str(artifacts), *_stop_after_epoch(3))
    _assert_handed_back(_trials(url))
    files = sorted(artifacts.iterdir())
    assert [f.name[-3:] for f in files] == ["-e1", "-e2", "-e3"]
    for f in files if damage == "all" else files[-1:]:
        (_random_bytes if damage == "all" else damage)(f)  # type: ignore[operator]

    notes = _work(url, mnist_dir, str(artifacts))
    trials = _trials(url)
    _assert_completed_after(trials, resumed)
    assert any(n.startswith("trial 1: checkpoint ") and n.endswith("; skipped") for n in notes)
    if resumed:
        assert "trial 1 resumes after epoch 2, not 3: its newer checkpoints do not read" in notes
    else:
        assert "trial 1 starts from scratch: no checkpoint of its chain reads" in notes, notes
    # The chain's files, damaged ones too, are removed (what the finished trial kept stays).
    assert list(artifacts.glob("ckpt-*")) == []


def test_an_artifact_folder_deleted_mid_trial_hands_it_back(
    tmp_path: Path, mnist_dir: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path)
    artifacts = tmp_path / "artifacts"

    def delete_after_epoch_2(event: Event) -> None:
        if isinstance(event, EpochDone) and event.epoch == 2:
            shutil.rmtree(artifacts)

    with pytest.raises(EnvironmentFault) as caught:
        _work(url, mnist_dir, str(artifacts), delete_after_epoch_2)
    said = str(caught.value)
    assert caught.value.exit_code == 74
    assert said.startswith(f"artifact folder {artifacts} is gone (No such file or directory"), said
    assert "trial 0 (handed back, not failed) was re-queued; its retry resumes after epoch 2" in (
        said
    )
    assert said.endswith(
        "restore or remount it or point --artifacts / MNIST_HPO_ARTIFACTS at "
        "another location, then start the worker again"
    ), said
    _assert_handed_back(_trials(url))

    notes = _work(url, mnist_dir, str(artifacts))  # the folder is back (a new, empty one)
    _assert_completed_after(_trials(url), 0)
    assert any(n.startswith("trial 1 starts from scratch: checkpoint ") for n in notes), notes


def test_an_artifact_folder_turned_read_only_mid_trial_hands_it_back(
    tmp_path: Path, mnist_dir: Path, tmpfs: Callable[[str], Path]
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path)
    folder = tmpfs("4m")

    def read_only_after_epoch_2(event: Event) -> None:
        if isinstance(event, EpochDone) and event.epoch == 2:
            _remount(folder, "ro")  # a disk the kernel remounted read-only after errors

    with pytest.raises(EnvironmentFault) as caught:
        _work(url, mnist_dir, str(folder), read_only_after_epoch_2)
    said = str(caught.value)
    assert said.startswith(f"artifact folder {folder}: read-only file system while writing"), said
    assert "its retry resumes after epoch 2; remount it read-write or point --artifacts" in said
    _assert_handed_back(_trials(url))

    _remount(folder, "rw")
    _work(url, mnist_dir, str(folder))
    _assert_completed_after(_trials(url), 2)


# ---------------------------------------------------------------- an S3 store that fails


@pytest.fixture
def fake_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator:  # type: ignore[type-arg]
    pytest.importorskip("boto3", reason="boto3 (the dev extra) talks to the S3 store")
    from fake_s3 import FakeS3

    s3 = FakeS3("ckpts")
    for name, value in {
        "AWS_ENDPOINT_URL": s3.url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",  # boto3's own retries would only slow the unreachable case
    }.items():
        monkeypatch.setenv(name, value)
    yield s3
    s3.close()


@pytest.mark.parametrize("how", ["refuses", "unreachable"])
def test_an_s3_store_that_fails_mid_trial_hands_it_back(
    tmp_path: Path,
    mnist_dir: Path,
    fake_s3,
    how: str,  # type: ignore[no-untyped-def]
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path)

    def fail_after_epoch_2(event: Event) -> None:
        if isinstance(event, EpochDone) and event.epoch == 2:
            if how == "refuses":
                fake_s3.refuse = True  # a revoked key, a bucket policy: 403 AccessDenied
            else:
                fake_s3.close()

    with pytest.raises(EnvironmentFault) as caught:
        _work(url, mnist_dir, "s3://ckpts", fail_after_epoch_2)
    said = str(caught.value)
    expected = {
        "refuses": "s3://ckpts refused access (AccessDenied: Access Denied while writing ckpt-",
        "unreachable": "s3://ckpts is unreachable (EndpointConnectionError: Could not connect",
    }[how]
    assert said.startswith(expected), said
    assert "its retry resumes after epoch 2" in said and "then start the worker again" in said
    _assert_handed_back(_trials(url))
    assert sorted(k[-3:] for k in fake_s3.objects) == ["-e1", "-e2"]  # kept for the retry

    if how == "refuses":
        fake_s3.refuse = False  # the key is fixed: the retry resumes from S3
        _work(url, mnist_dir, "s3://ckpts")
        _assert_completed_after(_trials(url), 2)
        assert [k for k in fake_s3.objects if k.startswith("ckpt-")] == []  # the kept set stays


# ---------------------------------------------------------------- a full disk (a real tmpfs)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs of the given size as tmp_path/artifacts (root only: CI runs as root)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / "artifacts"
        folder.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            reason = f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}"
            print(reason)
            pytest.skip(reason)
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


@pytest.fixture
def tiny_folder(tmpfs: Callable[[str], Path]) -> Path:
    """256 KiB: two of ONE_TRIAL's ~95 KB checkpoints fit, the third does not."""
    return tmpfs("256k")


def _remount(folder: Path, option: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{option}", str(folder)], check=True)


def _worker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mnist_hpo", "work", "env", "--threads", "1", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _env(tmp_path: Path, url: str, mnist_dir: Path, artifacts: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MNIST_HPO_STORAGE": url,
        "MNIST_HPO_DATA": str(mnist_dir),
        "MNIST_HPO_ARTIFACTS": str(artifacts),
        "MNIST_HPO_HEARTBEAT": "1",
        "MNIST_HPO_GRACE": "5",
    }


@pytest.mark.slow
def test_a_full_artifact_folder_hands_the_trial_back_and_exits_74(
    tmp_path: Path, mnist_dir: Path, tiny_folder: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path)
    env = _env(tmp_path, url, mnist_dir, tiny_folder)
    r = _worker(env)
    assert r.returncode == 74, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    [line] = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: artifact folder {tiny_folder}: no space left on device"), line
    assert "trial 0 (handed back, not failed) was re-queued; its retry resumes after epoch 2" in (
        line
    )
    assert "free space there or point --artifacts" in line
    _assert_handed_back(_trials(url))
    assert not list(tiny_folder.glob("*.partial"))  # the failed write gave its space back

    _remount(tiny_folder, "size=4m")  # space is freed: the next worker resumes and finishes
    r = _worker(env)
    assert r.returncode == 0, r.stdout + r.stderr
    _assert_completed_after(_trials(url), 2)
    assert list(tiny_folder.glob("ckpt-*")) == []  # the chain's checkpoints are removed
    assert len(list(tiny_folder.iterdir())) == 3  # what the trial kept: weights, 2 x probabilities


@pytest.mark.slow
def test_jobs_n_stops_its_other_workers_when_one_hits_a_full_disk(
    tmp_path: Path, mnist_dir: Path, tiny_folder: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _create(url, tmp_path, ONE_TRIAL.replace("n_trials = 1", "n_trials = 6"))
    r = _worker(_env(tmp_path, url, mnist_dir, tiny_folder), "--jobs", "2")
    out = r.stdout + r.stderr
    assert r.returncode == 74, out
    assert "Traceback" not in out
    assert "no space left on device" in out
    trials = _trials(url)
    # Nothing running, nothing failed for good: every FAIL was handed back and is queued.
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    queued = {
        n for t in trials if t.state == TrialState.WAITING for n in t.system_attrs["retry_history"]
    }
    assert failed and all(t.number in queued and "error" not in t.user_attrs for t in failed)


def test_jobs_n_stops_the_others_when_one_worker_exits_on_an_environment_fault(
    tmp_path: Path,
) -> None:
    # Real processes and a real SIGTERM: one "worker" exits 74 at once, the other runs until it
    # is told to stop and then exits as a stopped worker does (143). The pool says so once,
    # stops the other, and reports 74, the cause, not 143.
    from mnist_hpo.fleet import pool

    marker, ready = tmp_path / "stopped", tmp_path / "ready"
    patient = (
        "import pathlib, signal, sys, time\n"
        "def stop(*_):\n"
        f"    pathlib.Path({str(marker)!r}).write_text('SIGTERM')\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(120)\n"
    )
    faulty = (  # exits once the other can take a signal: no race with its start-up
        "import pathlib, sys, time\n"
        f"while not pathlib.Path({str(ready)!r}).exists(): time.sleep(0.01)\n"
        "sys.exit(74)\n"
    )
    told: list[int] = []
    code = pool.run_many(
        [[sys.executable, "-c", patient], [sys.executable, "-c", faulty]],
        on_first_signal=lambda _signum: pytest.fail("no signal was sent to the pool"),
        on_environment_fault=told.append,
    )
    assert code == 74 and told == [1]
    assert marker.read_text() == "SIGTERM"
    assert pool.worst([0, 143, 74, 1]) == 74 and pool.worst([0, 143, 1]) == 143


def test_a_store_that_fails_after_a_trial_finished_stops_the_worker_with_nothing_lost(
    tmp_path: Path,
    mnist_dir: Path,
    fake_s3,  # type: ignore[no-untyped-def]
) -> None:
    # S3 starts refusing after the last epoch's checkpoint: the trial completes, removing its
    # checkpoints is refused, and the worker stops at once rather than start another trial.
    url = f"sqlite:///{tmp_path / 's.db'}"
    # Keeping off: with it on, the refused write is the kept set's, before the trial is told
    # complete, and the trial is handed back like one whose checkpoint was refused.
    body = "keep = false\n" + ONE_TRIAL.replace("n_trials = 1", "n_trials = 2")
    _create(url, tmp_path, body)

    def refuse_after_the_last_epoch(event: Event) -> None:
        if isinstance(event, EpochDone) and event.epoch == 4:
            fake_s3.refuse = True

    with pytest.raises(EnvironmentFault) as caught:
        _work(url, mnist_dir, "s3://ckpts", refuse_after_the_last_epoch)
    said = str(caught.value)
    assert said.startswith("s3://ckpts refused access (AccessDenied: Access Denied while removing")
    assert "; no trial was running or lost; check the bucket" in said, said
    assert [t.state for t in _trials(url)] == [TrialState.COMPLETE]
