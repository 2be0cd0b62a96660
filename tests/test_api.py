"""The Python API the way the CLI tests drive the CLI: create, work with 2 processes, trials, best,
plot, report, export, delete, on SQLite and the real PostgreSQL server; the same sentences as the
CLI for bad specs; `mnist-hpo trials` in each format; Ctrl-C in `Study.work` (slow)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mnist_hpo
from conftest import ROOT, write_spec
from mnist_hpo.errors import HpoError, UsageError

# A 2 x 2 grid of one-epoch trials on 1,000 real training images: about 8 s with 2 workers on
# 2 cores, and a grid's last point is where GridSampler used to stop the study mid-tell.
GRID: dict[str, Any] = {
    "name": "grid",
    "family": "simple_mlp",
    "epochs": 1,
    "n_trials": 4,
    "sampler": "grid",
    "pruner": "none",
    "train_size": 1000,
    "validation_size": 500,
    "params": {
        "optimizer": "sgd",
        "momentum": 0.0,
        "weight_decay": 0.0,
        "loss": "cross_entropy",
        "batch_size": 64,
        "schedule": "constant",
        "dropout": 0.0,
        "batch_norm": False,
        "label_smoothing": 0.0,
        "augment": "none",
    },
    "grid": {"lr": [0.01, 0.1], "hidden": [32, 64]},
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def api_storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite in the default run; the same run on PostgreSQL with the slow tests (as the CLI's)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_import_mnist_hpo_is_cheap_and_help_shows_the_api() -> None:
    code = (
        "import sys, mnist_hpo\n"
        "mine = sorted(m for m in sys.modules if m.startswith('mnist_hpo.'))\n"
        "print(mine, 'optuna' in sys.modules, 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[] False False", r.stdout
    doc = mnist_hpo.__doc__ or ""
    for name in ("create_study", "load_study", "studies", "families", "work", "trials", "plot"):
        assert name in doc, name
    assert set(mnist_hpo.__all__) <= set(dir(mnist_hpo))
    for name in mnist_hpo.__all__:
        assert getattr(mnist_hpo, name) is not None, name


def test_families_is_a_package_and_a_call() -> None:
    from mnist_hpo.families import FAMILIES

    listed = {f.name: f for f in mnist_hpo.families()}
    assert set(FAMILIES) <= set(listed)
    assert "lr" in listed["simple_mlp"].params and listed["cnn"].summary


def test_a_bad_spec_dict_says_what_a_bad_spec_file_says(tmp_path: Path) -> None:
    bad = {"family": "simple_mlp", "epochs": 2, "n_trials": 3, "learning_rate": 0.1}
    path = write_spec(
        tmp_path, "bad", 'family = "simple_mlp"\nepochs = 2\nn_trials = 3\nlearning_rate = 0.1\n'
    )
    with pytest.raises(UsageError) as from_file:
        mnist_hpo.create_study(path, storage=f"sqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(UsageError) as from_dict:
        mnist_hpo.create_study(bad, name="bad", storage=f"sqlite:///{tmp_path / 'a.db'}")
    file_says, dict_says = str(from_file.value), str(from_dict.value)
    assert file_says.startswith(f"{path}: ") and dict_says.startswith("the spec dict: ")
    assert file_says.removeprefix(f"{path}: ") == dict_says.removeprefix("the spec dict: ")
    assert "learning_rate" in dict_says
    with pytest.raises(UsageError, match="has no name"):
        mnist_hpo.create_study({"family": "simple_mlp", "epochs": 1, "n_trials": 1})


def test_a_missing_study_is_the_clis_sentence(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    mnist_hpo.create_study(GRID, storage=url)
    with pytest.raises(HpoError, match=r"no study named 'nope' \(studies here: grid\)"):
        mnist_hpo.load_study("nope", storage=url)


def test_create_work_trials_best_plot_report_export_delete(
    api_storage: str, mnist_dir: Path, tmp_path: Path
) -> None:
    storage_url = api_storage
    study = mnist_hpo.create_study(GRID, storage=storage_url)
    assert mnist_hpo.create_study(GRID, storage=storage_url).name == "grid"  # same spec: kept
    seen: list[str] = []
    done = study.work(
        jobs=2,
        data_dir=mnist_dir,
        artifacts=str(tmp_path / "art"),
        progress=lambda event, worker: seen.append(worker),
    )
    assert done.exit_code == 0 and {"w0", "w1"} <= set(seen)
    assert done.status.spent == 4 and done.status.counts == {"complete": 4}  # the grid's end
    assert "budget" in done.status.finished
    frame = study.trials()  # pandas is in the dev tools (the notebook extra)
    assert list(frame.index) == [0, 1, 2, 3]
    assert set(frame["state"]) == {"complete"}
    assert {"validation_accuracy", "test_accuracy", "params_lr", "params_hidden"} <= set(frame)
    grid = {(r.params_lr, r.params_hidden) for r in frame.itertuples()}
    assert grid == {(0.01, 32), (0.01, 64), (0.1, 32), (0.1, 64)}
    best = study.best
    assert best.validation_accuracy == frame["validation_accuracy"].max()
    assert best.test_accuracy is not None and best.n_params and best.epochs == 1
    assert best.record["versions"]["optuna"].startswith("5.")
    assert study.plot("history").data and study.plot("size").data
    with pytest.raises(UsageError, match="no plot named"):
        study.plot("pie")
    assert study.report(tmp_path / "r.html").stat().st_size > 100_000
    art = str(tmp_path / "art")
    exported = study.export_best(tmp_path / "best.safetensors", data_dir=mnist_dir, artifacts=art)
    assert exported.path.exists() and exported.meta["trial"] == best.number
    assert exported.reproduced and "copied" in exported.meta["weights_from"]  # kept: no retrain
    chosen = study.ensemble(size=6, data_dir=mnist_dir, artifacts=art)
    assert sum(m.weight for m in chosen.members) == pytest.approx(1.0)
    assert chosen.validation_accuracy >= best.validation_accuracy  # starts from the best trial
    assert study.best.record["ensemble"]["members"] == chosen.record["members"]  # recorded
    ens = study.export_best(
        tmp_path / "ens.safetensors", ensemble=True, data_dir=mnist_dir, artifacts=art
    )
    model = mnist_hpo.load_model(ens.path)
    assert model.is_ensemble and model.members == len(chosen.members)
    single = mnist_hpo.load_model(exported.path)
    digits = np.zeros((3, 28, 28), dtype=np.uint8)
    digits[:, 6:22, 13:15] = 255
    assert [p.name for p in single.predict(digits)] == ["[0]", "[1]", "[2]"]
    with pytest.raises(UsageError, match=r"\(N, 28, 28\)"):
        single.predict(np.zeros((2, 32, 32), dtype=np.uint8))
    with pytest.raises(UsageError, match="size must be at least 1"):
        study.ensemble(size=0, data_dir=mnist_dir, artifacts=art)
    info = {s.name: s for s in mnist_hpo.studies(storage_url)}["grid"]
    assert (info.spent, info.budget, info.best_validation) == (4, 4, best.validation_accuracy)
    again = mnist_hpo.load_study("grid", storage=storage_url, read_only=True)
    assert again.status().best == study.best  # the ensemble recorded since is in both
    removed = study.delete(artifacts=art)
    assert removed.kept == 4 * 3  # weights, validation and test probabilities per trial
    assert mnist_hpo.studies(storage_url) == []


def test_the_trials_command_as_a_table_csv_and_json(finished_study: tuple[str, str]) -> None:
    from typer.testing import CliRunner

    from mnist_hpo.cli import app

    url, name = finished_study

    def run(*args: str) -> str:
        r = CliRunner().invoke(app, ["trials", name, "--storage", url, *args])
        assert r.exit_code == 0, r.output
        return r.stdout

    table = run().splitlines()
    assert table[0].split()[:3] == ["#", "state", "val"] and len(table) == 7  # header + 6
    rows = list(csv.DictReader(io.StringIO(run("--csv"))))
    assert [int(r["number"]) for r in rows] == list(range(6))
    assert {"state", "validation_accuracy", "test_accuracy", "epochs", "seconds"} <= set(rows[0])
    assert {"params_hidden", "params_batch_size", "n_params"} <= set(rows[0])
    assert {r["state"] for r in rows} <= {"complete", "pruned"}
    records = json.loads(run("--json"))
    assert [r["number"] for r in records] == list(range(6))
    complete = [r for r in records if r["state"] == "complete"]
    assert complete and all(r["test_accuracy"] > 0.5 for r in complete)
    assert all(r["epochs"] == 3 and r["n_params"] > 0 for r in complete)
    assert all("hidden" in r["params"] for r in records)
    r = CliRunner().invoke(app, ["trials", name, "--storage", url, "--csv", "--json"])
    assert r.exit_code == 2 and "pick one" in r.stderr


# Ctrl-C in a notebook's cell: a real SIGINT to this process once a worker has trained an epoch.
SLOW_SPEC = """
family = "simple_mlp"
epochs = 20
n_trials = 2
train_size = 3000
validation_size = 1000
pruner = "none"

