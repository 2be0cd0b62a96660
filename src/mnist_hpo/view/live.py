"""The view of a running search: on a terminal, one row per running trial and a study line under
the finished trials' lines; elsewhere (CI, `kubectl logs`, a pipe) plain lines, or JSON records.

Driven by worker events (events.py, from this process or parsed from `--jobs N`'s worker
processes) and by snapshots of the study read from storage (search/progress.py). Nothing here
knows Typer, so the same view can be shown by other front ends than the CLI.

Cost: a refresh renders a small table once a second in a side thread; benchmarks/live_view.py
measures it against a real epoch (well under the 1% it is allowed).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Protocol

from mnist_hpo.errors import HpoError
from mnist_hpo.events import (
    EpochDone,
    Event,
    Note,
    TrialFinished,
    TrialStarted,
    WorkerDone,
    to_record,
)

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

    from mnist_hpo.search.progress import Running, Snapshot

FORMATS = ("auto", "plain", "json")
REFRESH = 1.0  # view refreshes per second: enough for the clock and ETA, cheap for training
POLL_EVERY = 15.0  # seconds between reads of the study when nothing happens here
POLL_GAP = 2.0  # at least this long between two reads (a burst of trials ending reads once)
BAR = 20  # characters of a trial's epoch bar
# Shown first in a row, when a trial has them: what most often tells two trials apart.
KEY_PARAMS = ("lr", "batch_size", "optimizer", "n_layers", "hidden", "n_blocks", "augment")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def trials(n: int) -> str:
    """'1 trial', '3 trials'."""
    return f"{n} trial" if n == 1 else f"{n} trials"


def fmt_params(params: Mapping[str, Any], keys: tuple[str, ...] = ()) -> str:
    """`k=v` pairs, `keys` first, then the rest by name; floats to 3 significant digits."""

    def one(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    order = [k for k in keys if k in params] + sorted(k for k in params if k not in keys)
    return " ".join(f"{k}={one(params[k])}" for k in order)


def clock(seconds: float) -> str:
    """42 s, 3:05, 1:02:05."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def event_line(event: Event, verbose: bool) -> str | None:
    """The plain line of an event; None for what is shown only with -v (a trial's start)."""
    match event:
        case Note(text):
            return text
        case TrialStarted(number, params, resumed):
            if not verbose and not resumed:
                return None
            again = f" (resumed after epoch {resumed})" if resumed else ""
            return f"trial {number} started{again}: {fmt_params(params)}"
        case EpochDone(number, epoch, epochs, val, secs):
            return f"trial {number} epoch {epoch}/{epochs}: val {pct(val)} ({secs:.1f} s)"
        case TrialFinished() as t:
            state = t.state.lower() + (f" at epoch {t.epochs}" if t.state == "PRUNED" else "")
            test = f" test {pct(t.test_accuracy)}" if t.test_accuracy is not None else ""
            ran = f"{t.epochs} epoch{'s' if t.epochs != 1 else ''}"
            return (
                f"trial {t.number} {state}: val {pct(t.val_accuracy)}{test} "
                f"({ran}, {t.seconds:.1f} s) | best val {pct(t.best_val)}"
            )
        case WorkerDone(trials, seconds, reason):
            return f"worker done: {trials} trial(s) in {seconds:.0f} s; {reason}"
    return None


@dataclass
class _Row:
    """A trial this process's workers are training, as their events tell it."""

    running: Running
    since: float  # monotonic time its attempt started
    resumed: int  # epochs it restored instead of training


