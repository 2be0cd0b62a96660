"""Studies from Python: create, load, list and delete them; run their workers; read their trials,
best trial, plots and report; export the best model. The CLI's commands call these.

Where an argument is left out, the API reads the same environment variables as the CLI's options
(MNIST_HPO_STORAGE, MNIST_HPO_DATA, MNIST_HPO_ARTIFACTS, MNIST_HPO_STUDIES), once, in
`defaults()` below, at the call: the rest of the package reads no environment. Errors are the
project's (errors.py), with the sentences the CLI prints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_hpo.api import records
from mnist_hpo.api.records import (
    Best,
    Ensemble,
    FamilyInfo,
    Removed,
    Status,
    StudyInfo,
    Trial,
    WorkResult,
)
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.settings import Settings, default_artifacts, default_storage_url

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

    from mnist_hpo.outputs.export import Exported
    from mnist_hpo.search.spec import StudySpec

SpecRef = str | Path | Mapping[str, Any]  # a shipped or own spec NAME, a .toml path, or a dict
PLOTS = ("history", "intermediate", "importances", "size", "parallel", "slice", "contour")
DICT_SOURCE = "the spec dict"  # where a dict's problems are said to be, as a file's path is


@dataclass(frozen=True)
class Defaults:
    """What a left-out argument means: the CLI's environment variables, else its defaults."""

    storage: str
    data_dir: Path | None
    artifacts: str
    studies: list[Path]  # extra folders searched first for spec NAMEs


def defaults() -> Defaults:
    env = os.environ
    folders = [Path(p) for p in env.get("MNIST_HPO_STUDIES", "").split(os.pathsep) if p]
    return Defaults(
        storage=env.get("MNIST_HPO_STORAGE") or default_storage_url(),
        data_dir=Path(env["MNIST_HPO_DATA"]) if env.get("MNIST_HPO_DATA") else None,
        artifacts=env.get("MNIST_HPO_ARTIFACTS") or default_artifacts(),
        studies=folders,
    )


@contextmanager
def storage_calls(what: str = "reading the study") -> Iterator[None]:
    """A storage error inside is one sentence (HpoError), as the CLI says it."""
    from mnist_hpo.resilience.retry import storage_errors

    with storage_errors(what):
        yield


def _path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)


def _open(url: str, *, must_exist: bool = True, read_only: bool = False) -> RDBStorage:
    from mnist_hpo.resilience.storage import open_storage

    return open_storage(url, must_exist=must_exist, read_only=read_only)


def read_spec(
    spec: SpecRef, *, name: str | None = None, search: Sequence[Path] | None = None
) -> tuple[StudySpec, str]:
    """A spec checked as `create-study` checks it, and where it came from (for messages).
    `search`: the folders a NAME is looked up in, in order (default: $MNIST_HPO_STUDIES, then
    ./studies, then the shipped specs)."""
    from mnist_hpo.search import spec_files
    from mnist_hpo.search.spec import parse

    if isinstance(spec, Mapping):
        data = dict(spec)
        if name:
            data["name"] = name
        if not data.get("name"):
            raise UsageError(f"{DICT_SOURCE} has no name; give it a 'name' key or pass name=")
        return parse(data, source=DICT_SOURCE, default_name=data["name"]), DICT_SOURCE
    folders = spec_files.search_path(defaults().studies) if search is None else list(search)
    path = spec_files.resolve_path(str(spec), folders)
    return spec_files.read_spec(path, name=name), spec_files.origin(path)


def spec_dict(ref: str | Path, *, studies: Sequence[Path] | None = None) -> dict[str, Any]:
    """A spec file's keys as a dict, found as `create_study` finds a NAME (or a .toml path):
    change what you like and pass it to `create_study`, which checks it as it checks a file."""
    import tomllib

    from mnist_hpo.search import spec_files

    folders = spec_files.search_path([*(studies or []), *defaults().studies])
    path = spec_files.resolve_path(str(ref), folders)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML ({e}); fix the syntax there") from None


