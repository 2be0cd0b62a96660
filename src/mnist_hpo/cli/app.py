"""The mnist-hpo command line (Typer): the only package that prints or exits.

Each command parses its options, builds what the library takes (a spec, WorkOptions, Settings)
and calls one library function; everything it prints is formatted in this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from mnist_hpo import __version__

if TYPE_CHECKING:
    pass

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
    app()
