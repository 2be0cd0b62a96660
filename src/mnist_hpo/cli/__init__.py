"""The mnist-hpo command line: `app` (Typer) with its commands, one module per kind."""

# Importing a module registers its commands, in this order in --help: studies first.
from mnist_hpo.cli import studies  # noqa: I001, F401
from mnist_hpo.cli import work  # noqa: F401
from mnist_hpo.cli import outputs  # noqa: F401
from mnist_hpo.cli import ensemble  # noqa: F401
from mnist_hpo.cli.app import app, main

__all__ = ["app", "main"]
