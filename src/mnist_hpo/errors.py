"""The one user-facing error type, and the few exceptions that steer a worker's control flow."""

from __future__ import annotations


class HpoError(Exception):
    """A problem the user can fix. The message is shown as is, without a traceback.

    exit_code follows the usual convention: 2 for bad input (usage), 1 for runtime trouble
    (storage unreachable, data missing, a study that does not exist yet).
    """

    exit_code = 1


class UsageError(HpoError):
    """Bad input on the command line or in a study spec."""

    exit_code = 2


class EnvironmentFault(HpoError):
    """The environment broke, not a trial: a full or read-only disk, an artifact folder gone, an
    S3 store unreachable or refusing (resilience/environment.py tells these apart).

    A worker hands its trial back (re-queued as after a stop, checkpoints kept) and exits with
    74, sysexits.h's EX_IOERR, so that a supervisor can tell "fix the machine" from a bug (1).
    `problem` names the resource and what is wrong, `advice` what to do.
    """

    exit_code = 74

    def __init__(self, problem: str, advice: str, outcome: str = "") -> None:
        if outcome:  # a worker's last words: what became of its trial, then what to do
            super().__init__(f"{problem}; {outcome}; {advice}, then start the worker again")
        else:
            super().__init__(f"{problem}; {advice}")
        self.problem = problem
        self.advice = advice
        self.outcome = outcome

    def stopping(self, outcome: str) -> EnvironmentFault:
        """The same fault, saying what became of the worker's trial."""
        return EnvironmentFault(self.problem, self.advice, outcome)


class Interrupted(HpoError):
    """The worker stopped on a signal; exit_code is 128 + the signal number (130, 143)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class ControlFlow(Exception):
    """Raised from a worker's own hooks inside a trial to end it; never a fault of the trial.

    The objective tells these (with Optuna's TrialPruned and HpoError) apart from errors the
    trial itself raised, which are recorded on the trial.
    """


class StopRequested(ControlFlow):
    """SIGTERM / Ctrl-C came during the trial: after this epoch's checkpoint, hand it back."""


class EpochCut(ControlFlow):
    """The stop deadline passed mid-epoch: hand the trial back from its last finished epoch."""


class TakenOver(ControlFlow):
    """Another worker failed this trial as dead (this one stalled past the grace period) and
    re-queued it; this worker must not write to it again."""

    def __init__(self, number: int, stalled: float) -> None:
        super().__init__(
            f"trial {number} was taken over by another worker after this one stalled for "
            f"{stalled:.0f} s; moving on"
        )
        self.number = number


class TrialFailed(ControlFlow):
    """The trial itself raised an error (recorded as its `error` user attr); it is not retried:
    the same parameters would fail again."""

    def __init__(self, number: int, error: str) -> None:
        super().__init__(f"trial {number} failed: {error}")
        self.number = number
        self.error = error


class Infeasible(ControlFlow):
    """The configuration has more parameters than the study's max_params: rejected untrained."""

    def __init__(self, number: int, n_params: int, max_params: int) -> None:
        super().__init__(
            f"trial {number} rejected before training: {n_params:,} parameters > max_params "
            f"{max_params:,} (told to the sampler as infeasible; no budget used)"
        )
        self.why = f"{n_params:,} parameters > max_params {max_params:,}"
