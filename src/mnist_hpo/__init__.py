"""mnist-hpo: a hyperparameter search service for MNIST model families, built on Optuna.

The Python API (the CLI `mnist-hpo` is a layer over it; docs/python-api.md has an example of
each call):

    import mnist_hpo

    study = mnist_hpo.create_study("quickstart")   # a spec NAME, a .toml path, or a dict
    study.work(jobs=2)                             # worker processes, as `mnist-hpo work -j 2`
    study.best                                     # Best: params, accuracies, size, epochs
    study.trials()                                 # a DataFrame (pandas) or a list of Trial
    study.plot("history")                          # the report's plotly figures
    study.report("report.html"); study.export_best("best.safetensors")
    study.ensemble(size=25)                        # Caruana's selection over the kept trials
    study.export_best("ens.safetensors", ensemble=True)
    mnist_hpo.load_model("best.safetensors").predict("digit.png")

    mnist_hpo.load_study(name, storage=None)       # a study created before
    mnist_hpo.studies(storage=None)                # the studies in a storage: StudyInfo
    mnist_hpo.families()                           # the model families: FamilyInfo
    mnist_hpo.spec_dict("report_cnn")              # a spec file as a dict, to change and create

Storage, data and artifact locations default to the CLI's environment variables
(MNIST_HPO_STORAGE, MNIST_HPO_DATA, MNIST_HPO_ARTIFACTS), then to its defaults. Errors are
`mnist_hpo.HpoError` (bad input: its subclass `UsageError`), with the CLI's sentences.

The names load on first use, so `import mnist_hpo` stays cheap (no Optuna, no torch): the
read-only commands start in a fraction of a second.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    # One source of truth: pyproject's `version`, as the installed package's metadata has it.
    __version__ = version("mnist-hpo")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:  # what mypy and IDEs see; at run time __getattr__ imports on first use
    from mnist_hpo.api.model import Model, load_model
    from mnist_hpo.api.records import (
        Best,
        Ensemble,
        FamilyInfo,
        Member,
        Removed,
        Status,
        StudyInfo,
        Trial,
        WorkResult,
    )
    from mnist_hpo.api.studies import (
        Study,
        create_study,
        ensemble,
        load_study,
        spec_dict,
        studies,
    )
    from mnist_hpo.errors import HpoError, UsageError

# Public name -> the module that holds it.
_EXPORTS = {
    "create_study": "mnist_hpo.api.studies",
    "load_study": "mnist_hpo.api.studies",
    "studies": "mnist_hpo.api.studies",
    "spec_dict": "mnist_hpo.api.studies",
    "ensemble": "mnist_hpo.api.studies",
    "load_model": "mnist_hpo.api.model",
    "Model": "mnist_hpo.api.model",
    "Ensemble": "mnist_hpo.api.records",
    "Member": "mnist_hpo.api.records",
    "Removed": "mnist_hpo.api.records",
    "Study": "mnist_hpo.api.studies",
    "Best": "mnist_hpo.api.records",
    "FamilyInfo": "mnist_hpo.api.records",
    "Status": "mnist_hpo.api.records",
    "StudyInfo": "mnist_hpo.api.records",
    "Trial": "mnist_hpo.api.records",
    "WorkResult": "mnist_hpo.api.records",
    "HpoError": "mnist_hpo.errors",
    "UsageError": "mnist_hpo.errors",
}
# `families` is also the subpackage of the model families; calling it lists them (see
# families/__init__.py, whose module is callable for this).
__all__ = [
    "Best",
    "Ensemble",
    "FamilyInfo",
    "HpoError",
    "Member",
    "Model",
    "Removed",
    "Status",
    "Study",
    "StudyInfo",
    "Trial",
    "UsageError",
    "WorkResult",
    "__version__",
    "create_study",
    "ensemble",
    "families",
    "load_model",
    "load_study",
    "spec_dict",
    "studies",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once: later lookups do not come here
        return value
    if name == "families":
        return importlib.import_module("mnist_hpo.families")
    raise AttributeError(f"module 'mnist_hpo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _list_families() -> list[Any]:
    """`mnist_hpo.families()`: the API's families(), reached from the families package."""
    from mnist_hpo.api.studies import families

    return families()
