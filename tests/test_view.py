"""The view of a running search (view/live.py): rows, bars, ETA and the best so far on a terminal,
drawn through rich's recording console; plain lines without a control code elsewhere; JSON
records of every event kind; `status --watch` from storage; handed-back trials counted as such."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from conftest import SMALL_SPEC, run_cli, write_spec
from mnist_hpo.events import (
    KINDS,
    EpochDone,
    Note,
    TrialFinished,
    TrialStarted,
    WorkerDone,
    from_record,
    to_record,
)
from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.resilience.retries import HANDED_BACK
from mnist_hpo.search import progress
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec_files import load_spec
from mnist_hpo.view import live

ESC = "\x1b"
LR = {"lr": FloatDistribution(1e-4, 0.3, log=True)}


def _trial(state: TrialState, number_lr: float, **kw):  # type: ignore[no-untyped-def]
    return create_trial(state=state, params={"lr": number_lr}, distributions=LR, **kw)


def _study_trials() -> list[optuna.trial.FrozenTrial]:
    """A study's trials as Optuna stores them: 2 complete, 1 pruned, 1 handed back (FAIL with
    its retry queued, one epoch in), 1 failed for good."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    study.add_trial(
        _trial(TrialState.COMPLETE, 0.01, value=0.97, user_attrs={"test_accuracy": 0.965},
               intermediate_values={1: 0.95, 2: 0.97})
    )  # fmt: skip
    study.add_trial(
        _trial(TrialState.COMPLETE, 0.02, value=0.98, user_attrs={"test_accuracy": 0.975},
               intermediate_values={1: 0.96, 2: 0.98})
    )  # fmt: skip
    study.add_trial(_trial(TrialState.PRUNED, 0.2, intermediate_values={1: 0.5}))
    study.add_trial(_trial(TrialState.FAIL, 0.03, intermediate_values={1: 0.9}))  # 3: handed
    study.add_trial(_trial(TrialState.FAIL, 0.04, user_attrs={"error": "RuntimeError: x"}))
    study.add_trial(
        _trial(TrialState.WAITING, 0.03, intermediate_values={1: 0.9},
               system_attrs={"retry_history": [3], "failed_trial": 3})
    )  # fmt: skip
    return study.get_trials()


def test_outcomes_count_a_handed_back_trial_apart_from_failures() -> None:
    trials = _study_trials()
    counts = progress.count_outcomes(trials)
    assert counts == {"complete": 2, "pruned": 1, "failed": 1, "handed back": 1, "waiting": 1}
    # A trial marked by the wall (resilience/trials.py) counts the same with no retry in sight.
    marked = create_trial(state=TrialState.FAIL, user_attrs={HANDED_BACK: "re-queued: stop"})
    assert progress.outcome(marked, set()) == "handed back"


def _snapshot(now: datetime) -> progress.Snapshot:
    return progress.snapshot(
        "demo", _study_trials(), budget=8, epochs=4, done=lambda _t: "", now=now
    )


def test_eta_is_the_epochs_left_at_the_measured_pace() -> None:
    snap = _snapshot(datetime.now())
    # Budget 8, 4 used (2 complete, 1 pruned, 1 queued): 4 not started at the 1.67 epochs a
    # finished trial trained on average (2, 2 and 1), plus the queued retry's 3 left.
    assert snap.spent == 4 and snap.epochs_per_trial == pytest.approx(5 / 3)
    assert progress.epochs_left(snap) == pytest.approx(3 + 4 * 5 / 3)
    assert progress.eta(snap) is None  # nothing runs: no pace measured yet
    rows = [
        progress.Running(10, epoch=1, epochs=4, seconds_per_epoch=2.0),
        progress.Running(11, epoch=3, epochs=4, seconds_per_epoch=4.0),
    ]
    left = 3 + 4 * 5 / 3 + 3 + 1
    assert progress.eta(snap, progress.merge(snap, rows)) == pytest.approx(left / (0.5 + 0.25))
    assert snap.best is not None and (snap.best.number, snap.best.test) == (1, 0.975)


