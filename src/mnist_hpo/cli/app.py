"""The mnist-hpo command line (Typer): the only package that prints or exits.

Each command parses its options, builds what the library takes (a spec, WorkOptions, Settings)
and calls one library function; everything it prints is formatted in this package.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from mnist_hpo import __version__

app = typer.Typer(
    name="mnist-hpo",
    help="Hyperparameter search for MNIST model families: studies, workers, results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"mnist-hpo {__version__}")
        raise typer.Exit(0)


def main() -> None:
    """The console script. A bad option or argument is one `error:` line and exit 2, as every
    other mistake is, instead of Typer's boxed panel."""
    if len(sys.argv) <= 1:
        app(prog_name="mnist-hpo")  # no arguments: the help, as Typer shows it
        return
    try:
        code = app(prog_name="mnist-hpo", standalone_mode=False)
    except typer.Abort:
        typer.secho("error: aborted", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except typer.TyperException as e:  # click's UsageError family: no such option, missing...
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "mnist-hpo"
        message = " ".join(e.format_message().split())
        see = f" See `{where} --help`." if message.endswith("?") else f"; see `{where} --help`"
        typer.secho(f"error: {message.rstrip('.')}{see}", fg=typer.colors.RED, err=True)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
