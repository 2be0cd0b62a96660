"""mnist-hpo: a hyperparameter search service for MNIST model families, built on Optuna."""

from importlib.metadata import PackageNotFoundError, version

try:
    # One source of truth: pyproject's `version`, as the installed package's metadata has it.
    __version__ = version("mnist-hpo")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
