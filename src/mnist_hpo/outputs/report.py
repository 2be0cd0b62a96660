"""A study's report: one self-contained HTML file with Optuna's plots and the top trials.

The figures are Optuna's own plotly figures (the ones optuna-dashboard shows), embedded with
plotly.js inlined once, so the file opens offline and stays interactive (hover a point to see
its trial). About 5 MB, almost all plotly.js. Plotly is a dependency of mnist-hpo.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_hpo import __version__
from mnist_hpo.errors import HpoError
from mnist_hpo.outputs.selection import how
from mnist_hpo.resilience.storage import open_storage
from mnist_hpo.search import family_origin
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.budget import uses_budget
from mnist_hpo.search.kept import of as kept_of
from mnist_hpo.search.kept import recorded_ensemble
from mnist_hpo.search.spec import StudySpec

TOP = 10  # trials in the table by default


def _plotly() -> Any:
    try:
        import plotly
    except ModuleNotFoundError:
        raise HpoError(
            "the report needs plotly, a dependency of mnist-hpo that is missing here; "
            "install it with `pip install plotly`"
        ) from None
    return plotly


def write_report(storage_url: str, study_name: str, out: Path, *, top: int = TOP) -> Path:
    """Render the study's report to `out` (HTML)."""
    study, spec = study_mod.load(open_storage(storage_url, must_exist=True), study_name)
    page = render(study, spec, top=top)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as e:
        raise HpoError(f"cannot write {out} ({e}); pick a writable --output path") from None
    return out


def render(study: optuna.Study, spec: StudySpec, *, top: int = TOP) -> str:
    """The report as one HTML page; a study with no finished trial is an HpoError."""
    plotly = _plotly()
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    name = study.study_name
    if not finished:
        raise HpoError(
            f"study {name!r} has no finished trial yet, so there is nothing to report; run "
            f"`mnist-hpo work {name}` first"
        )
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE and t.values),
        key=lambda t: t.values[0],
        reverse=True,
    )
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    counts = study_mod.count_states(trials)

    sections = [_summary(study, spec, trials, counts, complete)]
    sections.append(_top_table(complete[:top], len(complete)))
    if spec.multi_objective and complete:
        sections.append(_pareto(study, spec))
    if complete:
        sections.append(
            _figure(
                "Optimisation history",
                _history(study, complete),
                "Validation accuracy of every completed trial by trial number, and the best so "
                "far (the line).",
            )
        )
    else:
        sections.append(_note("Optimisation history", "No trial has completed yet."))
    sections.append(
        _figure(
            "Validation accuracy per epoch (intermediate values)",
            optuna.visualization.plot_intermediate_values(study).update_layout(
                xaxis_title="epoch", yaxis_title="validation accuracy"
            ),
            f"Every finished trial's validation accuracy after each epoch. {len(pruned)} of "
            f"{len(finished)} finished trials were pruned: their lines stop before epoch "
            f"{spec.epochs}, where the {spec.pruner} pruner judged them unpromising.",
        )
    )
    sections.append(_importances(study, len(complete)))
    if complete:
        sections.append(_figure("Accuracy and model size", _size_figure(complete), _SIZE_NOTE))
    sections.append(_ensemble(study, finished))
    body = "\n".join(sections)
    return _PAGE.format(
        title=html.escape(f"mnist-hpo report: {name}"),
        plotly_js=plotly.offline.get_plotlyjs(),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        body=body,
    )


_SIZE_NOTE = (
    "Validation and test accuracy of each completed trial against its parameter count. "
    "Test accuracy is measured once per trial and never used to choose: the gap between the "
    "two marks is the honest estimate of how much choosing on validation overstates."
)


