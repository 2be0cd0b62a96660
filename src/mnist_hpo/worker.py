"""A worker: pulls trials of one study from storage until the study's budget is spent.

Any number of workers, on any number of machines, can run the same study: all they share is the
storage URL and the study name. The spec, the sampler and pruner settings and the data's
fingerprint all come from the study itself.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import sqlalchemy.exc
import torch
from optuna.trial import FrozenTrial, TrialState

from mnist_hpo import artifacts, retries
from mnist_hpo import data as data_mod
from mnist_hpo import storage as storage_mod
from mnist_hpo import study as study_mod
from mnist_hpo.checkpoints import Checkpoints
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.events import Listener, Note, TrialFinished, ignore
from mnist_hpo.objective import Objective, TakenOver, TrialFailed
from mnist_hpo.stopping import Stopper, StopRequested
from mnist_hpo.train import PRECISIONS, auto_may_use_bf16, bf16_native

POLL = 2.0  # seconds between looks at the study while waiting for other workers' last trials
# Trials that raise an error (out of memory for a large configuration) are skipped; this many
# in a row means the cause is not the parameters (a bug, a broken GPU), so the worker stops.
FAILED_IN_A_ROW = 3


@dataclass(frozen=True)
class WorkOptions:
    n_trials: int | None = None  # this worker's own limit; None = until the study's budget
    timeout: float | None = None  # seconds; no new trial starts after this
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"  # auto, fp32, bf16 (see train.pick_precision)
    threads: int | None = None  # torch CPU threads for this process; None = torch's default
    data_dir: Path | None = None  # explicit MNIST location (else cache, then download)
    download: bool = True  # allow downloading MNIST into the cache
    wait: bool = True  # when the budget is spent, wait for trials still running elsewhere
    artifacts: str | None = None  # checkpoint location (folder or s3://BUCKET); None = default


@dataclass
class WorkSummary:
    states: dict[str, int] = field(default_factory=dict)  # this worker's trials by final state
    seconds: float = 0.0
    stop_reason: str = ""

    @property
    def trials(self) -> int:
        return sum(self.states.values())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HpoError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HpoError(
                f"--device {name}: only {torch.cuda.device_count()} GPU(s) here; pick cuda:0.."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise HpoError(f"--device {name}: Apple MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def check_precision(name: str, device: torch.device) -> None:
    """Refuse a precision this device cannot use well, before any trial starts."""
    if name not in ("auto", *PRECISIONS):
        raise UsageError(f"--precision {name!r} is not a precision; use auto, fp32 or bf16")
    if name == "bf16" and not bf16_native(device):
        raise HpoError(
            f"--precision bf16: {device} has no native bfloat16 (a CPU needs AVX-512 BF16 or "
            "AMX, a GPU compute capability 8.0+), so it would train slower than fp32; use "
            "--precision auto or fp32"
        )


def describe_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if auto_may_use_bf16(device):
        return "auto (this CPU does bfloat16 natively: bf16 for CNNs and larger MLP steps)"
    return "auto (fp32 on this device)"


def check_data(study: optuna.Study, raw: data_mod.RawData) -> None:
    """Record the data's fingerprint with the study, or insist this worker has the same data."""
    mine = {"kind": raw.kind, "fingerprint": raw.fingerprint, "source": raw.source}
    recorded = study.user_attrs.get(study_mod.DATA_ATTR)
    if recorded is None:
        study.set_user_attr(study_mod.DATA_ATTR, mine)
    elif recorded["fingerprint"] != raw.fingerprint:
        raise HpoError(
            f"study {study.study_name!r} was run on other data ({recorded['source']}) than this "
            f"worker found ({raw.source}); point MNIST_HPO_DATA at the same files"
        )


