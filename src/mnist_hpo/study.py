"""Storage from a URL, and creating, loading, listing and deleting studies that carry a spec."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from mnist_hpo import __version__
from mnist_hpo.algorithms import make_pruner, make_sampler
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.spec import StudySpec

SPEC_ATTR = "spec"  # study user attr holding StudySpec.to_dict()
DATA_ATTR = "data"  # study user attr: fingerprint and source of the data the first worker used

# Heartbeat: a worker marks its running trial alive every HEARTBEAT seconds from a side thread
# (training releases the GIL inside torch ops, so the thread keeps time even mid-epoch). A trial
# silent for GRACE seconds is failed and re-queued by the next worker that asks for a trial.
HEARTBEAT = 10
GRACE = 60
MAX_RETRY = 3  # a trial that kills its worker 3 times (e.g. out of memory) is given up


def default_storage_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return f"sqlite:///{Path(base) / 'mnist-hpo' / 'studies.db'}"


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def open_storage(url: str, *, must_exist: bool = False) -> RDBStorage:
    """An Optuna RDBStorage for any SQLAlchemy URL, with heartbeat and retry of dead trials.

    `postgresql://` means psycopg 3 (the driver this package installs). With `must_exist`, a
    SQLite URL naming a missing file is an error instead of a new empty database.
    """
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(
            f"storage {url!r} is not a database URL; use sqlite:///path/studies.db or "
            "postgresql://user@host:5432/dbname"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not parsed.database or parsed.database == ":memory:":
            raise UsageError("an in-memory SQLite storage cannot be shared; give a file path")
        if must_exist and not path.is_file():
            raise HpoError(
                f"no storage at {path}; create a study there first (mnist-hpo create-study) "
                "or pass the right --storage / MNIST_HPO_STORAGE"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        # Wait up to 60 s for another worker's write lock instead of failing at once with
        # "database is locked" (sqlite3's default wait is 5 s).
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        # Two connections per worker (main thread + heartbeat thread), checked before use so a
        # restarted database server costs a reconnect, not a crash.
        engine_kwargs.update(pool_size=2, max_overflow=2, pool_pre_ping=True)
    shown = redact(url)
    try:
        with warnings.catch_warnings():
            # Heartbeat and its retry callback are marked experimental since Optuna 2.8; they
            # are Optuna 5's documented crash-recovery mechanism and we rely on them on purpose.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                parsed.render_as_string(hide_password=False),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT,
                grace_period=GRACE,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY, inherit_intermediate_values=True
                ),
            )
    except (sqlalchemy.exc.NoSuchModuleError, ModuleNotFoundError) as e:
        raise UsageError(
            f"storage {shown} needs a database driver that is not installed ({e}); use "
            "sqlite:/// or postgresql:// URLs"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", e) or e).strip().splitlines()[0]
        raise HpoError(
            f"cannot open storage {shown} ({reason}); check that the database server is "
            "running and the URL is right"
        ) from None


def create(storage: RDBStorage, spec: StudySpec) -> tuple[optuna.Study, bool]:
    """Create the study with its spec; an existing study with the same spec is left alone.

    Returns (study, created). A study of the same name with a different spec is an error:
    silently changing the search under running workers would mix two experiments.
    """
    wanted = spec.to_dict()
    try:
        study = optuna.create_study(storage=storage, study_name=spec.name, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=spec.name)
        stored = study.user_attrs.get(SPEC_ATTR)
        if stored == wanted:
            return study, False
        if stored is not None or study.trials:
            differ = sorted(k for k in wanted if (stored or {}).get(k) != wanted[k])
            raise UsageError(
                f"study {spec.name!r} already exists with a different spec (differs in: "
                f"{', '.join(differ) or 'everything'}); create it under another --name, or "
                f"delete it first with `mnist-hpo delete-study {spec.name}`"
            ) from None
    study.set_user_attr(SPEC_ATTR, wanted)
    study.set_user_attr("created_by", f"mnist-hpo {__version__}")
    for params in spec.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    return study, True


def read_spec(storage: RDBStorage, name: str) -> StudySpec:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        known = optuna.get_all_study_names(storage=storage)
        hint = f"studies here: {', '.join(known)}" if known else "this storage has no studies"
        raise HpoError(
            f"no study named {name!r} ({hint}); create it with `mnist-hpo create-study {name}`"
        ) from None
    stored = storage.get_study_user_attrs(study_id).get(SPEC_ATTR)
    if stored is None:
        raise HpoError(
            f"study {name!r} was not created by mnist-hpo (it has no spec); create one with "
            "`mnist-hpo create-study`"
        )
    return StudySpec.from_dict(stored, source=f"the spec stored in study {name!r}")


def load(storage: RDBStorage, name: str) -> tuple[optuna.Study, StudySpec]:
    """Load a study with the sampler and pruner rebuilt from its stored spec."""
    spec = read_spec(storage, name)
    sampler = make_sampler(
        spec.sampler, spec.sampler_options, seed=spec.seed, grid=spec.grid_space()
    )
    pruner = make_pruner(spec.pruner, spec.pruner_options, epochs=spec.epochs)
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    return study, spec


def delete(storage: RDBStorage, name: str) -> None:
    read_spec(storage, name)  # the same clear error for a missing study
    optuna.delete_study(study_name=name, storage=storage)


def fail_stale(study: optuna.Study) -> None:
    """Fail (and so re-queue) trials whose worker stopped sending heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@dataclass(frozen=True)
class Progress:
    """Where a study stands against its budget."""

    counts: dict[str, int]  # trial state name -> count
    budget: int

    @property
    def spent(self) -> int:
        """Trials that use up budget: finished, running, or queued (failed ones are retried)."""
        c = self.counts
        return sum(c.get(s, 0) for s in ("COMPLETE", "PRUNED", "RUNNING", "WAITING"))

    @property
    def open(self) -> int:
        """Trials someone still has to finish: running elsewhere, or waiting to be picked up."""
        return self.counts.get("RUNNING", 0) + self.counts.get("WAITING", 0)


def progress(study: optuna.Study, spec: StudySpec) -> Progress:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return Progress(counts, spec.budget())


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value or 0.0, default=None)
