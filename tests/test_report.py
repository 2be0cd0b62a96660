"""mnist-hpo report: one offline HTML file with the plots and top trials; thin studies handled."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from typer.testing import CliRunner

from conftest import SMALL_SPEC, write_spec
from mnist_hpo.cli import app
from mnist_hpo.errors import HpoError
from mnist_hpo.outputs import report
from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec_files import load_spec


@pytest.fixture(scope="module")
def page(finished_study: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    url, name = finished_study
    out = tmp_path_factory.mktemp("report") / "r.html"
    r = CliRunner().invoke(app, ["report", name, "-o", str(out), "--storage", url])
    assert r.exit_code == 0, r.stderr
    assert f"wrote {out}" in r.stdout
    return out.read_text(encoding="utf-8")


def test_report_has_every_section_and_plot(page: str) -> None:
    titles = re.findall(r"<h2>([^<]*)</h2>", page)
    assert titles[0] == "Summary"
    assert titles[1].startswith("Top ")
    assert titles[2:] == [
        "Optimisation history",
        "Validation accuracy per epoch (intermediate values)",
        "Parameter importances",
        "Accuracy and model size",
        "Ensemble",  # a note: its trials kept probabilities, no ensemble is recorded yet
    ]
    assert "`mnist-hpo ensemble finished` combines them" in page
    assert page.count('class="plotly-graph-div"') == 4


def test_report_is_self_contained(page: str) -> None:
    assert page.count("<script") >= 5  # plotly.js once, then one per figure
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page), "fetches something from outside"
    assert len(re.findall(r"Plotly\.newPlot", page)) == 4


def test_report_tables_match_the_storage(page: str, finished_study: tuple[str, str]) -> None:
    url, name = finished_study
    study, _ = study_mod.load(storage_mod.open_storage(url), name)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and len(complete) >= 2  # the fixture's study prunes: the plot must show it
    assert f"{len(pruned)} of {len(study.trials)} finished trials were pruned" in page
    assert f"Top {len(complete)} of {len(complete)} completed trials" in page
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td>([^<]*)</td><td>([^<]*)</td>", page)
    by_number = {t.number: t for t in complete}
    for _, number, val, test in rows:
        t = by_number[int(number)]
        assert val == f"{100 * t.value:.2f}%"
        assert test == f"{100 * t.user_attrs['test_accuracy']:.2f}%"
        assert f"{t.user_attrs['n_params']:,}" in page
    values = [by_number[int(n)].value for _, n, _, _ in rows]
    assert values == sorted(values, reverse=True) and len(rows) == len(complete)
    assert [int(rank) for rank, *_ in rows] == list(range(1, len(rows) + 1))
    best = max(complete, key=lambda t: t.value)
    assert f"trial {best.number}: validation {100 * best.value:.2f}%" in page


def _thin_study(tmp_path: Path, completed: int) -> tuple[str, str]:
    """A real study with `completed` hand-made COMPLETE trials (the report only reads them)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_spec(str(write_spec(tmp_path, "thin", SMALL_SPEC)))
    study, _ = study_mod.create(storage_mod.open_storage(url), spec)
    for i in range(completed):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.01 * (i + 1)},
                distributions={"lr": FloatDistribution(1e-4, 0.3, log=True)},
                value=0.9,
                intermediate_values={1: 0.8, 2: 0.9},
                user_attrs={"test_accuracy": 0.89, "n_params": 1000, "epoch_seconds": [1.0, 1.0]},
            )
        )
    return url, "thin"


def test_no_finished_trial_is_one_clear_error(tmp_path: Path) -> None:
    url, name = _thin_study(tmp_path, 0)
    r = CliRunner().invoke(app, ["report", name, "--storage", url, "-o", str(tmp_path / "r")])
    assert r.exit_code == 1
    assert r.stderr.strip() == (
        "error: study 'thin' has no finished trial yet, so there is nothing to report; run "
        "`mnist-hpo work thin` first"
    )
    assert not (tmp_path / "r").exists()


def test_one_completed_trial_gives_a_report_with_notes(tmp_path: Path) -> None:
    url, name = _thin_study(tmp_path, 1)
    page = report.write_report(url, name, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Needs at least 2 completed trials; this study has 1." in page
    assert "Top 1 of 1 completed trials" in page


def test_missing_plotly_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, name = _thin_study(tmp_path, 1)
    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly -> ModuleNotFoundError
    with pytest.raises(HpoError, match="a dependency of mnist-hpo.*`pip install plotly`"):
        report.write_report(url, name, tmp_path / "r.html")
