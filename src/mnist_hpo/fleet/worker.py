"""A worker: pulls trials of one study from storage until the study's budget is spent.

Any number of workers, on any number of machines, can run the same study: all they share is the
storage URL and the study name. The spec, the sampler and pruner settings and the data's
fingerprint all come from the study itself. `run` is a loop over named steps: look for dead
workers' trials, take a trial (or learn the budget is spent), run it, say how it ended.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_hpo.errors import (
    EnvironmentFault,
    EpochCut,
    HpoError,
    Infeasible,
    StopRequested,
    TakenOver,
    TrialFailed,
)
from mnist_hpo.events import Listener, Note, TrialFinished, ignore
from mnist_hpo.ml import data as data_mod
from mnist_hpo.ml.device import check_precision, describe_precision, resolve_device
from mnist_hpo.resilience.retries import crashes
from mnist_hpo.resilience.retry import retrying
from mnist_hpo.resilience.stop import Stop
from mnist_hpo.resilience.storage import open_storage
from mnist_hpo.resilience.trials import Lease, Trials
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.budget import INFEASIBLE, uses_budget
from mnist_hpo.search.checkpoints import Checkpoints
from mnist_hpo.search.objective import Objective
from mnist_hpo.search.spec import StudySpec
from mnist_hpo.settings import Settings, default_artifacts

POLL = 2.0  # seconds between looks at the study while waiting for other workers' last trials
# Trials that raise an error (out of memory for a large configuration) are skipped; this many
# in a row means the cause is not the parameters (a bug, a broken GPU), so the worker stops.
FAILED_IN_A_ROW = 3
# Configurations over max_params cost no training, but a space that is almost all over it
# (TPE learns the feasible region within a few dozen) should be narrowed, not searched.
REJECTED_IN_A_ROW = 50


@dataclass(frozen=True)
class WorkOptions:
    """How one worker runs; each field is the `work` option of the same name (pool.py)."""

    n_trials: int | None = None  # this worker's own limit; None = until the study's budget
    timeout: float | None = None  # seconds; no new trial starts after this
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"  # auto, fp32, bf16 (see device.pick_precision)
    threads: int | None = None  # torch CPU threads per worker process (set by the CLI)
    data_dir: Path | None = None  # explicit data location (else cache, then download)
    cache: Path | None = None  # where downloaded data is kept; None = settings.cache_home()
    download: bool = True  # allow downloading the data into the cache
    wait: bool = True  # when the budget is spent, wait for trials still running elsewhere
    artifacts: str | None = None  # checkpoint location (folder or s3://BUCKET); None = default
    keep: bool = True  # keep finished trials' weights and probabilities (search/kept.py)


@dataclass
class WorkSummary:
    states: dict[str, int] = field(default_factory=dict)  # this worker's trials by final state
    seconds: float = 0.0
    stop_reason: str = ""

    @property
    def trials(self) -> int:
        return sum(self.states.values())

    def count(self, state: str) -> None:
        self.states[state] = self.states.get(state, 0) + 1


@dataclass
class Session:
    """Everything the loop needs, set up once."""

    study: optuna.Study
    spec: StudySpec
    trials: Trials
    objective: Objective
    options: WorkOptions
    stop: Stop
    listener: Listener
    waiting_noted: bool = False  # "budget spent, waiting for N trials" was said

    def note(self, text: str) -> None:
        self.listener(Note(text))


def run(
    storage_url: str,
    study_name: str,
    options: WorkOptions = WorkOptions(),
    settings: Settings = Settings(),
    *,
    listener: Listener = ignore,
    stop: Stop | None = None,
    download_progress: data_mod.Progress | None = None,
) -> WorkSummary:
    """Run trials until the study's budget is spent (or this worker's own limit is hit).

    With a `stop` whose signal handlers are installed (resilience.stop.install), SIGTERM or
    Ctrl-C hands the current trial back after its epoch and raises errors.Interrupted.
    """
    session = open_session(
        storage_url,
        study_name,
        options,
        settings,
        listener=listener,
        stop=stop or Stop.unsignalled(),
        download_progress=download_progress,
    )
    return loop(session)


def prepare(
    storage_url: str,
    study_name: str,
    options: WorkOptions,
    settings: Settings,
    *,
    download_progress: data_mod.Progress | None = None,
    here: bool = True,
) -> None:
    """What `--jobs N` checks once before starting N workers: the study, the device and the
    data (downloaded here once, not by N workers at the same time). `here=False` (workers on
    other machines): the study only; each node checks its own device and finds its own data."""
    storage = open_storage(storage_url, must_exist=True, wait=settings.storage_wait)
    study, spec = study_mod.load(storage, study_name)
    study_mod.check_family(study, spec)  # once here, not once per worker
    storage.engine.dispose()  # hold no database connection while the workers run
    if not here:
        return
    check_precision(options.precision, resolve_device(options.device))
    data_mod.load(
        spec.dataset,
        options.data_dir,
        cache_dir=options.cache,
        download=options.download,
        progress=download_progress,
    )


def open_session(
    storage_url: str,
    study_name: str,
    options: WorkOptions,
    settings: Settings,
    *,
    listener: Listener,
    stop: Stop,
    download_progress: data_mod.Progress | None = None,
) -> Session:
    device = resolve_device(options.device)
    check_precision(options.precision, device)

    def note(text: str) -> None:
        listener(Note(text))

    def storage_step(what: str, action):  # type: ignore[no-untyped-def]
        return retrying(action, what=what, wait=settings.storage_wait, note=note)

    storage = open_storage(storage_url, must_exist=True, wait=settings.storage_wait)
    study, spec = storage_step("loading the study", lambda: study_mod.load(storage, study_name))
    storage_step("checking the family", lambda: study_mod.check_family(study, spec))
    raw = data_mod.load(
        spec.dataset,
        options.data_dir,
        cache_dir=options.cache,
        download=options.download,
        message=note,
        progress=download_progress,
    )
    storage_step("checking the data", lambda: study_mod.check_data(study, raw))
    note(f"data: {raw.source}")
    split = data_mod.split(
        raw, validation_size=spec.validation_size, train_size=spec.train_size, device=device
    )
    note(
        f"study {spec.name}: {spec.family}, {spec.epochs} epochs/trial, budget "
        f"{spec.budget()} trials; {len(split.train_x):,} train / {len(split.val_x):,} "
        f"validation / {len(split.test_x):,} test images on {device}"
    )
    note(f"precision: {describe_precision(options.precision, device)}")
    if not (origin := spec.family_def.origin).built_in:
        note(f"family {spec.family}: {origin.describe()}")
    trials = Trials(
        study,
        storage,
        settings,
        budget=spec.budget(),
        counts=uses_budget,
        stop=stop,
        note=note,
        done=study_mod.stop_rule(spec),
    )
    checkpoints = Checkpoints.at(options.artifacts or default_artifacts())
    objective = Objective(spec, split, checkpoints, listener, options.precision, options.keep)
    return Session(study, spec, trials, objective, options, stop, listener)


def loop(s: Session) -> WorkSummary:
    """Trials until a limit; an artifact store that fails outside a trial (removing a finished
    trial's checkpoints) stops the worker too, with nothing to hand back."""
    try:
        return _loop(s)
    except EnvironmentFault as e:
        if e.outcome:  # said already, with its trial handed back
            raise
        raise e.stopping("no trial was running or lost") from None


def _loop(s: Session) -> WorkSummary:
    summary, started, streak = WorkSummary(), time.monotonic(), _Streaks()
    while not (reason := _limit_reached(s.options, summary, started)):
        _sweep_dead(s)
        with s.stop.holding_a_trial():
            lease = s.trials.take()
            if lease is not None:
                _run_one(s, lease, summary, streak)
        if s.stop.requested:
            what = "the running trial finished first" if lease else "between trials"
            raise s.stop.interrupted(f"{what}; nothing to re-queue")
        if lease is None and s.trials.finished:
            reason = s.trials.finished  # the goal or the patience: no waiting for the others
            break
        if lease is None and not _others_running(s):
            reason = f"the study's budget of {s.trials.budget} trials is spent"
            _sweep_leftovers(s)
            break
    summary.stop_reason = reason
    summary.seconds = time.monotonic() - started
    return summary


def _limit_reached(options: WorkOptions, summary: WorkSummary, started: float) -> str:
    if options.n_trials is not None and summary.trials >= options.n_trials:
        return f"ran the {options.n_trials} trial(s) asked of this worker"
    if options.timeout is not None and time.monotonic() - started >= options.timeout:
        return f"timeout of {options.timeout:g} s reached"
    return ""


def _sweep_dead(s: Session) -> None:
    for dead in s.trials.sweep_dead().given_up:
        s.objective.cleanup(dead)
        s.note(
            f"trial {dead.number} was given up: its worker died {crashes(dead) + 1} times "
            "(out of memory?); its checkpoints are removed"
        )


@dataclass
class _Streaks:
    """Trials in a row that failed with an error of their own, or were over max_params."""

    failed: int = 0
    rejected: int = 0


def _run_one(s: Session, lease: Lease, summary: WorkSummary, streak: _Streaks) -> None:
    """Run one taken trial to its end."""
    with lease:
        try:
            if s.stop.requested:  # the signal came while the trial was being taken
                raise StopRequested
            done = lease.finish(s.objective.run(lease))
        except optuna.TrialPruned:
            done = lease.prune()
        except Infeasible as e:
            _rejected(s, lease, e, summary, streak)
            return
        except StopRequested:
            raise s.stop.interrupted(lease.hand_back("stopped mid-trial")) from None
        except EpochCut:
            handed = lease.hand_back("its epoch was cut short")
            raise s.stop.interrupted(
                f"the epoch did not finish within {s.stop.stop_wait:g} s; {handed}"
            ) from None
        except TakenOver as e:
            s.note(str(e))
            return
        except EnvironmentFault as e:
            # The disk or the store broke, not the trial: re-queued as after a stop (its
            # checkpoints kept, never given up for it), and this worker stops at the first sign
            # (any trial would fail the same way here) instead of burning through configurations.
            raise e.stopping(lease.hand_back("handed back, not failed")) from None
        except TrialFailed as e:
            _failed(s, lease, e, summary, streak)
            return
    streak.failed = streak.rejected = 0
    _finished(s, done, summary)


def _failed(
    s: Session, lease: Lease, e: TrialFailed, summary: WorkSummary, streak: _Streaks
) -> None:
    """FAIL, not retried, and not counted against the budget: the sampler tries other
    parameters. A cause that fails every trial (a broken GPU, a bug) stops the worker after
    FAILED_IN_A_ROW instead of burning through trials."""
    # TakenOver: failed as dead elsewhere meanwhile; its retry will fail the same way, on record.
    with contextlib.suppress(TakenOver):
        s.objective.cleanup(lease.fail(e.error))
    summary.count("FAIL")
    s.note(f"{e}; it is not retried (its parameters would fail again)")
    streak.failed += 1
    if streak.failed >= FAILED_IN_A_ROW:
        raise HpoError(
            f"{streak.failed} trials in a row failed, the last with {e.error}; fix the cause, "
            "then start the worker again (failed trials do not use up the budget; `mnist-hpo "
            "status` lists them)"
        )


def _rejected(
    s: Session, lease: Lease, e: Infeasible, summary: WorkSummary, streak: _Streaks
) -> None:
    # Recorded as such and PRUNED at zero epochs (its constraint, above 0, is set already): it
    # uses no budget (budget.FREE_ATTRS).
    with contextlib.suppress(TakenOver):
        lease.annotate("rejecting it", INFEASIBLE, e.why)
        lease.prune()
    summary.count("REJECTED")
    s.note(str(e))
    streak.rejected += 1
    if streak.rejected >= REJECTED_IN_A_ROW:
        raise HpoError(
            f"{streak.rejected} configurations in a row had more parameters than max_params "
            f"{s.spec.max_params:,}; narrow the search in the spec's [params] (smaller widths "
            "or channels, see `mnist-hpo families`) or raise max_params"
        )


def _finished(s: Session, t: FrozenTrial, summary: WorkSummary) -> None:
    summary.count(t.state.name)
    s.objective.cleanup(t)
    best = s.trials.retrying("reading the best trial", lambda: study_mod.best_trial(s.study))
    steps = sorted(t.intermediate_values)
    last = t.intermediate_values[steps[-1]] if steps else None
    s.listener(
        TrialFinished(
            number=t.number,
            state=t.state.name,
            val_accuracy=t.values[0] if t.values else last,
            test_accuracy=t.user_attrs.get("test_accuracy")
            if t.state == TrialState.COMPLETE
            else None,
            epochs=len(steps),
            seconds=study_mod.seconds(t),
            best_val=best.values[0] if best else None,
        )
    )


def _others_running(s: Session) -> bool:
    """Budget spent: wait while trials still run elsewhere (a dead worker's is retried here)."""
    running = s.trials.running_elsewhere()
    if not running or not s.options.wait:
        return False
    if not s.waiting_noted:
        s.note(
            f"budget of {s.trials.budget} trials is spent; waiting for {running} trial(s) "
            "running on other workers (a dead worker's trial is retried here)"
        )
        s.waiting_noted = True
    time.sleep(POLL)
    return True


def _sweep_leftovers(s: Session) -> None:
    """The worker that ends a study removes checkpoints a finished trial's cleanup missed (its
    worker killed between the result and the cleanup): soak.py saw 2 such files in 4 runs of 96
    trials with 8 SIGKILLs."""
    if s.trials.running_elsewhere():
        return
    trials = s.trials.retrying("reading the study", lambda: s.study.get_trials(deepcopy=False))
    leftover = s.objective.checkpoints.remove_trials(trials, s.spec.epochs)
    if leftover:
        s.note(f"removed {leftover} checkpoint file(s) of interrupted trials")
