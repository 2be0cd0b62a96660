"""The objective: one taken trial -> a model of the study's family, trained, pruned, recorded.

Validation accuracy (held-out training images) is what the search maximises and what the
pruner compares epoch by epoch. Test accuracy is measured once, after the last epoch of a
completed trial, and only recorded: choosing on the test set would overstate it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial

from mnist_hpo.errors import ControlFlow, HpoError, Infeasible, TakenOver, TrialFailed
from mnist_hpo.events import EpochDone, Listener, Note, TrialStarted
from mnist_hpo.ml import latency
from mnist_hpo.ml.data import Data
from mnist_hpo.ml.device import pick_precision
from mnist_hpo.ml.predictions import probabilities
from mnist_hpo.ml.train import EpochEnd, TrainResult, accuracy, train
from mnist_hpo.resilience.environment import environment_fault
from mnist_hpo.resilience.retries import original_number
from mnist_hpo.resilience.trials import Lease
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.build import Built, build_trial, trial_seed
from mnist_hpo.search.checkpoints import Checkpoints, Pointer, Resume, new_key
from mnist_hpo.search.kept import FINISHED, Kept, Outcome, wants_weights, weights_bytes
from mnist_hpo.search.kept import of as kept_of
from mnist_hpo.search.spec import PINS_ATTR, StudySpec

ERROR_CHARS = 300  # of a trial's error message kept in its `error` user attr


@dataclass(frozen=True)
class Objective:
    spec: StudySpec
    data: Data
    checkpoints: Checkpoints
    listener: Listener
    precision: str = "auto"  # auto, fp32 or bf16: device.pick_precision
    keep: bool = True  # keep weights and probabilities of finished trials (the spec's too)

    def run(self, lease: Lease) -> list[float]:
        """Train the lease's trial; returns its objectives' values (validation accuracy after
        the last epoch first, then parameters and latency where the spec asks for them).

        Raises optuna.TrialPruned when the pruner stops it, ControlFlow when the worker must
        hand it back or let it go, EnvironmentFault when the disk or the artifact store failed
        under it (the worker hands it back too), and TrialFailed when the trial itself raised:
        out of memory for a large configuration, a GPU error, a bug. Those are told apart by
        class and by resilience.environment's one rule, not by a list of exceptions to let
        through.
        """
        try:
            return self._run(lease)
        except (ControlFlow, HpoError, optuna.TrialPruned):
            raise  # HpoError includes EnvironmentFault: an artifact store that failed
        except Exception as e:
            # A full disk or a failing one anywhere in the trial is the machine's fault (the
            # wall's one rule); anything else is the trial's own: recorded, not fatal.
            fault = environment_fault(e)
            if fault is not None:
                raise fault from e
            raise TrialFailed(lease.number, one_line(e)) from e

    def _run(self, lease: Lease) -> list[float]:
        built, precision, pointer, resume = self._begin(lease)
        result = train(
            built.model,
            built.cfg,
            self.data,
            self._epoch_hook(lease, pointer, built),
            resume=resume,
            precision=precision,
            on_batch=lease.on_batch,
        )
        return self._finish(lease, built, result)

    def _begin(self, lease: Lease) -> tuple[Built, str, Pointer, dict[str, Any] | None]:
        """Build the trial's model, record how it trains; reject it if over max_params."""
        spec, trial, frozen = self.spec, lease.trial, lease.frozen
        seed = trial_seed(spec, trial.number, frozen.user_attrs)
        built = lease.record(
            "sampling its parameters",
            lambda: build_trial(
                spec, trial, seed, self.data.device, frozen.user_attrs.get(PINS_ATTR)
            ),
        )
        # A retry keeps the precision its checkpoint was trained in, as it keeps the seed.
        precision = str(
            frozen.user_attrs.get("precision")
            or pick_precision(self.precision, built.model, built.cfg.batch_size, self.data.device)
        )
        pointer, resume = self._resume(lease)
        n_params = built.n_params
        attrs: dict[str, Any] = {
            "seed": seed,
            "n_params": n_params,
            "device": str(self.data.device),
            "precision": precision,
            # export-best retrains a trial without kept weights with these threads: another
            # count rounds differently (2 vs 1 did not reproduce a deep_mlp trial).
            "threads": torch.get_num_threads(),
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "versions": study_mod.versions(),
            # Epochs this attempt restored instead of training (0: a fresh start).
            "resumed_from_epoch": int(resume["epoch"]) if resume is not None else 0,
            "checkpoint": pointer.to_attr(),  # its retries read the files this attempt writes
        }
        # A retry inherits its predecessor's constraint (a system attr), as it inherits the seed.
        max_params = spec.max_params if not frozen.constraints else 0
        lease.record("starting it", lambda: _start(trial, attrs, max_params))
        if spec.max_params and n_params > spec.max_params:
            raise Infeasible(trial.number, n_params, spec.max_params)
        resumed, epochs = attrs["resumed_from_epoch"], built.cfg.epochs
        self.listener(TrialStarted(trial.number, dict(trial.params), resumed, epochs))
        return built, precision, pointer, resume

    def _epoch_hook(
        self, lease: Lease, pointer: Pointer, built: Built
    ) -> Callable[[EpochEnd], None]:
        """What happens after each epoch: still ours? checkpoint, report, stop? prune?"""
        trial, epochs = lease.trial, built.cfg.epochs
        reported = set(lease.frozen.intermediate_values)  # a retry inherits the epochs reported
        # A trial of fewer train_epochs than the study's anneals its schedule sooner, so it
        # leads the others at the same epoch (tests/test_train_epochs.py: without this rule
        # hyperband pruned the 4-epoch one-cycle trial against the 2-epoch one). It is short
        # by choice: it neither asks the pruner nor, never asking, records a rung the others
        # are judged by.
        judged = epochs >= self.spec.epochs

        def on_epoch(e: EpochEnd) -> None:
            lease.before_checkpoint()
            state = e.state()
            # Saved before the epoch is reported: a reported epoch always has a complete
            # checkpoint, and a retry resumes from its last inherited reported epoch.
            self.checkpoints.save(pointer, e.epoch, state)
            try:
                lease.record(f"recording epoch {e.epoch}", lambda: _report(lease, e, reported))
            except TakenOver:
                # Never reported, so no retry resumes from it: this attempt leaves nothing.
                self.checkpoints.remove(pointer, range(e.epoch, e.epoch + 1))
                raise
            reported.add(e.epoch)
            self.listener(EpochDone(trial.number, e.epoch, epochs, e.val_accuracy, e.seconds))
            # After the last epoch (or a divergence) there is nothing left to decide.
            if e.diverged or e.epoch >= epochs:
                return
            lease.after_epoch()
            if judged and lease.record("asking the pruner", lease.should_prune):
                lease.record("finishing it", lambda: _record_history(trial, state))
                self._keep(lease, built, e.val_accuracy)
                raise optuna.TrialPruned(f"pruned after epoch {e.epoch}")

        return on_epoch

    def _finish(self, lease: Lease, built: Built, result: TrainResult) -> list[float]:
        """Test accuracy (measured once, only recorded), history, and the objectives' values."""
        test = accuracy(built.model, self.data.test_x, self.data.test_y)
        history = {"val_history": result.val_history, "epoch_seconds": result.epoch_seconds}
        measured = {"accuracy": result.val_accuracy, "params": float(built.n_params)}
        extra: dict[str, Any] = {"test_accuracy": test, "epochs_trained": result.epochs_run}
        if "latency" in self.spec.objectives:
            extra |= latency.measure(built.model, self.data.test_x)
            measured["latency"] = extra["latency_ms"]

        def finish() -> None:
            _record_history(lease.trial, history)
            _set_attrs(lease.trial, extra)

        lease.record("finishing it", finish)
        self._keep(lease, built, result.val_accuracy)
        return [measured[o] for o in self.spec.objectives]

    def _keep(self, lease: Lease, built: Built, val_accuracy: float) -> None:
        """Keep the finished trial's weights (within the spec's keep_weights cap) and its
        probabilities on validation and test (search/kept.py): 10,000 test images are ~1 s of
        a cnn on one core, against minutes of training."""
        if not (self.keep and self.spec.keep):
            return
        kept = Kept(self.checkpoints.store, self.checkpoints.location)
        cap = self.spec.keep_weights
        trial = lease.trial
        # The cap ranks this trial among the finished ones: one more read, only with a cap.
        finished = (
            lease.record(
                "reading the kept trials",
                lambda: trial.study.get_trials(deepcopy=False, states=FINISHED),
            )
            if cap > 0
            else []
        )
        outputs = "logits" if built.cfg.loss == "cross_entropy" else "scores"
        outcome = Outcome(
            weights=weights_bytes(built.model.state_dict())
            if wants_weights(finished, val_accuracy, cap)
            else None,
            val_probs=probabilities(built.model, self.data.val_x, outputs),
            test_probs=probabilities(built.model, self.data.test_x, outputs),
            val_accuracy=val_accuracy,
            outputs=outputs,
        )
        record = lease.record(
            "keeping its weights and probabilities", lambda: kept.write(trial, outcome)
        )
        kept.drop_weights_beyond([*filter(None, map(kept_of, finished)), record], cap)

    def _resume(self, lease: Lease) -> tuple[Pointer, dict[str, Any] | None]:
        """This attempt's checkpoint files, and the predecessor's state to resume from, if any."""
        frozen = lease.frozen
        inherited = Pointer.of(frozen)
        if inherited is None:
            key = new_key(self.spec.name, original_number(frozen))
            return Pointer(key, lease.number), None
        mine = Pointer(inherited.key, lease.number)
        epoch = max(frozen.intermediate_values, default=0)  # the last epoch reported
        if epoch < 1:
            return mine, None
        resume = self.checkpoints.resume(frozen, epoch)
        for line in _resume_notes(lease.number, epoch, resume):
            self.listener(Note(line))
        return mine, resume.state

    def cleanup(self, trial: FrozenTrial) -> None:
        """Delete the checkpoints of a trial that finished (COMPLETE or PRUNED) or was given
        up: every attempt's of its retry chain. A given-up trial also drops a set an attempt
        kept before it died (a finished trial's set stays: it is what the study keeps)."""
        self.checkpoints.remove_chain(trial, self.spec.epochs)
        record = kept_of(trial)
        if trial.state not in FINISHED and record is not None:
            Kept(self.checkpoints.store, self.checkpoints.location).remove_set(record)


