"""The objective: one Optuna trial -> a model of the study's family, trained, pruned, recorded."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import optuna
import sqlalchemy.exc
import torch
from optuna.trial import FrozenTrial

from mnist_hpo import __version__, retries
from mnist_hpo import checkpoints as ckpt
from mnist_hpo import storage as storage_mod
from mnist_hpo.checkpoints import Checkpoints
from mnist_hpo.data import Data
from mnist_hpo.errors import HpoError
from mnist_hpo.events import EpochDone, Listener, Note, TrialStarted, ignore
from mnist_hpo.hyperparams import sample_training
from mnist_hpo.space import Hyper
from mnist_hpo.spec import StudySpec
from mnist_hpo.stopping import Stopper, StopRequested
from mnist_hpo.train import EpochEnd, accuracy, pick_precision, prepare, train

T = TypeVar("T")


def versions() -> dict[str, str]:
    return {
        "mnist_hpo": __version__,
        "optuna": optuna.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


class Objective:
    """Callable for study.optimize: returns validation accuracy after the last epoch.

    Validation accuracy (held-out training images) is what the search maximises and what the
    pruner compares epoch by epoch. Test accuracy is measured once, after the last epoch of a
    completed trial, and only recorded: choosing on the test set would overstate it.
    """

    def __init__(
        self,
        spec: StudySpec,
        data: Data,
        *,
        listener: Listener = ignore,
        checkpoints: Checkpoints | None = None,
        stopper: Stopper | None = None,
        precision: str = "auto",
    ) -> None:
        self.spec = spec
        self.precision = precision  # auto, fp32 or bf16: train.pick_precision
        self.data = data
        self.listener = listener
        self.checkpoints = checkpoints
        self.stopper = stopper
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.current: FrozenTrial | None = None  # the trial being run, as it was when it started
        self._hold: contextlib.ExitStack | None = None  # the take-a-trial lock while stopping

    def _save(self, what: str, action: Callable[[], T]) -> T:
        """A storage write that survives a database restart (bounded by STORAGE_WAIT)."""

        def note(text: str) -> None:
            self.listener(Note(text))

        try:
            return storage_mod.retrying(action, what=what, note=note)
        except optuna.exceptions.UpdateFinishedTrialError:
            raise TakenOver(what) from None

    def _resume(
        self, trial: optuna.Trial, frozen: FrozenTrial
    ) -> tuple[str, dict[str, Any] | None]:
        """The checkpoint key of this retry chain and the state to resume from, if any."""
        pointer = frozen.user_attrs.get(ckpt.ATTR)
        if self.checkpoints is None:
            return "", None
        if not pointer:
            return ckpt.new_key(self.spec.name, retries.original_number(frozen)), None
        key = str(pointer["key"])
        epoch = max(frozen.intermediate_values, default=0)  # the last epoch reported
        if epoch < 1:
            return key, None
        try:
            return key, self.checkpoints.load(key, epoch)
        except LookupError as e:
            self.listener(
                Note(
                    f"trial {trial.number} starts from scratch: {e} (several machines need one "
                    "shared artifact location: MNIST_HPO_ARTIFACTS)"
                )
            )
            return key, None

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except (
            StopRequested,
            optuna.TrialPruned,
            TakenOver,
            HpoError,
            optuna.exceptions.OptunaError,
            sqlalchemy.exc.SQLAlchemyError,
        ):
            raise
        except Exception as e:
            # Something in the trial itself: out of memory for a large configuration, a GPU
            # error, a bug. Recorded on the trial (Optuna then marks it FAIL); the worker moves
            # on instead of dying with a traceback.
            error = one_line(e)
            with contextlib.suppress(HpoError, TakenOver):
                self._save(
                    f"recording the error of trial {trial.number}",
                    lambda: trial.set_user_attr("error", error),
                )
            raise TrialFailed(trial.number, error) from e

    def _run(self, trial: optuna.Trial) -> float:
        spec, family = self.spec, self.spec.family_def
        frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        self.current = frozen
        if self.stopper is not None and self.stopper.requested:
            self._stop(trial)  # a signal came while the trial was being taken
        hp = Hyper(trial, spec.overrides)
        arch = family.sample(hp)
        # A retried trial inherits its user attrs, seed included, so it trains the same way.
        seed = int(trial.user_attrs.get("seed", spec.seed + trial.number))
        cfg = sample_training(hp, epochs=spec.epochs, seed=seed)
        torch.manual_seed(seed)
        model = prepare(family.build(arch), self.data.device)
        # A retry keeps the precision its checkpoint was trained in, as it keeps the seed.
        precision = str(
            trial.user_attrs.get("precision")
            or pick_precision(self.precision, model, cfg.batch_size, self.data.device)
        )
        key, resume = self._resume(trial, frozen)
        resumed_from = int(resume["epoch"]) if resume is not None else 0
        attrs: dict[str, Any] = {
            "seed": seed,
            "n_params": sum(p.numel() for p in model.parameters()),
            "device": str(self.data.device),
            "precision": precision,
            "worker": self.worker,
            "versions": versions(),
            # Epochs this attempt restored instead of training (0: a fresh start).
            "resumed_from_epoch": resumed_from,
        }
        if key and resume is None:
            attrs[ckpt.ATTR] = {"key": key}  # retries inherit it, so they find the files

        def start() -> None:
            for k, v in attrs.items():
                trial.set_user_attr(k, v)

        self._save(f"starting trial {trial.number}", start)
        self.listener(TrialStarted(trial.number, dict(trial.params), resumed_from=resumed_from))

        history: list[float] = list(resume["val_history"]) if resume is not None else []
        seconds: list[float] = list(resume["epoch_seconds"]) if resume is not None else []
        reported = set(frozen.intermediate_values)

        def on_epoch(e: EpochEnd) -> None:
            if self.stopper is not None:
                self.stopper.hold()  # past the stop deadline: that thread owns the trial now
            history.append(e.val_accuracy)
            seconds.append(round(e.seconds, 3))
            if self.checkpoints is not None:
                # Saved before the epoch is reported: a reported epoch always has a complete
                # checkpoint, and the retry resumes from its last inherited reported epoch.
                self.checkpoints.save(key, e.epoch, e.state())

            def record() -> None:
                if e.epoch not in reported:  # a retry inherits the epochs already reported
                    trial.report(e.val_accuracy, e.epoch)
                if e.diverged:
                    trial.set_user_attr("diverged", True)

            self._save(f"recording epoch {e.epoch} of trial {trial.number}", record)
            reported.add(e.epoch)
            self.listener(EpochDone(trial.number, e.epoch, cfg.epochs, e.val_accuracy, e.seconds))
            if e.diverged:
                return
            # After the last epoch there is nothing left to save: finish and record test accuracy.
            if e.epoch < cfg.epochs:
                if self.stopper is not None and self.stopper.requested:
                    self._stop(trial)
                if self._save(f"asking the pruner about trial {trial.number}", trial.should_prune):
                    self._save(f"finishing trial {trial.number}", record_history)
                    raise optuna.TrialPruned(f"pruned after epoch {e.epoch}")

        def record_history() -> None:
            # Once per trial, not per epoch: each write is a commit (15-20 ms on SQLite, ~9 ms
            # on PostgreSQL here), and two per epoch were ~5% of a 1 s MLP epoch. The values
            # per epoch are already stored as the trial's intermediate values, and a retry
            # gets the history of its resumed epochs back from the checkpoint.
            trial.set_user_attr("val_accuracy_per_epoch", history)
            trial.set_user_attr("epoch_seconds", seconds)

        result = train(model, cfg, self.data, on_epoch, resume=resume, precision=precision)
        test = accuracy(model, self.data.test_x, self.data.test_y)

        def finish() -> None:
            record_history()
            trial.set_user_attr("test_accuracy", test)
            trial.set_user_attr("epochs_trained", result.epochs_run)

        self._save(f"finishing trial {trial.number}", finish)
        return result.val_accuracy

    def _stop(self, trial: optuna.Trial) -> NoReturn:
        """Raise StopRequested holding the take-a-trial lock: Optuna marks the trial FAIL, the
        worker re-queues it (re-entering the lock) and then calls release(). No other worker
        counts the study in between, when it looks one trial short of its budget."""
        hold = contextlib.ExitStack()
        try:
            # One attempt: with the database gone the trial is re-queued later without it.
            hold.enter_context(storage_mod.taking_a_trial(trial.study, wait=0))
        except (HpoError, sqlalchemy.exc.SQLAlchemyError):
            hold.close()
        else:
            self._hold = hold
        raise StopRequested

    def release(self) -> None:
        """Let go of the lock _stop took (the worker calls it after every trial)."""
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.close()

    def cleanup(self, trial: FrozenTrial) -> None:
        """Delete the checkpoints of a trial that finished (COMPLETE or PRUNED) or was given up."""
        pointer = trial.user_attrs.get(ckpt.ATTR)
        if self.checkpoints is not None and pointer:
            self.checkpoints.remove(str(pointer["key"]), self.spec.epochs)


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, at most 300 characters: for a trial's `error`."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text[:300]


class TrialFailed(Exception):
    """The trial itself raised an error (recorded as its `error` user attr); it is not retried:
    the same parameters would fail again."""

    def __init__(self, number: int, error: str) -> None:
        super().__init__(f"trial {number} failed: {error}")
        self.number = number
        self.error = error


class TakenOver(Exception):
    """Another worker failed this trial as dead (its heartbeat was late) and re-queued it."""