def run(
    storage_url: str,
    study_name: str,
    options: WorkOptions = WorkOptions(),
    *,
    listener: Listener = ignore,
    download_progress: data_mod.Progress | None = None,
    stopper: Stopper | None = None,
) -> WorkSummary:
    """Run trials until the study's budget is spent (or this worker's own limit is hit).

    With a `stopper` (signal handling, installed by the caller), SIGTERM or Ctrl-C ends the
    current trial after its epoch, re-queues it, and raises stopping.Interrupted.
    """
    started = time.monotonic()
    device = resolve_device(options.device)
    check_precision(options.precision, device)
    if options.threads:
        torch.set_num_threads(options.threads)

    def message(text: str) -> None:
        listener(Note(text))

    wait = storage_mod.storage_wait_seconds()
    storage = storage_mod.open_storage(storage_url, must_exist=True, wait=wait)
    storage.note = message
    study, spec = storage_mod.retrying(
        lambda: study_mod.load(storage, study_name), what="loading the study", note=message
    )
    raw = data_mod.load(
        spec.dataset,
        options.data_dir,
        download=options.download,
        message=message,
        progress=download_progress,
    )
    # Exact budget: one worker at a time takes a new trial or re-queues a failed one.
    storage.budget, storage.stale_check = spec.budget(), False
    storage_mod.retrying(lambda: check_data(study, raw), what="checking the data", note=message)
    listener(Note(f"data: {raw.source}"))
    split = data_mod.split(
        raw, validation_size=spec.validation_size, train_size=spec.train_size, device=device
    )
    listener(
        Note(
            f"study {spec.name}: {spec.family}, {spec.epochs} epochs/trial, budget "
            f"{spec.budget()} trials; {len(split.train_x):,} train / {len(split.val_x):,} "
            f"validation / {len(split.test_x):,} test images on {device}"
        )
    )
    listener(Note(f"precision: {describe_precision(options.precision, device)}"))
    location = options.artifacts or str(artifacts.default_location())
    checkpoints = Checkpoints(artifacts.open_store(location), location)
    objective = Objective(
        spec,
        split,
        listener=listener,
        checkpoints=checkpoints,
        stopper=stopper,
        precision=options.precision,
    )
    summary = WorkSummary()

    def finished(study: optuna.Study, t: FrozenTrial) -> None:
        summary.states[t.state.name] = summary.states.get(t.state.name, 0) + 1
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            objective.cleanup(t)
        best = study_mod.best_trial(study)
        steps = sorted(t.intermediate_values)
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else 0.0
        )
        listener(
            TrialFinished(
                number=t.number,
                state=t.state.name,
                val_accuracy=t.value
                if t.value is not None
                else (t.intermediate_values[steps[-1]] if steps else None),
                test_accuracy=t.user_attrs.get("test_accuracy")
                if t.state == TrialState.COMPLETE
                else None,
                epochs=len(steps),
                seconds=seconds,
                best_val=best.value if best else None,
            )
        )

    def requeue_current(why: str, *, failed_here: bool = False) -> str:
        """Fail the trial this worker was running (if still RUNNING) and re-queue it.

        `failed_here`: Optuna already marked it FAIL because our objective raised StopRequested.
        """
        current = objective.current
        if current is None:
            return "no trial was running"
        with storage_mod.taking_a_trial(study):  # no worker counts the study between the two
            try:
                storage_mod.retrying(
                    lambda: storage.set_trial_state_values(current._trial_id, TrialState.FAIL),
                    what=f"re-queuing trial {current.number}",
                    note=message,
                )
            except optuna.exceptions.UpdateFinishedTrialError:
                # Finished here, or failed as dead and re-queued by another worker: not ours.
                state = storage.get_trial(current._trial_id).state
                if not (failed_here and state == TrialState.FAIL):
                    return f"trial {current.number} was already {state.name}; nothing to re-queue"
            failed = storage.get_trial(current._trial_id)
            # A stop never uses up the retry allowance, so this always queues a retry.
            storage_mod.retrying(
                lambda: retries.requeue(study, failed),
                what=f"re-queuing trial {current.number}",
                note=message,
            )
        epoch = max(failed.intermediate_values, default=0)
        where = f"after epoch {epoch}" if epoch else "from the start"
        return f"trial {current.number} ({why}) was re-queued; its retry resumes {where}"

    if stopper is not None:
        stopper.on_deadline = lambda: requeue_current("its epoch was cut short")

    waiting_noted = False
    failed_in_a_row = 0
    outage_started: float | None = None
    delay = 0.5
    while True:
        if stopper is not None and stopper.requested:
            stopper.take()
            raise stopper.interrupted("between trials; nothing to re-queue")
        if options.n_trials is not None and summary.trials >= options.n_trials:
            summary.stop_reason = f"ran the {options.n_trials} trial(s) asked of this worker"
            break
        if options.timeout is not None and time.monotonic() - started >= options.timeout:
            summary.stop_reason = f"timeout of {options.timeout:g} s reached"
            break
        objective.current = None
        try:
            storage_mod.fail_stale(study)
            for dead in retries.given_up(study):
                objective.cleanup(dead)
                listener(
                    Note(
                        f"trial {dead.number} was given up: its worker died "
                        f"{retries.crashes(dead) + 1} times (out of memory?); its "
                        "checkpoints are removed"
                    )
                )
            p = study_mod.progress(study, spec)
            if not p.counts.get("WAITING") and p.spent >= p.budget:
                running = p.counts.get("RUNNING", 0)
                if running and options.wait:
                    if not waiting_noted:
                        listener(
                            Note(
                                f"budget of {p.budget} trials is spent; waiting for {running} "
                                "trial(s) running on other workers (a dead worker's trial is "
                                "retried here)"
                            )
                        )
                        waiting_noted = True
                    time.sleep(POLL)
                    continue
                summary.stop_reason = f"the study's budget of {p.budget} trials is spent"
                if not running:
                    # Every trial is over: remove any checkpoint a finished trial's cleanup
                    # missed (its worker killed between the result and the cleanup; a worker
                    # judged dead that saved one more epoch). soak.py saw 2 such files in 4
                    # runs of 96 trials with 8 SIGKILLs.
                    leftover = checkpoints.remove_trials(
                        study.get_trials(deepcopy=False), spec.epochs
                    )
                    if leftover:
                        message(f"removed {leftover} checkpoint file(s) of interrupted trials")
                break
            if stopper is not None:
                stopper.in_trial = True
            try:
                study.optimize(objective, n_trials=1, callbacks=[finished])
            finally:
                if stopper is not None:
                    stopper.in_trial = False
            outage_started, delay, failed_in_a_row = None, 0.5, 0
        except storage_mod.BudgetSpent:
            continue  # another worker took the last trial: wait for it or stop, as above
        except UnboundLocalError as e:
            # Optuna 5.0's _run_trial, when the storage is still gone as it records a failed
            # trial, re-reads the trial, fails again and then trips over its own unset
            # `updated_state`. The error it was handling (our bounded storage wait running out)
            # is the one to report; the trial is retried from its checkpoint once the
            # database is back and its heartbeat has expired.
            if isinstance(e.__context__, HpoError):
                raise e.__context__ from None
            raise
        except TrialFailed as e:
            # FAIL, not retried, and not counted against the budget: the sampler tries other
            # parameters. A cause that fails every trial (a broken GPU, a bug) stops the worker
            # after FAILED_IN_A_ROW instead of burning through trials.
            failed_in_a_row += 1
            summary.states["FAIL"] = summary.states.get("FAIL", 0) + 1
            with contextlib.suppress(HpoError):
                trial_id = storage.get_trial_id_from_study_id_trial_number(
                    study._study_id, e.number
                )
                objective.cleanup(storage.get_trial(trial_id))  # retried, then HpoError
            listener(Note(f"{e}; it is not retried (its parameters would fail again)"))
            if failed_in_a_row >= FAILED_IN_A_ROW:
                raise HpoError(
                    f"{failed_in_a_row} trials in a row failed, the last with {e.error}; fix "
                    "the cause, then start the worker again (failed trials do not use up the "
                    "budget; `mnist-hpo status` lists them)"
                ) from None
        except StopRequested:
            if stopper is None:
                raise
            stopper.take()
            raise stopper.interrupted(
                requeue_current("stopped mid-trial", failed_here=True)
            ) from None
        except (TakenOver, optuna.exceptions.UpdateFinishedTrialError):
            # Our heartbeat was late (a stalled machine) and another worker failed the trial;
            # its retry continues from the checkpoint on whichever worker takes it. Optuna's
            # own tell raises UpdateFinishedTrialError when it finds the trial already FAIL.
            number = objective.current.number if objective.current else "?"
            listener(
                Note(
                    f"trial {number} was failed as dead by another worker (no heartbeat for "
                    f"{storage_mod.grace_seconds()} s) and re-queued; moving on"
                )
            )
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            if not storage_mod.is_transient(e):
                raise
            now = time.monotonic()
            if outage_started is None:
                outage_started = now
                listener(
                    Note(
                        f"storage unavailable ({storage_mod.describe(e)}); retrying for up to "
                        f"{wait:g} s"
                    )
                )
            elif now - outage_started >= wait:
                raise HpoError(
                    f"lost the storage for more than {wait:g} s ({storage_mod.describe(e)}); "
                    "check the database server, then start the worker again "
                    "(MNIST_HPO_STORAGE_WAIT sets the wait)"
                ) from None
            time.sleep(delay)
            delay = min(10.0, delay * 2)
            if objective.current is not None:
                # The trial this worker ran could not be finished in storage; hand it on now
                # instead of waiting for its heartbeat to expire.
                with contextlib.suppress(HpoError):
                    note = requeue_current("its result could not be stored")
                    listener(Note(note))
        finally:
            objective.release()  # held from a stop request until the trial was re-queued
        if stopper is not None and stopper.requested:
            stopper.take()
            raise stopper.interrupted("the running trial finished first; nothing to re-queue")
    summary.seconds = time.monotonic() - started
    return summary