def _board() -> live.Board:
    """Two workers mid-trial, one trial finished, and a snapshot of the study."""
    clock = [0.0]
    board = live.Board(clock=lambda: clock[0])
    params = {"lr": 0.0031, "batch_size": 128, "optimizer": "adamw", "dropout": 0.2}
    board.event(TrialStarted(10, params, 0, 4), "w0")
    board.event(TrialStarted(11, {**params, "lr": 0.012}, 0, 4), "w1")
    for epoch in (1, 2, 3):
        clock[0] = 2.0 * epoch
        board.event(EpochDone(10, epoch, 4, 0.95 + epoch / 100, 1.5), "w0")
    clock[0] = 4.0
    board.event(EpochDone(11, 1, 4, 0.91, 3.5), "w1")
    board.event(TrialStarted(12, params, 0, 4), "w2")
    board.event(TrialFinished(12, "PRUNED", 0.5, None, 1, 1.0, 0.98), "w2")
    clock[0] = 75.0
    board.update(_snapshot(datetime.now()))
    return board


def _screen(renderable: object, width: int = 110) -> str:
    console = Console(record=True, force_terminal=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_the_view_has_a_row_per_running_trial_and_the_study_line() -> None:
    board = _board()
    screen = _screen(live.render(board)).splitlines()
    assert len(screen) == 4, screen  # w2's trial finished: its row is gone
    w0, w1, used, rest = screen
    assert re.match(r"w0 trial 10 lr=0\.0031 batch_size=128 optimizer=adamw ", w0), w0
    assert w0.rstrip().endswith("━━━━━━━━━━━━━━━───── 3/4 val 98.00% 2.0 s/epoch"), w0
    assert w1.rstrip().endswith("━━━━━─────────────── 1/4 val 91.00% 4.0 s/epoch"), w1
    assert used == (
        "demo: 4/8 of the budget used; complete 2, pruned 1, failed 1, handed back 1, waiting 1"
    )
    # The best so far with its test accuracy; 1:15 since the view began; ETA: 3 + 4 x 5/3
    # epochs not yet running, plus the rows' 1 and 3, at 1/2 + 1/4 epochs a second.
    eta = live.clock((3 + 4 * 5 / 3 + 1 + 3) / 0.75)
    assert rest == f"best val 98.00% (trial 1), test 97.50%; elapsed 1:15; ETA {eta}"
    narrow = _screen(live.render(board), width=72).splitlines()
    assert all(len(line) <= 72 for line in narrow)  # the params give way, not the bar
    assert "━━━━━━━━━━━━━━━───── 3/4 val 98.00% 2.0 s/epoch" in narrow[0]


def test_on_a_terminal_lines_print_above_the_live_view_and_it_goes_away() -> None:
    out = io.StringIO()
    console = Console(record=True, force_terminal=True, width=100, file=out)
    board = live.Board()
    report = live.LiveReporter(board, verbose=False, console=console)
    report.event(Note("data: official MNIST files"))
    assert report.live is None  # the view starts with the first trial
    report.event(TrialStarted(0, {"lr": 0.1}, 0, 3), "w0")
    report.event(EpochDone(0, 1, 3, 0.9, 1.0), "w0")
    assert report.live is not None
    report.live.refresh()  # what its refresh thread does once a second
    report.event(TrialFinished(0, "COMPLETE", 0.95, 0.94, 3, 3.0, 0.95), "w0")
    report.close()
    drawn = out.getvalue()
    assert ESC in drawn  # a terminal: cursor moves and colours
    assert "━" in drawn and "trial 0" in drawn and "ETA" not in drawn  # no snapshot read yet
    text = console.export_text()
    assert "data: official MNIST files" in text
    assert "[w0] trial 0 complete: val 95.00% test 94.00% (3 epochs, 3.0 s)" in text
    assert "epoch 1/3" not in text  # epochs are the view's rows, not lines, on a terminal


def test_in_a_pipe_only_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich alone would draw its view into the pipe
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    pipe = io.StringIO()
    assert not live.use_live("auto", pipe)
    board = _board()
    report = live.PlainReporter(board, verbose=False, out=pipe)
    assert isinstance(live.reporter("auto", board, verbose=False), live.PlainReporter)
    report.event(TrialStarted(13, {"lr": 0.1}, 0, 4), "w0")
    report.event(EpochDone(13, 1, 4, 0.9, 1.25), "w0")
    report.event(TrialFinished(13, "COMPLETE", 0.95, 0.94, 4, 5.0, 0.98), "w0")
    report.snapshot(_snapshot(datetime.now()), announce=True)
    report.event(WorkerDone(3, 42.0, "the study's budget of 8 trials is spent"), "w0")
    lines = pipe.getvalue().splitlines()
    assert ESC not in pipe.getvalue()
    assert lines[0] == "[w0] trial 13 epoch 1/4: val 90.00% (1.2 s)"  # epochs by default
    assert lines[1].startswith("[w0] trial 13 complete: val 95.00% test 94.00% (4 epochs")
    assert lines[2].startswith("study demo: 4/8 of the budget used; complete 2, pruned 1")
    assert (
        lines[3] == "[w0] worker done: 3 trial(s) in 42 s; the study's budget of 8 trials is spent"
    )


def test_json_records_carry_every_event_kind_and_read_back() -> None:
    out = io.StringIO()
    board = live.Board()
    report = live.JsonReporter(board, out=out, worker="w1")
    events = [
        TrialStarted(0, {"lr": 0.1, "optimizer": "adam"}, 2, 5),
        EpochDone(0, 3, 5, 0.9, 1.0),
        TrialFinished(0, "COMPLETE", 0.95, 0.94, 5, 3.0, 0.95),
        Note("data: official MNIST files"),
        WorkerDone(1, 3.5, "the study's budget of 1 trials is spent"),
    ]
    assert {type(e) for e in events} == set(KINDS.values())
    for e in events:
        report.event(e)
    report.snapshot(_snapshot(datetime.now()), announce=True)
    report.text("a line that is not a record", err=True)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event"] for r in records] == [*KINDS, "study", "line"]
    for record, event in zip(records, events, strict=False):
        assert record["worker"] == "w1"
        assert datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
        assert from_record(record) == event == from_record(to_record(event))
    study = records[5]
    assert (study["spent"], study["budget"], study["best_trial"]) == (4, 8, 1)
    assert study["counts"]["handed back"] == 1 and study["best_test"] == 0.975
    assert records[6] == {**records[6], "stream": "stderr", "text": "a line that is not a record"}
    assert from_record({"event": "study"}) is None and from_record({"event": "note"}) is None


def _small_study(tmp_path: Path) -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_spec(str(write_spec(tmp_path, "small", SMALL_SPEC)))
    study, _ = study_mod.create(storage_mod.open_storage(url), spec)
    return url, study


def test_watch_shows_what_runs_from_the_storage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, study = _small_study(tmp_path)
    spec = study_mod.read_spec(storage_mod.open_storage(url), "small")
    trial = study.ask()  # a worker elsewhere, two epochs in
    trial.set_user_attr("worker", "node-7:4242")
    for epoch, value in ((1, 0.91), (2, 0.93)):
        trial.report(value, epoch)
    board = live.Board(from_storage=True)
    screen = live.Watch(board, terminal=False)
    board.update(study_mod.snapshot(study, spec))
    screen.show()
    screen.show()  # nothing changed: nothing printed again
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("study small: 1/4 of the budget used; running 1; best val -")
    assert re.fullmatch(
        r"  trial 0 on node-7:4242: epoch 2/2, val 93\.00%, [\d.]+ s/epoch", lines[1]
    )
    assert len(lines) == 2
    drawn = _screen(live.render(board))
    assert "node-7:4242 trial 0" in drawn and "2/2 val 93.00%" in drawn


def test_watch_ends_at_the_end_of_the_study(finished_study: tuple[str, str]) -> None:
    from typer.testing import CliRunner

    from mnist_hpo.cli import app

    url, name = finished_study
    r = CliRunner().invoke(app, ["status", name, "--watch", "--storage", url])
    assert r.exit_code == 0, r.output
    assert re.fullmatch(
        rf"study {name}: 6/6 of the budget used; complete \d, pruned \d; best val [\d.]+% "
        r"\(trial \d\), test [\d.]+%; elapsed \d+ s; done: its budget of 6 trials is spent\n",
        r.output,
    ), r.output


def test_watch_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    url, _ = _small_study(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_hpo", "status", "small", "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MNIST_HPO_STORAGE": url},
    )
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()  # the study, once it has been read
        time.sleep(0.5)  # into the loop's sleep
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a no-op once it has exited; else no watcher outlives a failed test
    assert first.startswith("study small: 0/4 of the budget used; no trials yet; best val -"), first
    assert proc.returncode == 0, (out, err)
    assert "Traceback" not in err and err.strip() == ""


def test_handed_back_trials_are_not_failures_in_any_command(tmp_path: Path) -> None:
    import threading
    import urllib.request

    from mnist_hpo.outputs import dashboard
    from mnist_hpo.outputs import report as report_mod
    from mnist_hpo.resilience.stop import Stop
    from mnist_hpo.resilience.trials import Trials
    from mnist_hpo.search.budget import uses_budget
    from mnist_hpo.settings import Settings

    url, study = _small_study(tmp_path)
    trials = Trials(
        study, storage_mod.open_storage(url), Settings(), budget=4, counts=uses_budget,
        stop=Stop.unsignalled(), note=print,
    )  # fmt: skip
    lease = trials.take()
    assert lease is not None
    lease.trial.report(0.9, 1)
    with lease:
        lease.hand_back("stopped mid-trial")
    stored = study.get_trials()
    assert [t.state for t in stored] == [TrialState.FAIL, TrialState.WAITING]
    assert stored[0].user_attrs[HANDED_BACK] == "re-queued as trial 1: stopped mid-trial"
    assert HANDED_BACK not in stored[1].user_attrs  # the retry is not handed back itself
    status = run_cli("status", "small", "--storage", url).stdout
    assert "trials: 1/4 of the budget used; handed back 1, waiting 1\n" in status, status
    assert "handed back: 1 trial(s) stopped or lost mid-way and re-queued" in status
    listed = run_cli("list", "--storage", url).stdout
    assert re.search(r"^small +simple_mlp +1/4 ", listed, re.M), listed
    # The retry completes: `best` says whose retry it is, the report counts both as they are.
    retry = study.ask()  # takes the queued retry
    assert retry.number == 1
    retry.set_user_attr("test_accuracy", 0.92)
    study.tell(retry, 0.93)
    best = run_cli("best", "small", "--storage", url)
    assert "(resumed: the retry of trial 0, handed back 1 time(s))" in best.stdout, best.stdout
    assert json.loads(run_cli("best", "small", "--json", "--storage", url).stdout)[
        "resumed_from_trials"
    ] == [0]
    loaded, spec = study_mod.load(storage_mod.open_storage(url), "small")
    page = report_mod.render(loaded, spec)
    assert "1 of a budget of 4 used; 1 complete, 1 handed back" in page
    # optuna-dashboard: Optuna's FAIL, and beside it the attribute that says what happened.
    board = dashboard.open_dashboard(url, port=0, artifacts_at=str(tmp_path / "art"))
    threading.Thread(target=board.serve_forever, daemon=True).start()
    try:
        study_id = storage_mod.open_storage(url).get_study_id_from_name("small")
        api = f"http://127.0.0.1:{board.port}/api/studies/{study_id}"
        with urllib.request.urlopen(api, timeout=30) as r:
            shown = json.loads(r.read())["trials"][0]
    finally:
        board.server.shutdown()
        board.close()
    assert shown["state"] == "Fail"
    assert {"key": HANDED_BACK, "value": "re-queued as trial 1: stopped mid-trial"} in shown[
        "user_attrs"
    ]


def test_read_only_commands_do_not_import_torch(finished_study: tuple[str, str]) -> None:
    url, name = finished_study
    code = f"""
import sys
from mnist_hpo.cli import app
for args in (["status", {name!r}], ["list"], ["best", {name!r}], ["studies"],
             ["delete-study", "nope", "--yes"]):
    try:
        app([*args, *(["--storage", {url!r}] if args[0] != "studies" else [])])
    except SystemExit:
        pass
    print("TORCH", args[0], "torch" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    said = re.findall(r"TORCH (\S+) (\w+)", r.stdout)
    assert said == [(c, "False") for c in ("status", "list", "best", "studies", "delete-study")]


def test_a_bad_option_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnist_hpo.cli import main

    monkeypatch.setattr(sys, "argv", ["mnist-hpo", "work", "cnn", "--jbos", "2"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "error: No such option: --jbos (Possible options: --jobs, --verbose); see "
        "`mnist-hpo work --help`\n"
    )
    monkeypatch.setattr(sys, "argv", ["mnist-hpo", "work", "cnn", "--log-format", "xml"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "error: --log-format 'xml' is not a format; use one of auto, plain, json\n"
    )
    monkeypatch.setattr(sys, "argv", ["mnist-hpo", "work", "--help"])
    with pytest.raises(SystemExit):
        main()
    shown = capsys.readouterr().out
    assert "mnist-hpo[ray]" in shown  # not eaten as markup
    assert "[w0] trial 1 complete:" in shown and "━━━─────" in shown  # the view, as captured


def test_a_retry_started_long_ago_has_its_own_pace() -> None:
    # The pace of a running trial is this attempt's: epochs it trained itself over its time.
    t = create_trial(
        state=TrialState.RUNNING, params={"lr": 0.01}, distributions=LR,
        user_attrs={"resumed_from_epoch": 2}, intermediate_values={1: 0.9, 2: 0.92, 3: 0.93},
    )  # fmt: skip
    now = t.datetime_start + timedelta(seconds=10)  # type: ignore[operator]
    snap = progress.snapshot("x", [t], budget=4, epochs=5, done=lambda _t: "", now=now)
    (r,) = snap.running
    assert (r.epoch, r.epochs, r.val, r.seconds_per_epoch) == (3, 5, 0.93, 10.0)


@pytest.mark.timeout(30)  # a deadlock fails here, not after the run's 600 s
def test_a_signal_handler_may_report_while_a_line_is_being_written() -> None:
    # Stop's handlers (resilience/stop.py) say "Ctrl-C: stopping ..." from the main thread,
    # between any two bytecodes: also inside the reporter's write of another line. With a
    # plain lock that was a deadlock (the Ctrl-C crash test hung until its timeout).
    class Interrupted(io.StringIO):
        said = False

        def write(self, text: str) -> int:
            if not self.said:
                self.said = True
                report.event(Note("Ctrl-C: stopping after the current epoch"))
            return super().write(text)

    out = Interrupted()
    report = live.PlainReporter(live.Board(), verbose=False, out=out)
    report.event(EpochDone(0, 2, 12, 0.93, 0.1))
    assert out.getvalue().splitlines() == [
        "Ctrl-C: stopping after the current epoch",
        "trial 0 epoch 2/12: val 93.00% (0.1 s)",
    ]