class Board:
    """What the view shows: rows from events, the study line from the latest snapshot.

    Thread-safe: events and snapshots arrive from different threads, and the view reads it
    from its refresh thread. `from_storage`: rows are the snapshot's running trials (what
    `status --watch` shows), and elapsed counts from the study's first trial.
    """

    def __init__(
        self, *, from_storage: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.from_storage = from_storage
        self.clock = clock
        self.began = clock()
        self.snap: Snapshot | None = None
        self._rows: dict[str, _Row] = {}  # worker label -> its trial
        self._lock = threading.RLock()  # reentrant: a signal handler may report mid-event

    def event(self, event: Event, worker: str = "") -> None:
        # Here, not at the top: `predict` imports this package, and progress imports Optuna.
        from mnist_hpo.search.progress import Running

        now = self.clock()
        with self._lock:
            row = self._rows.get(worker)
            match event:
                case TrialStarted(number, params, resumed, epochs):
                    r = Running(number, resumed, epochs, params=params, worker=worker)
                    self._rows[worker] = _Row(r, now, resumed)
                case EpochDone(number, epoch, epochs, val) if row and row.running.number == number:
                    pace = (now - row.since) / max(epoch - row.resumed, 1)
                    row.running = replace(
                        row.running, epoch=epoch, epochs=epochs, val=val, seconds_per_epoch=pace
                    )
                case TrialFinished(number) if row and row.running.number == number:
                    del self._rows[worker]
                case WorkerDone():
                    self._rows.pop(worker, None)

    def update(self, snap: Snapshot) -> None:
        with self._lock:
            self.snap = snap

    def rows(self) -> list[Running]:
        with self._lock:
            if self.from_storage:
                return [r for r in (self.snap.running if self.snap else []) if not r.waiting]
            return [row.running for row in self._rows.values()]

    def eta(self) -> float | None:
        with self._lock:
            snap, mine = self.snap, [row.running for row in self._rows.values()]
        if snap is None:
            return None
        from mnist_hpo.search import progress

        return progress.eta(snap, progress.merge(snap, mine))

    def elapsed(self) -> float:
        if self.from_storage:  # the study's own: from its first trial to now or its end
            snap = self.snap
            if snap is None or snap.started is None:
                return 0.0
            end = snap.ended if snap.finished and snap.ended else datetime.now()
            return max((end - snap.started).total_seconds(), 0.0)
        return self.clock() - self.began

    def study_line(self) -> str:
        """One line: budget, what became of the trials, the best so far, elapsed, ETA."""
        return "; ".join(self.study_parts())

    def study_parts(self) -> tuple[str, str]:
        """The study line in two halves (the view shows them on two lines): the budget and
        what became of the trials; the best so far, elapsed and the ETA."""
        snap, elapsed = self.snap, f"elapsed {clock(self.elapsed())}"
        if snap is None:
            return "reading the study ...", elapsed
        counts = ", ".join(f"{k} {v}" for k, v in snap.counts.items()) or "no trials yet"
        best = "best val -"
        if snap.best is not None:
            b = snap.best
            best = f"best val {pct(b.val)} (trial {b.number}), test {pct(b.test)}"
        if snap.finished:
            end = "done: " + snap.finished
        else:
            eta = self.eta()
            bound = "" if snap.measured else "at most "  # no sampled trial has finished yet
            end = "ETA " + (bound + clock(eta) if eta is not None else "- (after the first epoch)")
        used = f"{snap.name}: {snap.spent}/{snap.budget} of the budget used; {counts}"
        return used, f"{best}; {elapsed}; {end}"

    def record(self) -> dict[str, Any]:
        """The study line as a JSON record's fields."""
        snap, eta = self.snap, self.eta()
        best = snap.best if snap else None
        return {
            "event": "study",
            "study": snap.name if snap else None,
            "spent": snap.spent if snap else None,
            "budget": snap.budget if snap else None,
            "counts": snap.counts if snap else {},
            "best_trial": best.number if best else None,
            "best_val": best.val if best else None,
            "best_test": best.test if best else None,
            "elapsed_s": round(self.elapsed(), 1),
            "eta_s": None if eta is None else round(eta, 1),
            "eta_is_upper_bound": bool(snap and not snap.measured),
            "finished": snap.finished if snap else "",
        }


def bar(done: int, total: int, width: int = BAR, *, ascii_only: bool = False) -> str:
    """An epoch bar whose two parts differ in the characters, not only in colour (a screen
    read as text, a terminal without colours)."""
    filled = round(width * done / total) if total else 0
    full, empty = ("#", "-") if ascii_only else ("━", "─")
    return full * filled + empty * (width - filled)


def render(board: Board, *, ascii_only: bool = False) -> RenderableType:
    """Rows of running trials, then the study line."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(style="cyan", no_wrap=True)  # worker
    table.add_column(no_wrap=True)  # trial
    table.add_column(ratio=1, no_wrap=True, overflow="ellipsis", style="dim")  # params
    table.add_column(no_wrap=True, style="green")  # bar
    table.add_column(no_wrap=True, justify="right")  # k/n
    table.add_column(no_wrap=True)  # val
    table.add_column(no_wrap=True, justify="right")  # s/epoch
    for r in board.rows():
        pace = f"{r.seconds_per_epoch:.1f} s/epoch" if r.seconds_per_epoch else "-"
        table.add_row(
            r.worker or "-",
            f"trial {r.number}",
            fmt_params(r.params, KEY_PARAMS),
            bar(r.epoch, r.epochs, ascii_only=ascii_only),
            f"{r.epoch}/{r.epochs or '?'}",
            f"val {pct(r.val)}",
            pace,
        )
    used, rest = board.study_parts()
    return Group(table, Text(used, style="bold"), Text(rest, style="bold"))


class Reporter(Protocol):
    """Where `work` sends what its workers say: events, other lines, study snapshots."""

    def event(self, event: Event, worker: str = "", ts: str | None = None) -> None: ...
    def text(self, line: str, *, err: bool = False) -> None: ...
    def snapshot(self, snap: Snapshot, *, announce: bool) -> None: ...
    def close(self) -> None: ...
    def abandon(self) -> None: ...


def _label(worker: str) -> str:
    return f"[{worker}] " if worker else ""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PlainReporter:
    """Lines, as a log wants them: each event's line (epochs included), and after each finished
    trial the study line. Never a control code."""

    def __init__(self, board: Board, *, verbose: bool, out: IO[str] | None = None) -> None:
        self.board = board
        self.verbose = verbose
        self.out = out
        self._lock = threading.RLock()  # reentrant: a signal handler may write mid-line

    def _write(self, line: str, err: bool = False) -> None:
        stream = self.out or (sys.stderr if err else sys.stdout)
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def event(self, event: Event, worker: str = "", ts: str | None = None) -> None:
        self.board.event(event, worker)
        line = event_line(event, self.verbose)
        if line is not None:
            self._write(_label(worker) + line)

    def text(self, line: str, *, err: bool = False) -> None:
        self._write(line, err)

    def snapshot(self, snap: Snapshot, *, announce: bool) -> None:
        self.board.update(snap)
        if announce:
            self._write("study " + self.board.study_line())

    def close(self) -> None:
        pass

    def abandon(self) -> None:
        pass


class JsonReporter:
    """One JSON object a line: every event with `ts` (UTC, ISO 8601) and `worker`, other lines
    as `{"event": "line"}`, and after each finished trial a `{"event": "study"}` record."""

    def __init__(self, board: Board, *, out: IO[str] | None = None, worker: str = "") -> None:
        self.board = board
        self.out = out
        self.worker = worker  # this process's own label (a `--jobs N` worker's)
        self._lock = threading.RLock()  # reentrant: see PlainReporter

    def _emit(self, record: dict[str, Any], ts: str | None = None, err: bool = False) -> None:
        line = json.dumps({"ts": ts or now_iso(), **record}, default=str)
        stream = self.out or (sys.stderr if err else sys.stdout)
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def event(self, event: Event, worker: str = "", ts: str | None = None) -> None:
        self.board.event(event, worker)
        who = worker or self.worker
        self._emit({**({"worker": who} if who else {}), **to_record(event)}, ts)

    def text(self, line: str, *, err: bool = False) -> None:
        self._emit({"event": "line", "stream": "stderr" if err else "stdout", "text": line})

    def snapshot(self, snap: Snapshot, *, announce: bool) -> None:
        self.board.update(snap)
        if announce:
            self._emit(self.board.record())

    def close(self) -> None:
        pass

    def abandon(self) -> None:
        pass


class LiveReporter:
    """The view on a terminal (rich's Live): lines print above it, rows and the study line
    redraw in place once a second. Started at the first trial, so the data's notes and a
    download's progress bar print as plain lines before it."""

    def __init__(self, board: Board, *, verbose: bool, console: Console | None = None) -> None:
        from rich.console import Console

        self.board = board
        self.verbose = verbose
        self.console = console or Console(highlight=False)
        self.live: Live | None = None
        self._lock = threading.RLock()

    def _view(self) -> RenderableType:
        return render(self.board, ascii_only=not self.console.encoding.lower().startswith("utf"))

    def start(self) -> None:
        from rich.live import Live

        with self._lock:
            if self.live is None:
                self.live = Live(
                    console=self.console,
                    get_renderable=self._view,
                    refresh_per_second=REFRESH,
                    transient=True,
                )
                self.live.start(refresh=True)

    def _print(self, line: str, style: str = "") -> None:
        from rich.text import Text

        with self._lock:
            self.console.print(Text(line, style=style), soft_wrap=True)

    def event(self, event: Event, worker: str = "", ts: str | None = None) -> None:
        self.board.event(event, worker)
        if isinstance(event, TrialStarted):
            self.start()
        line = None if isinstance(event, EpochDone) else event_line(event, self.verbose)
        if line is None:
            return  # an epoch: the next refresh (within a second) shows it
        if self.live is not None:
            self.live.refresh()  # a line printed above redraws the view as last refreshed
        self._print(_label(worker) + line)

    def text(self, line: str, *, err: bool = False) -> None:
        self._print(line, ("red" if "error:" in line else "yellow") if err else "")

    def snapshot(self, snap: Snapshot, *, announce: bool) -> None:
        self.board.update(snap)
        if self.live is not None:
            self.live.refresh()

    def close(self) -> None:
        """Take the view down (it is transient: the finished trials' lines stay)."""
        with self._lock:
            if self.live is not None:
                self.live.stop()
                self.live = None

    def abandon(self) -> None:
        """Before an exit without unwinding (os._exit): give the terminal its cursor back."""
        if self.live is not None:  # straight to the terminal: rich may be buffering
            self.console.file.write("\x1b[?25h\n")
            self.console.file.flush()


def row_line(r: Running) -> str:
    """A running trial as a plain line (`status --watch` in a pipe)."""
    pace = f", {r.seconds_per_epoch:.1f} s/epoch" if r.seconds_per_epoch else ""
    where = f" on {r.worker}" if r.worker else ""
    return f"  trial {r.number}{where}: epoch {r.epoch}/{r.epochs}, val {pct(r.val)}{pace}"


class Watch:
    """What `status --watch` draws each time it reads the study: the view in place on a
    terminal (left on screen when it ends), elsewhere the study line and a line per running
    trial, only when something changed since the last read."""

    def __init__(self, board: Board, *, terminal: bool, console: Console | None = None) -> None:
        self.board = board
        self.terminal = terminal
        self.console = console
        self.live: Live | None = None
        self._last: Any = None
        self._problem = ""

    def show(self) -> None:
        if self.terminal:
            self._draw()
            return
        snap = self.board.snap
        rows = self.board.rows()
        if snap is None:
            return
        state = (snap.spent, snap.counts, snap.best, [(r.number, r.epoch) for r in rows])
        if state == self._last:
            return
        self._last = state
        lines = ["study " + self.board.study_line(), *map(row_line, rows)]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()

    def _draw(self) -> None:
        from rich.console import Console
        from rich.live import Live

        if self.live is None:
            self.console = self.console or Console(highlight=False)
            self.live = Live(
                console=self.console,
                get_renderable=lambda: render(self.board),
                refresh_per_second=REFRESH,
            )
            self.live.start(refresh=True)
        self.live.refresh()

    def problem(self, text: str) -> None:
        """A failed read: said once until a read succeeds (`problem("")`); above the view on a
        terminal, else on stderr."""
        from rich.text import Text

        if text and text != self._problem:
            if self.live is not None:
                self.live.console.print(Text(f"error: {text}", style="red"), soft_wrap=True)
            else:
                print(f"error: {text}", file=sys.stderr, flush=True)
        self._problem = text

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def use_live(fmt: str, stream: IO[str] | None = None) -> bool:
    """`auto` on a terminal (not a dumb one). Decided here, not by rich, whose FORCE_COLOR
    and TTY_COMPATIBLE variables would otherwise turn it on in a pipe."""
    import os

    stream = stream or sys.stdout
    tty = getattr(stream, "isatty", lambda: False)()
    return fmt == "auto" and bool(tty) and os.environ.get("TERM") != "dumb"


def reporter(fmt: str, board: Board, *, verbose: bool, worker: str = "") -> Reporter:
    """The reporter for `--log-format FMT` on this process's stdout."""
    if fmt == "json":
        return JsonReporter(board, worker=worker)
    if use_live(fmt):
        return LiveReporter(board, verbose=verbose)
    return PlainReporter(board, verbose=verbose)


class Poller:
    """Reads the study's snapshot in a side thread: at once after a trial starts or ends here,
    else every POLL_EVERY s, never twice within POLL_GAP s. A failed read (the database
    restarting) is skipped: the workers wait it out on their own."""

    def __init__(
        self,
        read: Callable[[], Snapshot],
        report: Reporter,
        *,
        every: float = POLL_EVERY,
        gap: float = POLL_GAP,
    ) -> None:
        self.read = read
        self.report = report
        self.every = every
        self.gap = gap
        self._wake = threading.Event()
        self._stop = False
        self._announce = False
        self._thread = threading.Thread(target=self._run, name="study-poller", daemon=True)
        self._thread.start()

    def kick(self, *, announce: bool = False) -> None:
        self._announce = self._announce or announce
        self._wake.set()

    def _once(self) -> None:
        announce, self._announce = self._announce, False
        try:
            snap = self.read()
        except HpoError:
            return
        self.report.snapshot(snap, announce=announce)

    def _run(self) -> None:
        last = float("-inf")
        while True:
            self._wake.wait(self.every)
            if self._stop:
                return
            time.sleep(max(self.gap - (time.monotonic() - last), 0.0))
            if self._stop:
                return
            self._wake.clear()  # a kick from now on asks for another read
            last = time.monotonic()
            self._once()

    def close(self, *, final: bool = False) -> None:
        """Stop polling; `final`: one last read, announced (the study record a log ends with).
        A study line still owed for a trial that just ended is read and said too."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
        if final or self._announce:
            self._announce = True
            self._once()


class View:
    """A reporter, its board and (in the process that runs the view) a poller, as one listener:
    what `work` hands its workers' events to."""

    def __init__(self, report: Reporter, board: Board, poller: Poller | None = None) -> None:
        self.report = report
        self.board = board
        self.poller = poller

    def __call__(self, event: Event, worker: str = "", ts: str | None = None) -> None:
        self.report.event(event, worker, ts)
        if self.poller is not None and isinstance(event, TrialStarted | TrialFinished):
            self.poller.kick(announce=isinstance(event, TrialFinished))

    def note(self, text: str) -> None:
        self(Note(text))

    def text(self, line: str, *, err: bool = False) -> None:
        self.report.text(line, err=err)

    def close(self, *, final: bool = False) -> None:
        if self.poller is not None:
            self.poller.close(final=final)
        self.report.close()
