"""Commands about studies and specs: create-study, status, best, list, delete-study, families,
studies, data."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.settings import default_artifacts

if TYPE_CHECKING:
    from mnist_hpo.search.spec_files import Listed
from mnist_hpo.cli.app import app
from mnist_hpo.cli.common import (
    ArtifactsOpt,
    CacheOpt,
    DataDirOpt,
    DownloadOpt,
    StorageOpt,
    StudiesOpt,
    StudyArg,
    command,
    download_bar,
    fmt_params,
    open_at,
    pct,
    reading,
    search,
    storage_url,
)


@app.command("create-study")
@command
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
    from mnist_hpo.api import studies as api
    from mnist_hpo.resilience.storage import redact

    parsed, where = api.read_spec(spec, name=name, search=search(studies))
    typer.echo(f"spec: {where}")
    url = storage_url(storage)
    made, created = api.create(parsed, url)
    study_obj = made.optuna
    if not created:
        typer.echo(f"study {parsed.name!r} already exists with this spec; nothing to do")
        return
    typer.echo(
        f"created study {parsed.name!r} in {redact(url)}: {parsed.family}, "
        f"{parsed.epochs} epochs/trial, {parsed.budget()} trials, {parsed.sampler} sampler, "
        f"{parsed.pruner} pruner, dataset {parsed.dataset}"
    )
    if not (origin := parsed.family_def.origin).built_in:
        typer.echo(
            f"family {parsed.family}: {origin.describe()}; recorded with the study, so every "
            "worker must have the same code"
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
        from mnist_hpo.search.study import WARM_ATTR

        w = study_obj.user_attrs[WARM_ATTR]
        typer.echo(
            f"warm start from {', '.join(w['from'])}: {w['imported']} trial(s) imported, "
            f"{w['skipped']} skipped (outside this study's space)"
        )


MAX_GIVEN_UP_SHOWN = 5  # status lists this many given-up trials; the dashboard shows them all


@app.command()
@command
def status(
    study: StudyArg,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Keep showing the study as it runs, from the storage (workers anywhere: other "
            "machines, Ray, Kubernetes), until it is done or Ctrl-C.",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="With --watch: seconds between reads of the study.")
    ] = 5.0,
    storage: StorageOpt = None,
) -> None:
    """Trials by what became of them, the budget, the data in use, and the best trial so far.

    A trial a stop handed back (or a dead worker's trial, retried) is counted "handed back":
    Optuna stores it as FAIL, with its retry queued, and it used no budget.
    """
    if watch:
        watch_study(storage_url(storage), study, interval)
        return
    print_status(storage_url(storage), study)


def print_status(url: str, name: str) -> None:
    from mnist_hpo.api import studies as api
    from mnist_hpo.search import family_origin

    found = api.load_study(name, storage=url, read_only=True)
    study, spec = found.optuna, found.spec
    stands = found.status()
    summary = stands.summary
    objectives = f", objectives {' + '.join(spec.objectives)}" if spec.multi_objective else ""
    typer.echo(
        f"study {name}: {spec.family}, {spec.epochs} epochs/trial, {spec.sampler} sampler, "
        f"{spec.pruner} pruner{objectives}"
    )
    if spec.description:
        typer.echo(f"  {spec.description}")
    origin = family_origin.recorded(study.user_attrs)
    if origin is not None and not origin.built_in:
        typer.echo(f"family {spec.family}: {origin.describe()}")
    typer.echo(f"data: {stands.data}")
    p = summary.progress
    states = ", ".join(f"{k} {v}" for k, v in p.counts.items()) or "none yet"
    typer.echo(f"trials: {p.spent}/{p.budget} of the budget used; {states}")
    for line in _status_extras(spec, summary):
        typer.echo(line)
    from mnist_hpo.search.kept import status_line as kept_line

    with reading():
        ensemble_line = kept_line(study, lambda: open_at(url, read_only=True))
    if ensemble_line:
        typer.echo(ensemble_line)
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
    typer.echo(f"  params: {fmt_params(best.params)}")


def watch_study(url: str, name: str, interval: float) -> None:
    """`status --watch`: the view of `work`, built from the storage every `interval` seconds,
    until the study is done or Ctrl-C (which ends it cleanly, exit 0). A failed read (the
    database restarting) is said once and retried at the next interval."""
    import time

    from mnist_hpo.search import study as study_mod
    from mnist_hpo.view.live import Board, Watch, use_live

    with reading():
        study, spec = study_mod.load(open_at(url, read_only=True), name)
    board = Board(from_storage=True)
    screen = Watch(board, terminal=use_live("auto"))
    try:
        while True:
            try:
                with reading():
                    board.update(study_mod.snapshot(study, spec))
                screen.problem("")
            except HpoError as e:
                screen.problem(str(e))
            screen.show()
            if board.snap is not None and board.snap.finished:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return
    finally:
        screen.close()


def _status_extras(spec: Any, summary: Any) -> list[str]:
    lines = []
    handed = summary.progress.counts.get("handed back", 0)
    if handed:
        lines.append(
            f"handed back: {handed} trial(s) stopped or lost mid-way and re-queued, each retry "
            "resuming from its checkpoint (FAIL in Optuna's storage: not failures, no budget)"
        )
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
        f"trial {t.number}: validation {pct(t.values[0])}, test {pct(a.get('test_accuracy'))}, "
        f"{len(t.intermediate_values)} epochs, {a.get('n_params', 0):,} parameters{extra}"
        f"{_retry_note(t)}"
    )


def _retry_note(t: Any) -> str:
    """For a trial that is the retry of handed-back ones: which, so it can be followed."""
    from mnist_hpo.resilience.retries import chain

    before = chain(t)[:-1]
    if not before:
        return ""
    return f" (resumed: the retry of trial {before[0]}, handed back {len(before)} time(s))"


@app.command()
@command
def best(
    study: StudyArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    storage: StorageOpt = None,
) -> None:
    """The best trial by validation accuracy (a multi-objective study: its Pareto front)."""
    from mnist_hpo.api import studies as api

    found = api.load_study(study, storage=storage_url(storage), read_only=True)
    front = found.front() or [found.best]  # .best: the sentence for a study without one
    if as_json:  # the best trial; the whole Pareto front (a list) for a multi-objective study
        records = [b.record for b in front]
        typer.echo(json.dumps(records if found.spec.multi_objective else records[0], indent=2))
        return
    trials = {t.number: t for t in found.optuna.get_trials(deepcopy=False)}
    for b in front:
        typer.echo(f"{_trial_line(trials[b.number], found.spec)} ({study}, {found.spec.family})")
        typer.echo(f"  params: {fmt_params(b.params)}")


@app.command()
@command
def trials(
    study: StudyArg,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="CSV with a header row, one params_NAME column each.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON list: one object per trial, params nested.")
    ] = False,
    storage: StorageOpt = None,
) -> None:
    """Every trial as a row: number, state, validation and test accuracy, epochs, seconds,
    parameter count and parameters; a table, or --csv / --json for spreadsheets and scripts."""
    from mnist_hpo.api import records
    from mnist_hpo.api import studies as api

    if as_csv and as_json:
        raise UsageError("--csv and --json: pick one")
    found = api.load_study(study, storage=storage_url(storage), read_only=True).trial_records()
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(t) for t in found], indent=2))
        return
    names = records.param_names(found)
    rows = [records.trial_row(t, names) for t in found]
    if as_csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, [*records.TRIAL_COLUMNS, *(f"params_{n}" for n in names)])
        writer.writeheader()
        writer.writerows(rows)
        typer.echo(out.getvalue(), nl=False)
        return
    typer.echo(_trials_table(found))


def _trials_table(found: list[Any]) -> str:
    """The plain table: one line a trial, its parameters last (the widest column)."""
    head = (
        f"{'#':>4} {'state':<11} {'val':>7} {'test':>7} {'epochs':>6} {'seconds':>8} {'params':>10}"
    )
    lines = [head + "  hyperparameters"]
    for t in found:
        secs = "-" if t.seconds is None else f"{t.seconds:.1f}"
        size = "-" if t.n_params is None else f"{t.n_params:,}"
        lines.append(
            f"{t.number:>4} {t.state:<11} {pct(t.validation_accuracy):>7} "
            f"{pct(t.test_accuracy):>7} {t.epochs:>6} {secs:>8} {size:>10}  {fmt_params(t.params)}"
        )
    if not found:
        lines.append("  (no trials yet)")
    return "\n".join(lines)


@app.command("list")
@command
def list_studies(storage: StorageOpt = None) -> None:
    """Studies in the storage with their progress and best accuracies."""
    from mnist_hpo.api import studies as api
    from mnist_hpo.resilience.storage import redact

    url = storage_url(storage)
    found = api.studies(url)
    if not found:
        typer.echo(f"no studies in {redact(url)}")
        return
    typer.echo(f"{'study':<24} {'family':<11} {'trials':>9} {'best val':>9} {'its test':>9}")
    for s in found:
        used = f"{s.spent}/{'?' if s.budget is None else s.budget}"
        kind = " (Pareto front: see status)" if s.pareto else ""
        typer.echo(
            f"{s.name:<24} {s.family:<11} {used:>9} {pct(s.best_validation):>9} "
            f"{pct(s.best_test):>9}{kind}"
        )


@app.command("delete-study")
@command
def delete_study(
    study: StudyArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Delete a study, all its trials and every file they keep in the artifact store: the
    kept weights and probabilities (export-best and ensemble read them) and the checkpoints of
    unfinished trials."""
    from mnist_hpo.api import studies as api
    from mnist_hpo.resilience.storage import redact

    url = storage_url(storage)
    location = artifacts or default_artifacts()
    found = api.load_study(study, storage=url)
    if not yes and not typer.confirm(
        f"delete study {study!r}, all its trials and their kept weights and probabilities?"
    ):
        raise UsageError("not deleted")
    removed = found.delete(artifacts=location)
    typer.echo(f"deleted study {study!r} from {redact(url)}")
    if removed.checkpoints:
        typer.echo(
            f"removed {removed.checkpoints} checkpoint file(s) of unfinished trials from {location}"
        )
    if removed.kept:
        typer.echo(f"removed {removed.kept} kept weights and probabilities file(s) from {location}")
    for other in removed.ensembles:
        typer.secho(
            f"study {other!r} records an ensemble with members from {study!r}: run "
            f"`mnist-hpo ensemble {other}` again before exporting it",
            fg=typer.colors.YELLOW,
        )


@app.command()
@command
def families() -> None:
    """The model families, built-in and from installed plugins: where each comes from and the
    parameters it searches."""
    from mnist_hpo.api import studies as api

    for listed in api.families():
        typer.secho(listed.name, bold=True, nl=False)
        if listed.problem:
            typer.echo(f" [{listed.origin}]: unusable: {listed.problem}")
            continue
        typer.echo(f" [{listed.origin}]: {listed.summary}")
        for name, described in listed.params.items():
            typer.echo(f"    {name:<14} {described}")
    typer.echo(
        'A spec may also name a module that holds a family: family = "my_pkg.lenet5"; plugins '
        "and the family contract: docs/families.md"
    )


@app.command("studies")
@command
def list_specs(studies: StudiesOpt = None) -> None:
    """The study specs a NAME can name: shipped ones and your own, in the order searched."""
    from mnist_hpo.search import spec_files

    folders = search(studies)
    found = spec_files.catalogue(folders)
    typer.echo("specs by folder, in the order a NAME is looked up (a .toml path is used as is)")
    for folder in folders:
        here = [s for s in found if s.folder == folder]
        typer.secho(spec_files.folder_label(folder), bold=True)
        if not here:
            typer.echo(f"  no specs here ({folder}/NAME.toml files would be found)")
        for s in here:
            typer.echo("  " + _spec_line(s))


def _spec_line(s: Listed) -> str:
    """One `studies` line: NAME, family, budget, description, and which file wins a NAME."""
    from mnist_hpo.search.spec_files import origin

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
@command
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
    from mnist_hpo.ml import data as data_mod

    raw = data_mod.load(
        dataset,
        data_dir,
        cache_dir=cache,
        download=download,
        message=lambda m: typer.echo(m),
        progress=download_bar(),
    )
    typer.echo(f"data: {raw.source}")
    typer.echo(
        f"{len(raw.train_images):,} training / {len(raw.test_images):,} test images; "
        f"fingerprint {raw.fingerprint}"
    )