def _summary(
    study: optuna.Study,
    spec: StudySpec,
    trials: Sequence[FrozenTrial],
    counts: dict[str, int],
    complete: Sequence[FrozenTrial],
) -> str:
    data = study.user_attrs.get(study_mod.DATA_ATTR) or {}
    seconds = sum(study_mod.seconds(t) for t in trials)
    states = ", ".join(f"{v} {k}" for k, v in counts.items())
    spent = sum(map(uses_budget, trials))
    rows = [
        ("family", f"{spec.family} — {spec.family_def.summary}"),
        ("family origin", _origin(study)),
        ("description", spec.description or "—"),
        ("per trial", f"{spec.epochs} epochs, pruned by the {spec.pruner} pruner"),
        ("sampler", f"{spec.sampler}, seed {spec.seed}"),
        # Counted as every command counts (search/progress.py): a trial a stop handed back is
        # FAIL in Optuna's storage with its retry queued, and is neither failed nor budget.
        ("trials", f"{spent} of a budget of {spec.budget()} used; {states}"),
        ("compute", f"{_duration(seconds)} of trial wall-clock time in all"),
        ("data", data.get("source", spec.dataset)),
        (
            "split",
            f"validation: the last {spec.validation_size:,} training images; training: "
            + (f"the first {spec.train_size:,}" if spec.train_size else "the rest"),
        ),
        ("objectives", ", ".join(spec.metric_names())),
    ]
    if spec.max_params:
        rejected = sum("infeasible" in t.user_attrs for t in trials)
        rows.append(("max_params", f"{spec.max_params:,} ({rejected} rejected untrained)"))
    if warm := study.user_attrs.get(study_mod.WARM_ATTR):
        rows.append(("warm start", f"{warm['imported']} trials from {', '.join(warm['from'])}"))
    if complete:
        b = complete[0]
        rows.append(
            (
                "best",
                f"trial {b.number}: validation {_pct(b.values[0])}, test "
                f"{_pct(b.user_attrs.get('test_accuracy'))}, "
                f"{b.user_attrs.get('n_params', 0):,} parameters",
            )
        )
    table = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return (
        f"<section><h2>Summary</h2><table class='kv'>{table}</table>"
        "<p class='note'>The search maximises accuracy on the validation split; test accuracy "
        "is recorded once per completed trial and never drives pruning or selection.</p>"
        "</section>"
    )


def _origin(study: optuna.Study) -> str:
    origin = family_origin.recorded(study.user_attrs)
    return origin.describe() if origin else "not recorded (a study created before origins were)"


