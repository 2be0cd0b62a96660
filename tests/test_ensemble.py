"""`mnist-hpo ensemble` and `export-best --ensemble` on a finished study's kept trials; the
bad inputs, each one sentence and a non-zero exit."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from conftest import write_spec
from mnist_hpo.cli import app
from mnist_hpo.outputs import model_file, predict, report
from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec_files import load_spec


def cli(*args: str, env: dict[str, str]):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture
def copy(finished_study: tuple[str, str], mnist_dir: Path, tmp_path: Path) -> dict[str, str]:
    """The finished study in a storage of this test's own (the ensemble is recorded on it),
    reading the kept files where its workers wrote them."""
    url, _ = finished_study
    db = Path(url.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as src, sqlite3.connect(tmp_path / "s.db") as dst:
        src.backup(dst)  # WAL mode: the latest writes may be in the -wal file still
    return {
        "MNIST_HPO_STORAGE": f"sqlite:///{tmp_path / 's.db'}",
        "MNIST_HPO_ARTIFACTS": str(db.parent / "art"),
        "MNIST_HPO_DATA": str(mnist_dir),
    }


def _one_line_error(r, code: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert r.exit_code == code, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr


def test_ensemble_is_recorded_and_exported_and_predict_reads_it(
    copy: dict[str, str], finished_study: tuple[str, str], tmp_path: Path, mnist_dir: Path
) -> None:
    name = finished_study[1]
    r = cli("ensemble", name, "--json", env=copy)  # by default the size is chosen on halves
    chosen = json.loads(r.stdout)
    held = chosen["held_out"]
    assert chosen["size_chosen_on"] == "held-out validation halves"
    assert len(held["greedy"]) == 25 and 1 <= len(held["average of the best"]) <= 25
    curve = held[chosen["rule"]]
    assert curve[chosen["size"] - 1] == max(held["greedy"] + held["average of the best"])
    assert len(chosen["trajectory"]["val"]) == len(curve)
    study, spec = study_mod.load(storage_mod.open_storage(copy["MNIST_HPO_STORAGE"]), name)
    page = report.render(study, spec)
    assert "held-out halves: greedy" in page and "scored best on held-out halves" in page
    r = cli("ensemble", name, "--size", "8", env=copy)
    assert r.exit_code == 0, r.stderr
    assert "test, measured once after the selection" in r.stdout
    r = cli("ensemble", name, "--size", "8", "--json", env=copy)
    chosen = json.loads(r.stdout)
    assert len(chosen["trajectory"]["val"]) == 8 and chosen["studies"] == [name]
    assert chosen["held_out"] is None and chosen["size"] == 8
    assert abs(sum(m["weight"] for m in chosen["members"]) - 1) < 1e-9
    status = cli("status", name, env=copy)
    assert "ensemble: " in status.stdout and "(size 8)" in status.stdout
    best = json.loads(cli("best", name, "--json", env=copy).stdout)
    assert best["ensemble"]["members"] == chosen["members"]

    out = tmp_path / "ens.safetensors"
    r = cli("export-best", name, "--ensemble", "-o", str(out), env=copy)
    assert r.exit_code == 0, r.stderr
    loaded = model_file.load_model(out)
    assert len(loaded.meta["members"]) == len(chosen["members"])
    wrong = copy | {"MNIST_HPO_ARTIFACTS": str(tmp_path / "elsewhere")}
    r = cli("export-best", name, "--ensemble", "-o", str(tmp_path / "x.safetensors"), env=wrong)
    _one_line_error(r, 1, "an ensemble member, kept its weights, but they are not in")
    # The file's members and weights give the ensemble's validation accuracy the selection
    # measured (on float16 probabilities: at most an image or two apart on 1,000).
    assert abs(loaded.meta["validation_accuracy"] - chosen["val_accuracy"]) <= 0.002
    study, spec = study_mod.load(storage_mod.open_storage(copy["MNIST_HPO_STORAGE"]), name)
    assert study.user_attrs["ensemble"]["size"] == 8
    page = report.render(study, spec)
    assert "Ensemble accuracy against its size" in page and "(8 greedy picks)" in page
    images = mnist_dir / "t10k-images-idx3-ubyte.gz"
    pixels, names = predict.read_images(images)
    preds = predict.classify(loaded, pixels, names)
    assert len(preds) == 10_000
    r = cli("predict", str(out), str(images), env=copy)
    assert r.exit_code == 0, r.stderr
    assert f"ensemble of {len(chosen['members'])} trials" in r.stdout
    assert "ms per image" in r.stdout


def _fake_study(url: str, tmp_path: Path, name: str, body: str, trials: list[dict]) -> None:  # type: ignore[type-arg]
    spec = load_spec(str(write_spec(tmp_path, name, body)))
    study, _ = study_mod.create(storage_mod.open_storage(url), spec)
    if trials:
        study.set_user_attr(
            study_mod.DATA_ATTR, {"kind": "mnist", "fingerprint": "f", "source": "x"}
        )
    for attrs in trials:
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.9, user_attrs=attrs))


KEPT = {
    "kept": {
        "val_accuracy": 0.9,
        "outputs": "logits",
        "weights": None,
        "val_probs": {"id": "a", "bytes": 1},
        "test_probs": {"id": "b", "bytes": 1},
    }
}
BODY = 'family = "perceptron"\nepochs = 1\nn_trials = 2\nvalidation_size = {v}\n'


def test_bad_inputs_are_one_sentence_each(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    env = {"MNIST_HPO_STORAGE": url, "MNIST_HPO_ARTIFACTS": str(tmp_path / "art")}
    _fake_study(url, tmp_path, "empty", BODY.format(v=1000), [])
    _fake_study(url, tmp_path, "old", BODY.format(v=1000), [{"test_accuracy": 0.9}])
    _fake_study(url, tmp_path, "a", BODY.format(v=1000), [KEPT])
    _fake_study(url, tmp_path, "b", BODY.format(v=500), [KEPT])
    _one_line_error(cli("ensemble", "empty", env=env), 1, "has no finished trial yet")
    _one_line_error(cli("ensemble", "old", env=env), 1, "kept no weights or probabilities")
    _one_line_error(cli("ensemble", "a", "b", env=env), 2, "different data or validation")
    _one_line_error(cli("ensemble", "a", "--size", "0", env=env), 2, "--size must be at least 1")
    _one_line_error(cli("export-best", "a", "--ensemble", env=env), 1, "no ensemble recorded")
    other = optuna.load_study(study_name="b", storage=url)
    other.set_user_attr(study_mod.DATA_ATTR, {"kind": "mnist", "fingerprint": "g", "source": "y"})
    _one_line_error(cli("ensemble", "a", "b", env=env), 2, "different data or validation")


def test_deleting_a_member_study_says_which_ensembles_it_breaks(tmp_path: Path) -> None:
    """An ensemble over two studies outlives neither: deleting one names the study whose
    recorded ensemble lost members, and exporting that ensemble says to choose again instead
    of "no study named ..., create it"."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    env = {"MNIST_HPO_STORAGE": url, "MNIST_HPO_ARTIFACTS": str(tmp_path / "art")}
    for name in ("a", "b", "c"):
        _fake_study(url, tmp_path, name, BODY.format(v=1000), [KEPT])
    members = [{"study": s, "trial": 0, "weight": 0.5} for s in ("a", "b")]
    for name in ("a", "c"):  # c's ensemble has no member from b
        on = [m for m in members if name == "a" or m["study"] == "a"]
        record = {"members": on, "studies": sorted({m["study"] for m in on}), "size": 2}
        optuna.load_study(study_name=name, storage=url).set_user_attr(
            "ensemble", record | {"val_accuracy": 0.9, "test_accuracy": 0.9}
        )
    r = cli("delete-study", "b", "--yes", env=env)
    assert r.exit_code == 0, r.stderr
    assert "study 'a' records an ensemble with members from 'b'" in r.stdout
    assert "study 'c'" not in r.stdout
    _one_line_error(
        cli("export-best", "a", "--ensemble", env=env), 1, "has members from b, no longer in"
    )
    r = cli("status", "a", env=env)
    assert r.exit_code == 0, r.stderr
    assert "; members from b are deleted: run `mnist-hpo ensemble a` again" in r.stdout
    r = cli("status", "c", env=env)
    assert r.exit_code == 0 and "ensemble: 1 trial of a (size 2)" in r.stdout, r.stderr
    assert "are deleted" not in r.stdout