[params]
batch_size = 16
"""


@pytest.mark.slow
def test_an_interrupt_in_work_hands_the_trials_back(mnist_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = mnist_hpo.create_study(write_spec(tmp_path, "slow", SLOW_SPEC), storage=url)
    from mnist_hpo.events import EpochDone

    sent: list[int] = []

    def interrupt_after_an_epoch(event: Any, worker: str) -> None:
        if isinstance(event, EpochDone) and not sent:  # once: a second one stops them at once
            sent.append(signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # what Jupyter's stop button sends the kernel

    with pytest.raises(KeyboardInterrupt, match="handed their trials back"):
        study.work(
            jobs=2,
            data_dir=mnist_dir,
            artifacts=str(tmp_path / "art"),
            progress=interrupt_after_an_epoch,
        )
    counts = study.status().counts
    assert counts.get("handed back", 0) >= 1, counts
    assert set(counts) <= {"handed back", "waiting", "complete"}, counts  # waiting: the retries


COURSE = ROOT / "examples" / "course_report.py"


def _course_env(tmp_path: Path, mnist_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "COURSE_REPORT_BUDGET": "ci",
        "COURSE_REPORT_OUT": str(tmp_path / "out"),
        "MNIST_HPO_DATA": str(mnist_dir),
        "MNIST_HPO_ARTIFACTS": str(tmp_path / "art"),
    }


@pytest.mark.slow
def test_the_course_report_runs_as_a_script(tmp_path: Path, mnist_dir: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(COURSE)],
        capture_output=True,
        text=True,
        env=_course_env(tmp_path, mnist_dir),
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "out" / "course.db").exists()
    assert "course report" in r.stdout and "service" in r.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_course_report_runs_as_a_notebook(tmp_path: Path, mnist_dir: Path) -> None:
    import jupytext
    import nbclient

    notebook = jupytext.read(COURSE)
    old = dict(os.environ)
    os.environ.update(_course_env(tmp_path, mnist_dir))  # the kernel inherits this environment
    try:
        nbclient.NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)
    # Study.work's view in the cell: the display handle's last drawing, with the study line.
    views = [o["data"].get("text/html", "") for o in outputs if "data" in o]
    assert any("of the budget used" in v and "<pre>" in v for v in views)


def test_every_python_block_in_the_api_doc_runs(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/python-api.md's ```python blocks, in order, in one namespace, as a reader would."""
    import re

    doc = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```$", doc, re.M | re.S)
    assert len(blocks) >= 10
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNIST_HPO_STORAGE", f"sqlite:///{tmp_path / 'studies.db'}")
    monkeypatch.setenv("MNIST_HPO_DATA", str(mnist_dir))
    monkeypatch.setenv("MNIST_HPO_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.delenv("MNIST_HPO_STUDIES", raising=False)
    namespace: dict[str, Any] = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"python-api.md block {i + 1}", "exec"), namespace)
        except Exception as e:  # say which block broke
            raise AssertionError(f"block {i + 1} of docs/python-api.md failed:\n{block}") from e
    assert (tmp_path / "tiny-best.safetensors").exists()
    assert [s.name for s in mnist_hpo.studies()] == ["tiny"]