def _top_table(top: Sequence[FrozenTrial], n_complete: int) -> str:
    if not top:
        return _note("Top trials", "No trial has completed yet.")
    head = (
        "<tr><th>#</th><th>trial</th><th>validation</th><th>test</th><th>parameters</th>"
        "<th>epochs</th><th>time (s)</th><th>s/epoch</th><th>hyperparameters</th></tr>"
    )
    rows = []
    for rank, t in enumerate(top, 1):
        a = t.user_attrs
        epoch_s = a.get("epoch_seconds") or []
        wall = study_mod.seconds(t) or None
        cells = [
            str(rank),
            str(t.number),
            _pct(t.values[0]),
            _pct(a.get("test_accuracy")),
            f"{a['n_params']:,}" if "n_params" in a else "—",
            str(len(t.intermediate_values)),
            f"{wall:.1f}" if wall is not None else "—",
            f"{sum(epoch_s) / len(epoch_s):.2f}" if epoch_s else "—",
            " ".join(f"{k}={_fmt(v)}" for k, v in sorted(t.params.items())),
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (
        f"<section><h2>Top {len(top)} of {n_complete} completed trials</h2>"
        f"<table class='trials'>{head}{''.join(rows)}</table></section>"
    )


def _importances(study: optuna.Study, n_complete: int) -> str:
    title = "Parameter importances"
    if n_complete < 2:
        return _note(title, f"Needs at least 2 completed trials; this study has {n_complete}.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = optuna.visualization.plot_param_importances(
            study, target=_accuracy, target_name="val_accuracy"
        )
    equal = [w for w in caught if "importances will be equal" in str(w.message)]
    if equal:
        return _note(title, f"Too few completed trials ({n_complete}) to tell parameters apart.")
    return _figure(
        title,
        fig,
        f"How much each hyperparameter mattered for validation accuracy, by PED-ANOVA (Optuna "
        f"5's default) over {n_complete} completed trials; few trials make this rough.",
    )


def figure(study: optuna.Study, kind: str) -> Any:
    """One plotly figure by name, as the report draws it (the Python API's `Study.plot`):
    history, intermediate, importances, size, or Optuna's parallel, slice and contour."""
    _plotly()
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    needs = {"history": 1, "size": 1, "importances": 2, "parallel": 1, "slice": 1, "contour": 2}
    if len(complete) < needs.get(kind, 0):
        raise HpoError(
            f"the {kind} plot needs at least {needs[kind]} completed trial(s); study "
            f"{study.study_name!r} has {len(complete)}"
        )
    vis = optuna.visualization
    target: dict[str, Any] = {"target": _accuracy, "target_name": "val_accuracy"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # importances' "too few trials" and experimental notes
        match kind:
            case "history":
                return _history(study, complete)
            case "size":
                return _size_figure(complete)
            case "intermediate":
                return vis.plot_intermediate_values(study).update_layout(
                    xaxis_title="epoch", yaxis_title="validation accuracy"
                )
            case "importances":
                return vis.plot_param_importances(study, **target)
            case "parallel":
                return vis.plot_parallel_coordinate(study, **target)
            case "slice":
                return vis.plot_slice(study, **target)
            case "contour":
                return vis.plot_contour(study, **target)
    raise HpoError(f"no plot named {kind!r}")


def _accuracy(trial: FrozenTrial) -> float:
    """The first objective: validation accuracy, in single- and multi-objective studies."""
    return float(trial.values[0])


def _pareto(study: optuna.Study, spec: StudySpec) -> str:
    front = study_mod.front(study)
    fig = optuna.visualization.plot_pareto_front(
        study, target_names=spec.metric_names(), constraints_func=None
    )
    return _figure(
        "Pareto front",
        fig,
        f"Every completed trial by its objectives ({', '.join(spec.metric_names())}); the "
        f"{len(front)} trials no other trial beats on all of them at once form the front "
        "(infeasible ones, over max_params, are never on it).",
    )


def _history(study: optuna.Study, complete: Sequence[FrozenTrial]) -> Any:
    """Optuna's history plot of the validation accuracy, with the best-so-far line it leaves out
    when given a target (it draws that line only for a study's own objective)."""
    fig = optuna.visualization.plot_optimization_history(
        study, target=_accuracy, target_name="val_accuracy"
    )
    ordered = sorted(complete, key=lambda t: t.number)
    best, line = float("-inf"), []
    for t in ordered:
        best = max(best, t.values[0])
        line.append(best)
    fig.add_scatter(x=[t.number for t in ordered], y=line, mode="lines", name="best so far")
    span = accuracy_range([t.values[0] for t in ordered])
    return fig.update_layout(yaxis={"title": "validation accuracy", "range": span})


def accuracy_range(values: Sequence[float | None], *, span: float = 0.01) -> list[float]:
    """A y range around accuracies at least `span` (one point) wide, within [0, 1]: plotly's
    own range around one point ran from 0.1 to 1.9, and around two close points gave ticks
    that all read 98.5% at one decimal."""
    known = [v for v in values if v is not None]
    if not known:
        return [0.0, 1.0]
    low, high = min(known), max(known)
    pad = max(span - (high - low), 0.0) / 2 + 0.1 * (high - low)
    low, high = max(low - pad, 0.0), min(high + pad, 1.0)
    if high - low < span:  # against an edge: widen towards the other side
        low, high = (high - span, high) if high >= 1.0 else (low, low + span)
    return [low, high]


def _size_figure(complete: Sequence[FrozenTrial]) -> Any:
    import plotly.graph_objects as go

    sized = [t for t in complete if "n_params" in t.user_attrs]
    x = [t.user_attrs["n_params"] for t in sized]
    labels = [f"trial {t.number}" for t in sized]
    fig = go.Figure()
    fig.add_scatter(
        x=x, y=[t.values[0] for t in sized], mode="markers", name="validation", text=labels
    )
    fig.add_scatter(
        x=x,
        y=[t.user_attrs.get("test_accuracy") for t in sized],
        mode="markers",
        name="test",
        marker_symbol="x",
        text=labels,
    )
    accuracies = [t.values[0] for t in sized] + [t.user_attrs.get("test_accuracy") for t in sized]
    fig.update_layout(
        xaxis={"type": "log", "title": "parameters"},
        yaxis={"title": "accuracy", "tickformat": ".1%", "range": accuracy_range(accuracies)},
        title="Accuracy vs parameter count",
    )
    return fig


def _ensemble(study: optuna.Study, finished: Sequence[FrozenTrial]) -> str:
    """The ensemble `mnist-hpo ensemble` recorded: accuracy against ensemble size, and its
    members; without one, how many trials kept what an ensemble needs."""
    chosen = recorded_ensemble(study)
    name = study.study_name
    if chosen is None:
        n = sum(kept_of(t) is not None for t in finished)
        if not n:
            return ""
        return _note(
            "Ensemble",
            f"{n} of {len(finished)} finished trials kept their weights and probabilities; "
            f"`mnist-hpo ensemble {name}` combines them (docs/ensembles.md).",
        )
    return _figure("Ensemble", _ensemble_figure(chosen), _ensemble_note(chosen)) + (
        _members_table(chosen)
    )


def _ensemble_note(e: Mapping[str, Any]) -> str:
    single = (e.get("best_single") or {}).get("test_accuracy")
    return (
        f"Ensemble selection over {e['candidates']} kept trials of {', '.join(e['studies'])}, "
        f"chosen on validation only ({how(e)}); {len(e['members'])} distinct "
        f"trials. Validation {_pct(e['val_accuracy'])}, test {_pct(e['test_accuracy'])} "
        f"against {_pct(single)} for the best single trial by validation. The test line is "
        "measured after the selection along the walk: it shows, never steers, what each added "
        "pick did."
    )


def _ensemble_figure(e: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go

    val, test = e["trajectory"]["val"], e["trajectory"]["test"]
    sizes = list(range(1, len(val) + 1))
    fig = go.Figure()
    fig.add_scatter(x=sizes, y=val, mode="lines+markers", name="validation")
    fig.add_scatter(x=sizes, y=test, mode="lines+markers", name="test", marker_symbol="x")
    held: list[float] = []
    for rule, curve in (e.get("held_out") or {}).items():
        fig.add_scatter(
            x=list(range(1, len(curve) + 1)),
            y=curve,
            mode="lines",
            line_dash="dash",
            name=f"held-out halves: {rule}",
        )
        held += curve
    fig.add_vline(x=e["size"], line_dash="dot", annotation_text=f"chosen: {e['size']}")
    fig.update_layout(
        xaxis={"title": "ensemble size (picks)"},
        yaxis={
            "title": "accuracy",
            "tickformat": ".2%",
            "range": accuracy_range(val + test + held),
        },
        title="Ensemble accuracy against its size",
    )
    return fig


def _members_table(e: Mapping[str, Any]) -> str:
    head = "<tr><th>study</th><th>trial</th><th>weight</th><th>validation</th><th>test</th></tr>"
    rows = [
        "<tr>"
        + "".join(
            f"<td>{html.escape(c)}</td>"
            for c in (
                str(m["study"]),
                str(m["trial"]),
                f"{m['weight']:.2f}",
                _pct(m.get("val_accuracy")),
                _pct(m.get("test_accuracy")),
            )
        )
        + "</tr>"
        for m in e["members"]
    ]
    return f"<section><table class='trials'>{head}{''.join(rows)}</table></section>"


def _figure(title: str, fig: Any, caption: str) -> str:
    div = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
    return (
        f"<section><h2>{html.escape(title)}</h2><p class='note'>{html.escape(caption)}</p>"
        f"{div}</section>"
    )


def _note(title: str, text: str) -> str:
    return (
        f"<section><h2>{html.escape(title)}</h2><p class='note'>{html.escape(text)}</p></section>"
    )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left;
  vertical-align: top; }}
table.trials td:nth-child(-n+8) {{ text-align: right; white-space: nowrap; }}
.note {{ color: #555; }}
</style>
<script type="text/javascript">{plotly_js}</script>
</head><body>
<h1>{title}</h1>
<p class="note">Generated {generated} by mnist-hpo {version}.</p>
{body}
</body></html>
"""