def create(spec: StudySpec, storage: str | None = None) -> tuple[Study, bool]:
    """The study of a checked spec, created unless it exists with the same spec: (study,
    whether this call created it). A different spec under the same name is a UsageError."""
    import optuna

    from mnist_hpo.search import study as study_mod

    url = storage or defaults().storage
    was = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not Optuna's "A new study created"
    try:
        with storage_calls("creating the study"):
            opened = _open(url, must_exist=False)
            created = study_mod.create(opened, spec)[1]
            made, stored = study_mod.load(opened, spec.name)  # with the spec's sampler, pruner
    finally:
        optuna.logging.set_verbosity(was)
    return Study(url, spec.name, stored, made), created


def create_study(
    spec: SpecRef,
    *,
    name: str | None = None,
    storage: str | None = None,
    studies: Sequence[Path] | None = None,
) -> Study:
    """Create a study (or return the existing one with this very spec).

    `spec`: a spec NAME (`mnist-hpo studies` lists them), a path to a .toml file, or a dict
    with a spec file's keys, checked exactly as a file is. `name` overrides the study name;
    `storage` is a SQLAlchemy URL (default: $MNIST_HPO_STORAGE, else the SQLite file the CLI
    uses); `studies`: folders searched first for a NAME.
    """
    from mnist_hpo.search.spec_files import search_path

    folders = search_path([*(studies or []), *defaults().studies])
    parsed, _ = read_spec(spec, name=name, search=folders)
    return create(parsed, storage)[0]


def load_study(name: str, *, storage: str | None = None, read_only: bool = False) -> Study:
    """A study created before (by the CLI or the API). `read_only` opens the storage without
    its schema check (faster; for reading only)."""
    from mnist_hpo.search import study as study_mod

    url = storage or defaults().storage
    with storage_calls():
        loaded, spec = study_mod.load(_open(url, read_only=read_only), name)
    return Study(url, name, spec, loaded)


def studies(storage: str | None = None) -> list[StudyInfo]:
    """Every study in the storage with its progress and best accuracies (`mnist-hpo list`)."""
    import optuna

    from mnist_hpo.search import progress
    from mnist_hpo.search import study as study_mod
    from mnist_hpo.search.budget import uses_budget
    from mnist_hpo.search.spec import StudySpec

    found = []
    with storage_calls("listing the studies"):
        st = _open(storage or defaults().storage, read_only=True)
        for s in optuna.get_all_study_summaries(storage=st, include_best_trial=False):
            stored = s.user_attrs.get(study_mod.SPEC_ATTR) or {}
            mine = st.get_all_trials(st.get_study_id_from_name(s.study_name), deepcopy=False)
            # The budget as every command counts it (search/budget.py), not Optuna's n_trials,
            # which also counts handed-back trials and their queued retries.
            best = progress.best_of(mine)  # feasible (within max_params); a front's top
            found.append(
                StudyInfo(
                    name=s.study_name,
                    family=stored.get("family", "?"),
                    budget=StudySpec.from_dict(stored).budget() if stored else None,
                    spent=sum(map(uses_budget, mine)),
                    best_validation=best.values[0] if best else None,
                    best_test=best.user_attrs.get("test_accuracy") if best else None,
                    pareto=len(stored.get("objectives", [])) > 1,
                )
            )
    return found


def families() -> list[FamilyInfo]:
    """The model families, built-in and from installed plugins, with the parameters each
    searches (`mnist-hpo families`)."""
    from mnist_hpo.families.registry import available
    from mnist_hpo.ml.hyperparams import SPEC_DEPENDENT
    from mnist_hpo.search.spec import declared_params

    found = []
    for listed in available():
        if listed.family is None:
            found.append(FamilyInfo(listed.name, listed.origin, "", {}, listed.problem))
            continue
        params = {
            name: SPEC_DEPENDENT.get(name) or param.describe()
            for name, param in sorted(declared_params(listed.family).items())
        }
        found.append(FamilyInfo(listed.name, listed.origin, listed.family.summary, params))
    return found


