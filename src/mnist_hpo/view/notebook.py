"""The view in a notebook, and the API's other reporters: quiet, or each event to a callback.

In Jupyter, `Study.work` shows one output area that it redraws in place (an IPython display
handle): the last finished trials' lines, a row per running trial and the study line. IPython is
imported only when such a view is made, so the API needs it only in a notebook.
"""

from __future__ import annotations

import html
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mnist_hpo.events import EpochDone, Event
from mnist_hpo.view.live import Board, event_line, row_line

if TYPE_CHECKING:
    from mnist_hpo.search.progress import Snapshot

SHOWN_LINES = 12  # finished trials' and notes' lines kept above the rows: a cell stays short
KEPT_ERRORS = 5  # workers' last error lines, for the error the API raises when one fails

Callback = Callable[[Event, str], None]  # (event, worker label "w0"...)


def in_notebook() -> bool:
    """Inside a Jupyter kernel (not a terminal IPython): where a display handle redraws."""
    ipython = sys.modules.get("IPython")
    if ipython is None:  # never imported: certainly no kernel
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class _Errors:
    """What every API reporter does with lines: keep the last error lines for the API's error."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def keep(self, line: str, err: bool) -> None:
        if err:
            self.errors = [*self.errors, line][-KEPT_ERRORS:]


class QuietReporter(_Errors):
    """Shows nothing (a script, a test); keeps the board and the last error lines."""

    def __init__(self, board: Board, callback: Callback | None = None) -> None:
        super().__init__()
        self.board = board
        self.callback = callback

    def event(self, event: Event, worker: str = "", ts: str | None = None) -> None:
        self.board.event(event, worker)
        if self.callback is not None:
            self.callback(event, worker)

    def text(self, line: str, *, err: bool = False) -> None:
        self.keep(line, err)

    def snapshot(self, snap: Snapshot, *, announce: bool) -> None:
        self.board.update(snap)

    def close(self) -> None:
        pass

    def abandon(self) -> None:
        pass


class NotebookReporter(_Errors):
    """One output area, redrawn at each event and study read (an epoch: seconds apart)."""

    def __init__(self, board: Board, *, verbose: bool = False) -> None:
        import importlib

        shown: Any = importlib.import_module("IPython.display")  # partly typed: used as Any
        super().__init__()
        self.board = board
        self.verbose = verbose
        self.lines: list[str] = []
        self._html = shown.HTML
        self._lock = threading.RLock()  # events and study reads come from different threads
        self.handle: Any = shown.display(shown.HTML(""), display_id=True)

    def _draw(self) -> None:
        rows = [row_line(r) for r in self.board.rows()]
        text = "\n".join([*self.lines[-SHOWN_LINES:], *rows, *self.board.study_parts()])
        with self._lock:
            self.handle.update(self._html(f"<pre>{html.escape(text)}</pre>"))

    def event(self, event: Event, worker: str = "", ts: str | None = None) -> None:
        self.board.event(event, worker)
        if not isinstance(event, EpochDone):  # an epoch shows in its trial's row, not as a line
            self._add(event_line(event, self.verbose), worker)
        self._draw()

    def _add(self, line: str | None, worker: str) -> None:
        if line is not None:
            with self._lock:
                self.lines.append(f"[{worker}] {line}" if worker else line)

    def text(self, line: str, *, err: bool = False) -> None:
        self.keep(line, err)
        self._add(line, "")
        self._draw()

    def snapshot(self, snap: Snapshot, *, announce: bool) -> None:
        self.board.update(snap)
        self._draw()

    def close(self) -> None:
        self._draw()

    def abandon(self) -> None:
        pass


def api_reporter(progress: Any, board: Board, *, verbose: bool) -> QuietReporter | NotebookReporter:
    """`Study.work(progress=...)`: "auto" (the notebook view in Jupyter, else quiet), "notebook",
    "none", or a callable given each event and its worker's label."""
    if callable(progress):
        return QuietReporter(board, progress)
    if progress == "notebook" or (progress == "auto" and in_notebook()):
        return NotebookReporter(board, verbose=verbose)
    if progress in ("auto", "none"):
        return QuietReporter(board)
    from mnist_hpo.errors import UsageError

    raise UsageError(
        f"progress={progress!r} is not a choice; use 'auto', 'notebook', 'none' or a callable "
        "taking (event, worker)"
    )
