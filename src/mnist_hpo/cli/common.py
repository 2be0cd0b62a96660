"""What every command shares: its options (each deploy setting with its env variable), the
one error seam, and how worker events and figures are printed."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from mnist_hpo.errors import HpoError, Interrupted
from mnist_hpo.settings import Settings, default_storage_url
from mnist_hpo.view.live import fmt_params as fmt_params
from mnist_hpo.view.live import pct as pct
from mnist_hpo.view.live import trials as trials

F = TypeVar("F", bound=Callable[..., Any])

DEFAULTS = Settings()


StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="MNIST_HPO_STORAGE",
        help="SQLAlchemy URL of the study storage (default: SQLite file in "
        "~/.local/share/mnist-hpo/studies.db). postgresql:// uses psycopg 3; add "
        "?pgbouncer=true behind a transaction-pooling PgBouncer.",
        show_default=False,
    ),
]

ArtifactsOpt = Annotated[
    str | None,
    typer.Option(
        "--artifacts",
        envvar="MNIST_HPO_ARTIFACTS",
        help="Checkpoint store: a folder shared by the workers, or s3://BUCKET "
        "(default: ~/.local/share/mnist-hpo/artifacts).",
        show_default=False,
    ),
]

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="MNIST_HPO_DATA",
        help="Folder with the dataset's four IDX files (.gz or raw), directly, in NAME/ or in "
        "torchvision's layout; for MNIST also the report's mnist.pkl.gz. Default: the cache, "
        "then a verified download.",
        show_default=False,
    ),
]

CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        envvar="MNIST_HPO_CACHE",
        help="Where downloaded data is kept (default: $XDG_CACHE_HOME/mnist-hpo or "
        "~/.cache/mnist-hpo).",
        show_default=False,
    ),
]

DownloadOpt = Annotated[
    bool,
    typer.Option("--download/--no-download", help="Allow downloading the dataset into the cache."),
]

StudiesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--studies",
        envvar="MNIST_HPO_STUDIES",
        help="Folder(s) searched first for spec NAMEs (then ./studies, then the shipped specs); "
        "in the variable, separate several with ':'.",
        show_default=False,
    ),
]

HeartbeatOpt = Annotated[
    int,
    typer.Option(
        envvar="MNIST_HPO_HEARTBEAT",
        help="Seconds between a running trial's heartbeats.",
    ),
]

GraceOpt = Annotated[
    int,
    typer.Option(
        envvar="MNIST_HPO_GRACE",
        help="Seconds without a heartbeat before another worker fails a trial as dead and "
        "retries it; keep it >= 5 x the heartbeat.",
    ),
]

StorageWaitOpt = Annotated[
    float,
    typer.Option(
        envvar="MNIST_HPO_STORAGE_WAIT",
        help="Seconds a worker retries a lost or unreachable storage before it stops.",
    ),
]

StopWaitOpt = Annotated[
    float,
    typer.Option(
        envvar="MNIST_HPO_STOP_WAIT",
        help="Seconds a stopping worker (SIGTERM, Ctrl-C) waits for its epoch; set it just "
        "below the orchestrator's stop grace period.",
    ),
]

StudyArg = Annotated[str, typer.Argument(help="Study name, as given at create-study.")]


def storage_url(storage: str | None) -> str:
    return storage or default_storage_url()


def search(studies: list[Path] | None) -> list[Path]:
    from mnist_hpo.search.spec_files import search_path

    # Typer splits a list option's environment variable on whitespace; ':' separates folders.
    dirs = [Path(p) for d in studies or [] for p in str(d).split(os.pathsep) if p]
    return search_path(dirs)


def error(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)


def command(fn: F) -> F:
    """Turn HpoError into one red line and its exit code, Ctrl-C into exit 130; give `--help`
    the docstring's paragraphs unwrapped (help_text)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Interrupted as e:
            typer.secho(str(e), fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(e.exit_code) from None
        except HpoError as e:
            error(str(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None

    wrapper.__doc__ = help_text(fn.__doc__)
    return wrapper  # type: ignore[return-value]


def help_text(doc: str | None) -> str:
    """A command's docstring as `--help` shows it. Typer's rich help keeps every line break
    after the first paragraph, so source lines up to 100 columns long broke again at 80 in a
    terminal: one paragraph per line lets rich wrap to the terminal's width. A paragraph that
    starts with click's \\b marker (sample output) keeps its lines, without the marker."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(
        p.removeprefix("\b").strip("\n") if p.startswith("\b") else " ".join(p.split())
        for p in paragraphs
    )


@contextlib.contextmanager
def reading(what: str = "reading the study") -> Iterator[None]:
    """A one-shot command's storage calls: an error midway is one sentence, not a trace."""
    from mnist_hpo.resilience.retry import storage_errors

    quiet_optuna()
    with storage_errors(what):
        yield


def quiet_optuna() -> None:
    import optuna

    # Our own lines replace Optuna's per-trial INFO logs; failures surface as HpoError or as
    # the trial's FAIL state.
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def open_at(url: str, *, must_exist: bool = True, read_only: bool = False) -> Any:
    """The storage for a one-shot command; `read_only` for those that only read (faster)."""
    from mnist_hpo.resilience.storage import open_storage

    return open_storage(url, must_exist=must_exist, read_only=read_only)


LogFormatOpt = Annotated[
    str,
    typer.Option(
        "--log-format",
        envvar="MNIST_HPO_LOG_FORMAT",
        help="auto: the live view on a terminal (a row per running trial, the study line with "
        "ETA), plain lines elsewhere; plain: lines only (one per epoch, per finished trial, "
        "the study line after it); json: one JSON object per event, with a timestamp.",
    ),
]


def download_bar() -> Callable[[str, int, int | None], None]:
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