def ensemble(
    names: Sequence[str],
    *,
    storage: str | None = None,
    size: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    cache: str | Path | None = None,
    download: bool = True,
    artifacts: str | None = None,
) -> Ensemble:
    """`mnist-hpo ensemble NAME...`: an ensemble of the named studies' kept trials (see
    Study.ensemble), recorded on the first study."""
    from mnist_hpo.outputs import ensemble as ensemble_mod

    with storage_calls("building the ensemble"):
        chosen = ensemble_mod.run(
            storage or defaults().storage,
            list(names),
            artifacts or defaults().artifacts,
            size=size,
            seed=seed,
            data_dir=_path(data_dir) or defaults().data_dir,
            cache_dir=_path(cache),
            download=download,
        )
    return records.ensemble_of(chosen)


class Study:
    """A study with its spec, in a storage: run it, read it, plot it, export its best model.

    Get one from `create_study` or `load_study`. Each read asks the storage afresh, so a
    Study follows workers running elsewhere.
    """

    def __init__(self, url: str, name: str, spec: StudySpec, study: optuna.Study) -> None:
        self.url = url  # the storage's SQLAlchemy URL
        self.name = name
        self.spec = spec  # search.spec.StudySpec: family, epochs, budget, sampler, ...
        self.optuna = study  # the Optuna study, sampler and pruner rebuilt from the spec

    def __repr__(self) -> str:
        from mnist_hpo.resilience.storage import redact

        return f"<Study {self.name!r}: {self.spec.family}, in {redact(self.url)}>"

    def _trials(self) -> list[optuna.trial.FrozenTrial]:
        with storage_calls():
            return self.optuna.get_trials(deepcopy=False)

    def status(self) -> Status:
        """Where the study stands: trials by outcome, the budget used, the best trial."""
        from mnist_hpo.search import study as study_mod
        from mnist_hpo.search.kept import recorded_ensemble

        with storage_calls():
            summary = study_mod.summarize(self.optuna, self.spec)
            snap = study_mod.snapshot(self.optuna, self.spec)
            data = self.optuna.user_attrs.get(study_mod.DATA_ATTR)
            ensemble = recorded_ensemble(self.optuna)
        front = summary.front
        best = self._best(front[0], ensemble) if front else None
        return Status(
            name=self.name,
            family=self.spec.family,
            epochs=self.spec.epochs,
            budget=snap.budget,
            spent=snap.spent,
            counts=dict(snap.counts),
            best=best,
            finished=snap.finished,
            data=data["source"] if data else f"{self.spec.dataset} (no worker has run yet)",
            summary=summary,
        )

    def _best(self, t: optuna.trial.FrozenTrial, ensemble: dict[str, Any] | None) -> Best:
        from mnist_hpo.search import study as study_mod

        record = study_mod.best_record(self.optuna, self.spec, t)
        record["ensemble"] = ensemble  # what `mnist-hpo ensemble` recorded, or None
        return records.best_of(record)

    def front(self) -> list[Best]:
        """The best trial, or a multi-objective study's Pareto front (by validation accuracy);
        [] before any trial completed."""
        from mnist_hpo.search import study as study_mod
        from mnist_hpo.search.kept import recorded_ensemble

        with storage_calls():
            ensemble = recorded_ensemble(self.optuna)  # read once, not once per front trial
            return [self._best(t, ensemble) for t in study_mod.front(self.optuna)]

    @property
    def best(self) -> Best:
        """The best trial by validation accuracy (HpoError before any completed)."""
        front = self.front()
        if not front:
            raise HpoError(
                f"study {self.name!r} has no completed (feasible) trial yet; run "
                f"`mnist-hpo work {self.name}`"
            )
        return front[0]

    def trial_records(self) -> list[Trial]:
        """Every trial as a record, by number."""
        from mnist_hpo.search.progress import retried_numbers

        trials = self._trials()
        retried = retried_numbers(trials)
        return [records.trial_of(t, retried) for t in sorted(trials, key=lambda t: t.number)]

    def trials(self) -> Any:
        """Every trial as a row (number, state, accuracies, epochs, seconds, parameter count,
        then `params_NAME` columns): a pandas DataFrame when pandas is installed (the
        `notebook` extra), else a list of Trial records."""
        found = self.trial_records()
        try:
            import pandas
        except ModuleNotFoundError:
            return found
        names = records.param_names(found)
        columns = [*records.TRIAL_COLUMNS, *(f"params_{n}" for n in names)]
        rows = [records.trial_row(t, names) for t in found]
        return pandas.DataFrame(rows, columns=columns).set_index("number")

    def plot(self, kind: str = "history") -> Any:
        """One of the report's plotly figures: history, intermediate (accuracy per epoch),
        importances, size (accuracy against parameters), or Optuna's parallel, slice and
        contour plots. In Jupyter a figure shows itself; elsewhere `.show()` or `.write_html`."""
        from mnist_hpo.outputs import report

        if kind not in PLOTS:
            raise UsageError(f"no plot named {kind!r}; choose one of {', '.join(PLOTS)}")
        with storage_calls("plotting the study"):
            return report.figure(self.optuna, kind)

    def report(self, path: str | Path | None = None, *, top: int = 10) -> Path:
        """Write the self-contained HTML report (`mnist-hpo report`); returns its path."""
        from mnist_hpo.outputs import report

        out = Path(path or f"{self.name}-report.html")
        with storage_calls("writing the report"):
            return report.write_report(self.url, self.name, out, top=top)

    def export_best(
        self,
        path: str | Path | None = None,
        *,
        trial: int | None = None,
        ensemble: bool = False,
        device: str | None = None,
        threads: int | None = None,
        data_dir: str | Path | None = None,
        cache: str | Path | None = None,
        download: bool = True,
        artifacts: str | None = None,
        message: Callable[[str], None] | None = None,
    ) -> Exported:
        """Save the best trial's model (or `trial`'s; or with `ensemble=True` the ensemble
        `Study.ensemble` recorded) as a safetensors file for `predict`, as `mnist-hpo
        export-best` does: kept weights are copied and checked against the recorded validation
        accuracy; a trial that kept none is retrained with the worker's threads and precision
        (`message` hears its progress). Returns what was written (path, meta)."""
        from mnist_hpo.outputs import export

        given = defaults()
        common: dict[str, Any] = {
            "artifacts": artifacts or given.artifacts,
            "data_dir": _path(data_dir) or given.data_dir,
            "cache_dir": _path(cache),
            "download": download,
        }
        if ensemble:
            out = Path(path or f"{self.name}-ensemble.safetensors")
            with storage_calls("exporting the ensemble"):
                return export.export_ensemble(self.url, self.name, out, **common)
        default = f"{self.name}-best" if trial is None else f"{self.name}-trial{trial}"
        with storage_calls("exporting the model"):
            return export.export_best(
                self.url,
                self.name,
                Path(path or f"{default}.safetensors"),
                trial_number=trial,
                device=device,
                threads=threads,
                message=message or (lambda _: None),
                **common,
            )

    def ensemble(
        self,
        *others: Study | str,
        size: int | None = None,
        seed: int = 0,
        data_dir: str | Path | None = None,
        cache: str | Path | None = None,
        download: bool = True,
        artifacts: str | None = None,
    ) -> Ensemble:
        """Greedy ensemble selection (Caruana et al., with replacement) over the kept trials of
        this study and `others` (same storage, dataset and validation split), on validation
        only: `size` picks, or by default as many (1-25) as score best on held-out halves of
        validation. The test accuracy is measured once, after. Recorded on this study, as `mnist-hpo
        ensemble` does (status, best, report, `export_best(ensemble=True)`)."""
        names = [self.name, *(o.name if isinstance(o, Study) else o for o in others)]
        return ensemble(
            names,
            storage=self.url,
            size=size,
            seed=seed,
            data_dir=data_dir,
            cache=cache,
            download=download,
            artifacts=artifacts,
        )

    def delete(self, *, artifacts: str | None = None) -> Removed:
        """Delete the study, its trials, the checkpoints they left and what they kept; returns
        how many files of each were removed."""
        from mnist_hpo.search import study as study_mod
        from mnist_hpo.search.checkpoints import Checkpoints
        from mnist_hpo.search.kept import Kept, ensembles_using

        location = artifacts or defaults().artifacts
        checkpoints = Checkpoints.at(location)
        with storage_calls("deleting the study"):
            storage = _open(self.url)
            trials = study_mod.delete(storage, self.name)
            using = ensembles_using(storage, self.name)
        return Removed(
            checkpoints=checkpoints.remove_trials(trials, self.spec.epochs),
            kept=Kept(checkpoints.store, location).remove_trials(trials),
            ensembles=tuple(using),
        )

    def work(
        self,
        jobs: int = 1,
        n_trials: int | None = None,
        timeout: float | None = None,
        device: str = "auto",
        *,
        precision: str = "auto",
        threads: int | None = None,
        data_dir: str | Path | None = None,
        cache: str | Path | None = None,
        download: bool = True,
        wait: bool = True,
        artifacts: str | None = None,
        keep: bool = True,
        settings: Settings | None = None,
        progress: Any = "auto",
        verbose: bool = False,
    ) -> WorkResult:
        """Run `jobs` worker processes until the budget is spent (or each worker's `n_trials`,
        or `timeout` seconds): the workers and crash safety of `mnist-hpo work --jobs N`.

        `progress`: "auto" shows the live view in Jupyter and nothing elsewhere; "notebook",
        "none", or a callable given each event (events.py) and its worker's label. An
        interrupt (Jupyter's stop button, Ctrl-C) asks the workers to finish their epoch and
        hand their trials back, as Ctrl-C does in the CLI, then raises KeyboardInterrupt.
        `keep=False` is `--no-keep`: finished trials keep no weights or probabilities.
        """
        from mnist_hpo.api.work import open_view, run_processes
        from mnist_hpo.fleet.cores import threads_per_job
        from mnist_hpo.fleet.worker import WorkOptions
        from mnist_hpo.view.live import Board
        from mnist_hpo.view.notebook import api_reporter

        if jobs < 1:
            raise UsageError(f"jobs must be at least 1, got {jobs}")
        given = defaults()
        options = WorkOptions(
            n_trials=n_trials,
            timeout=timeout,
            device=device,
            precision=precision,
            threads=threads or threads_per_job(jobs),
            data_dir=_path(data_dir) or given.data_dir,
            cache=_path(cache),
            download=download,
            wait=wait,
            artifacts=artifacts or given.artifacts,
            keep=keep,
        )
        board = Board()
        report = api_reporter(progress, board, verbose=verbose)
        started = time.monotonic()
        view = open_view(self.url, self.name, report, board)
        try:
            code = run_processes(
                self.url,
                self.name,
                options,
                settings or Settings(),
                jobs=jobs,
                verbose=verbose,
                view=view,
            )
        finally:
            view.close()
        return self._after_work(code, time.monotonic() - started, report.errors)

    def _after_work(self, code: int, seconds: float, errors: list[str]) -> WorkResult:
        if code in (130, 143):  # 128 + SIGINT / SIGTERM: the workers handed their trials back
            raise KeyboardInterrupt(
                f"study {self.name!r}: the workers stopped and handed their trials back"
            )
        if code == 74:
            raise HpoError(errors[-1] if errors else "a worker stopped on an environment fault")
        if code != 0:
            last = errors[-1].removeprefix("error: ") if errors else f"exit code {code}"
            raise HpoError(last)
        return WorkResult(code, seconds, self.status())
