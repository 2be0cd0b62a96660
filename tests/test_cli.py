"""The CLI end to end: create-study -> work -> status, and every bad input.

`work --jobs N` runs in real processes; one-shot commands run in this one (Typer's CliRunner):
the same code without a new interpreter's start-up for each call (2-3 s with torch).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SMALL_SPEC, run_cli, write_spec
from mnist_hpo.events import KINDS


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def cli_storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite in the default run; the same end-to-end run on PostgreSQL with the slow tests."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def env(mnist_dir: Path, tmp_path: Path, cli_storage: str) -> dict[str, str]:
    write_spec(tmp_path, "small", SMALL_SPEC)
    return {
        "MNIST_HPO_STORAGE": cli_storage,
        "MNIST_HPO_DATA": str(mnist_dir),
        "MNIST_HPO_STUDIES": str(tmp_path),
    }


def test_create_work_status_best_list_delete(env: dict[str, str]) -> None:
    r = _run_here("create-study", "small", env=env)
    assert r.returncode == 0, r.stderr
    assert "created study 'small'" in r.stdout
    r = run_cli("work", "small", "--jobs", "2", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[w0]" in r.stdout and "[w1]" in r.stdout
    assert "data: official MNIST files" in r.stdout
    assert "budget of 4 trials is spent" in r.stdout
    assert "Traceback" not in r.stderr
    # Not a terminal: plain lines only, one per epoch, and the study line after trials end.
    assert "\x1b" not in r.stdout + r.stderr
    assert re.search(r"^\[w[01]\] trial \d epoch 2/2: val [\d.]+% \([\d.]+ s\)$", r.stdout, re.M)
    assert re.search(r"^study small: [1-4]/4 of the budget used; complete \d", r.stdout, re.M)
    r = _run_here("status", "small", env=env)
    assert r.returncode == 0
    # Exactly the budget: two workers never both take the last trial.
    assert "trials: 4/4 of the budget used" in r.stdout, r.stdout
    assert "best: trial" in r.stdout and "test " in r.stdout
    r = _run_here("best", "small", "--json", env=env)
    best = json.loads(r.stdout)
    assert best["validation_accuracy"] > 0.8 and best["test_accuracy"] > 0.8
    assert best["val_accuracy_per_epoch"][-1] == best["validation_accuracy"]
    assert best["versions"]["optuna"].startswith("5.")
    assert best["n_params"] > 0 and best["seed"] is not None
    assert "small" in _run_here("list", env=env).stdout
    # A second `work` on a spent study does nothing, quickly.
    r = _run_here("work", "small", env=env)
    assert r.returncode == 0 and "0 trial(s)" in r.stdout
    r = _run_here("delete-study", "small", "--yes", env=env)
    assert r.returncode == 0
    assert _run_here("status", "small", env=env).returncode == 1


@dataclass
class _Ran:
    returncode: int
    stdout: str
    stderr: str


def _run_here(*args: str, env: dict[str, str] | None = None) -> _Ran:
    """The CLI in this process (Typer's CliRunner): what run_cli checks, without each call's
    2-3 s of a new interpreter importing torch and Optuna. An exception other than the exit is
    raised, as a traceback would show."""
    from typer.testing import CliRunner

    from mnist_hpo.cli import app

    r = CliRunner().invoke(app, list(args), env=env, prog_name="mnist-hpo")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return _Ran(r.exit_code, r.stdout, r.stderr)


def _one_line_error(r, code: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('family = "resnet"\nepochs = 1\nn_trials = 1\n', "family 'resnet' is not known"),
        (
            'family = "cnn"\nepochs = 1\nn_trials = 1\n[params]\nwidth = 3\n',
            "'width' is not a parameter",
        ),
        ("family = \n", "is not valid TOML"),
        ('family = "cnn"\nepochs = -1\nn_trials = 1\n', "epochs must be an integer"),
    ],
)
def test_bad_specs_exit_2_with_one_line(tmp_path: Path, body: str, fragment: str) -> None:
    path = write_spec(tmp_path, "bad", body)
    r = _run_here(
        "create-study", str(path), env={"MNIST_HPO_STORAGE": f"sqlite:///{tmp_path}/s.db"}
    )
    _one_line_error(r, 2, fragment)


def test_runtime_errors_exit_1_with_one_line(tmp_path: Path, mnist_dir: Path) -> None:
    db = f"sqlite:///{tmp_path}/s.db"
    _one_line_error(_run_here("status", "x", env={"MNIST_HPO_STORAGE": db}), 1, "no storage at")
    pg = "postgresql://nobody@127.0.0.1:1/x"
    _one_line_error(_run_here("list", "--storage", pg), 1, "cannot open storage")
    _one_line_error(_run_here("list", "--storage", "nonsense"), 2, "is not a database URL")
    assert _run_here("create-study", "perceptron", "--storage", db).returncode == 0
    _one_line_error(_run_here("status", "nope", "--storage", db), 1, "no study named 'nope'")
    _one_line_error(
        _run_here("work", "perceptron", "--storage", db, "--data-dir", str(tmp_path)),
        1,
        "lacks train-images-idx3-ubyte.gz",
    )
    _one_line_error(
        _run_here("work", "perceptron", "--storage", db, "--device", "cuda:7"), 1, "--device cuda:7"
    )
    _one_line_error(
        _run_here("work", "perceptron", "--storage", db, "--precision", "fp16"),
        2,
        "--precision 'fp16' is not a precision",
    )


def test_corrupt_data_stops_the_worker_before_any_trial(tmp_path: Path, mnist_dir: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in mnist_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b broken")
    db = f"sqlite:///{tmp_path}/s.db"
    assert _run_here("create-study", "perceptron", "--storage", db).returncode == 0
    r = run_cli("work", "perceptron", "--storage", db, "--data-dir", str(bad), "--jobs", "2")
    _one_line_error(r, 1, "t10k-images-idx3-ubyte.gz cannot be read")
    status = _run_here("status", "perceptron", "--storage", db).stdout
    # No trial ran: at most the spec's enqueued configurations wait.
    assert re.search(r"trials: \d+/20 of the budget used; (waiting \d+|none yet)\n", status), status


def test_delete_asks_first(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/s.db"
    assert _run_here("create-study", "cnn", "--storage", db).returncode == 0
    from typer.testing import CliRunner

    from mnist_hpo.cli import app

    r = CliRunner().invoke(app, ["delete-study", "cnn", "--storage", db], input="n\n")
    assert r.exit_code == 2 and "not deleted" in r.output
    # The trained models go with the study: the question says so before anything is lost.
    assert "kept weights and probabilities?" in r.output
    assert "cnn" in _run_here("list", "--storage", db).stdout


def test_families_lists_every_family_and_its_parameters() -> None:
    r = _run_here("families")
    assert r.returncode == 0
    for name in ("perceptron", "simple_mlp", "deep_mlp", "cnn", "n_layers", "channels_0", "lr"):
        assert name in r.stdout


def test_every_command_and_option_has_help() -> None:
    import typer.main

    from mnist_hpo.cli import app

    group = typer.main.get_command(app)
    names = sorted(group.commands)  # type: ignore[attr-defined]
    assert {"create-study", "work", "status", "best", "predict", "dashboard"} <= set(names)
    for name in names:
        command = group.commands[name]  # type: ignore[attr-defined]
        assert (command.help or "").strip(), f"{name} has no help text"
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            text = getattr(param, "help", None)
            assert text and text.strip(), f"{name}: {param.name} has no help text"
    r = _run_here("work", "--help")
    for flag in ("--heartbeat", "--grace", "--storage-wait", "--stop-wait", "MNIST_HPO_GRACE"):
        assert flag in r.stdout, flag


def test_help_paragraphs_wrap_at_the_terminal_not_where_the_source_wrapped() -> None:
    """Typer's rich help keeps a docstring's line breaks: at 80 columns a paragraph wrapped
    near 95 in the source read as full lines alternating with one- or two-word stubs. Each
    paragraph reaches Typer as one line, except `work`'s sample output (click's \\b)."""
    import typer.main

    from mnist_hpo.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for paragraph in (command.help or "").split("\n\n"):
            if name == "work" and "ETA at most" in paragraph:
                continue
            assert "\n" not in paragraph, f"{name}: {paragraph!r}"
    narrow = {"COLUMNS": "80", "TERMINAL_WIDTH": "80"}
    r = _run_here("ensemble", "--help", env=narrow)
    # Before: "...greedy picks with replacement, each" / "trial weighted by..." on lines of 80
    # and 12 characters.
    assert "replacement, each trial weighted" in " ".join(r.stdout.split())
    assert "greedy picks with replacement, each" not in lines_of(r.stdout)
    r = _run_here("work", "--help", env=narrow)
    assert "deep_mlp: 3/12 of the budget used; complete 1, running 2" in lines_of(r.stdout)
    assert "\b" not in r.stdout


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_delete_study_removes_the_checkpoints_its_trials_left(
    env: dict[str, str], tmp_path: Path
) -> None:
    from mnist_hpo.resilience import storage as storage_mod
    from mnist_hpo.search import study as study_mod
    from mnist_hpo.search.checkpoints import Checkpoints, Pointer

    assert _run_here("create-study", "small", env=env).returncode == 0
    study, _ = study_mod.load(storage_mod.open_storage(env["MNIST_HPO_STORAGE"]), "small")
    trial = study.ask()  # running when the study is deleted, e.g. a worker that was killed
    mine = Pointer("ckpt-small-t0-ab", trial.number)
    trial.set_user_attr("checkpoint", mine.to_attr())
    folder = str(tmp_path / "artifacts")
    checkpoints = Checkpoints.at(folder)
    checkpoints.save(mine, 1, {"epoch": 1})
    checkpoints.save(mine, 2, {"epoch": 2})
    checkpoints.save(Pointer("ckpt-other-t0-cd", 0), 1, {"epoch": 1})  # another study's: kept
    r = _run_here("delete-study", "small", "--yes", "--artifacts", folder, env=env)
    assert r.returncode == 0, r.stderr
    assert f"removed 2 checkpoint file(s) of unfinished trials from {folder}" in r.stdout
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == ["ckpt-other-t0-cd-a0-e1"]


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from mnist_hpo.cli import app

    return CliRunner().invoke(app, list(args), prog_name="mnist-hpo")


def test_studies_lists_shipped_and_own_specs_and_which_one_a_name_gets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "studies"
    mine.mkdir()
    write_spec(mine, "cnn", 'family = "perceptron"\nepochs = 1\nn_trials = 3\ndescription = "x"\n')
    write_spec(mine, "typo", 'family = "percepton"\nepochs = 1\nn_trials = 1\n')
    r = _invoke("studies")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1] == "studies" and lines[4].endswith("(shipped with mnist-hpo)")
    assert lines[2].split()[:5] == ["cnn", "perceptron", "3", "trials", "x"]
    assert lines[2].endswith("[used instead of cnn (shipped with mnist-hpo)]")
    assert lines[3].split()[:2] == ["typo", "unusable:"] and "'percepton' is not known" in lines[3]
    shipped = {line.split()[0]: line for line in lines[5:]}
    assert shipped["cnn"].endswith("[not used: studies/cnn.toml comes first]")
    assert shipped["report_simple_mlp"].split()[1:4] == ["simple_mlp", "9", "trials"]  # grid
    r = _invoke("studies", "--studies", str(tmp_path / "none"))
    assert f"  no specs here ({tmp_path / 'none'}/NAME.toml files would be found)" in r.output


def test_create_study_says_which_spec_file_it_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path}/s.db"
    r = _invoke("create-study", "perceptron", "--storage", db)
    assert r.exit_code == 0 and r.output.startswith("spec: perceptron (shipped with mnist-hpo)\n")
    (tmp_path / "studies").mkdir()
    write_spec(
        tmp_path / "studies", "perceptron", 'family = "perceptron"\nepochs = 1\nn_trials = 1\n'
    )
    r = _invoke("create-study", "perceptron", "--name", "mine", "--storage", db)
    assert r.exit_code == 0 and r.output.startswith("spec: studies/perceptron.toml\n")
    r = _invoke("create-study", "nope", "--storage", db)
    assert r.exit_code == 2 and "looked for nope.toml in studies, then " in r.output


def test_version_from_the_metadata_and_shell_completion() -> None:
    import importlib.metadata

    r = _invoke("--version")
    assert r.output == f"mnist-hpo {importlib.metadata.version('mnist-hpo')}\n"
    r = _invoke("--show-completion", "bash")
    assert r.exit_code == 0 and "complete -o default -F _mnist_hpo_completion mnist-hpo" in r.output
    assert "--install-completion" in _invoke("--help").output


def test_the_json_log_has_a_record_per_event(env: dict[str, str]) -> None:
    # One worker in this process: `--jobs N`'s workers write these records too, read back by
    # the plain run above; JsonReporter's own test covers the worker labels.
    assert _run_here("create-study", "small", env=env).returncode == 0
    r = _run_here("work", "small", "--log-format", "json", env=env)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]  # every line is one
    kinds = {x["event"] for x in records}
    assert kinds == {*KINDS, "study"}  # every kind of event, and the study after the trials
    assert all(x["ts"].endswith("Z") for x in records)
    finished = [x for x in records if x["event"] == "trial_finished"]
    assert len(finished) == 4 and all(0 < x["val_accuracy"] <= 1 for x in finished)
    epochs = [(x["number"], x["epoch"]) for x in records if x["event"] == "epoch_done"]
    assert sorted(epochs) == [(n, e) for n in range(4) for e in (1, 2)]
    assert records[-1]["event"] == "study" and records[-1]["spent"] == 4
    assert records[-1]["finished"] == "its budget of 4 trials is spent"


def test_readme_commands_table_names_every_command_and_work_option() -> None:
    """The README's Commands table is the front door's reference: a command or a `work` option
    missing from it (the `work` row was once lost in an edit) fails here, not with a user."""
    import typer.main

    from conftest import ROOT
    from mnist_hpo.cli import app

    rows = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("| `")]
    named = {m for ln in rows for m in re.findall(r"`([a-z][a-z-]*)[ `]", ln.split(" | ")[0])}
    group = typer.main.get_group(app)
    missing = sorted(set(group.commands) - named)
    assert not missing, f"commands missing from the README's table: {missing}"
    work_rows = " ".join(ln.split(" | ")[0] for ln in rows if ln.startswith("| `work STUDY"))
    params = [p for p in group.commands["work"].params if not getattr(p, "hidden", False)]
    options = {opt for p in params for opt in p.opts if opt.startswith("--")}
    # Where data comes from and whether to wait are the data/budget commands' business; the
    # storage is every command's, said once under Concepts.
    left_out = {"--cache", "--download", "--wait", "--storage", "--verbose", "--keep"}
    missing = sorted(o for o in options - left_out if o not in work_rows)
    assert not missing, f"work options missing from the README's work rows: {missing}"