def _resume_notes(number: int, epoch: int, resume: Resume) -> list[str]:
    """What a retry says when its checkpoints were not all there: each damaged file skipped,
    then from which epoch it resumes if not its last reported one."""
    notes = [f"trial {number}: {damaged}; skipped" for damaged in resume.damaged]
    if resume.state is None:
        why = (
            "no checkpoint of its chain reads"
            if resume.damaged
            else f"{resume.reasons[0]} (several machines need one shared artifact location: "
            "MNIST_HPO_ARTIFACTS)"
        )
        notes.append(f"trial {number} starts from scratch: {why}")
    elif resume.state["epoch"] < epoch:
        why = "its newer checkpoints do not read" if resume.damaged else resume.reasons[0]
        notes.append(
            f"trial {number} resumes after epoch {resume.state['epoch']}, not {epoch}: {why}"
        )
    return notes


def _set_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        trial.set_user_attr(k, v)


def _start(trial: optuna.Trial, attrs: dict[str, Any], max_params: int) -> None:
    _set_attrs(trial, attrs)
    if max_params:  # <= 0 is feasible: TPE and NSGA-II learn the feasible region from it
        trial.set_constraint("max_params", attrs["n_params"] - max_params)


def _report(lease: Lease, e: EpochEnd, reported: set[int]) -> None:
    if e.epoch not in reported:  # a retry inherits the epochs already reported
        lease.report(e.epoch, e.val_accuracy)
    if e.diverged:
        lease.trial.set_user_attr("diverged", True)


def _record_history(trial: optuna.Trial, state: dict[str, Any]) -> None:
    # Once per trial, not per epoch: each write is a commit (15-20 ms on SQLite, ~9 ms on
    # PostgreSQL here), and two per epoch were ~5% of a 1 s MLP epoch. The values per epoch
    # are already stored as the trial's intermediate values, and a retry gets the history of
    # its resumed epochs back from the checkpoint.
    trial.set_user_attr("val_accuracy_per_epoch", list(state["val_history"]))
    trial.set_user_attr("epoch_seconds", [round(s, 3) for s in state["epoch_seconds"]])


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, at most ERROR_CHARS: for a trial's `error` attr."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text[:ERROR_CHARS]
