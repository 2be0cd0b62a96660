"""Samplers and pruners by name: one table each, with the options a study spec may set.

Plain data, so a spec can be validated (and a model file read) without importing Optuna; the
objects are built from these names in samplers.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    summary: str
    options: Mapping[str, type]  # option name -> int/float/bool, checked by spec validation


SAMPLERS: dict[str, Algorithm] = {
    "tpe": Algorithm(
        "multivariate TPE with constant liar (Optuna 5 default); the default",
        {"n_startup_trials": int, "n_ei_candidates": int, "group": bool},
    ),
    "random": Algorithm("uniform random search", {}),
    "grid": Algorithm("every combination of the spec's [grid] lists", {}),
    "nsga2": Algorithm(
        "NSGA-II, the default for multi-objective studies",
        {"population_size": int},
    ),
}

PRUNERS: dict[str, Algorithm] = {
    "median": Algorithm(
        "stop a trial below the median of earlier trials at the same epoch; the default",
        {"n_startup_trials": int, "n_warmup_steps": int, "n_min_trials": int},
    ),
    "percentile": Algorithm(
        "like median, at another percentile",
        {"percentile": float, "n_startup_trials": int, "n_warmup_steps": int},
    ),
    "hyperband": Algorithm(
        "Hyperband over epochs (max_resource = the spec's epochs)",
        {"min_resource": int, "reduction_factor": int},
    ),
    "none": Algorithm("never prune", {}),
}

# What a study can optimise: name -> (direction, metric name shown by the dashboard and report).
# Accuracy is validation accuracy and always comes first: it is what every epoch reports and
# what pruning compares, in multi-objective studies too.
OBJECTIVES: dict[str, tuple[str, str]] = {
    "accuracy": ("maximize", "val_accuracy"),
    "params": ("minimize", "n_params"),
    "latency": ("minimize", "latency_ms"),  # ms per image at batch 1 on the worker's device
}
# Pruners a multi-objective study can use: per-epoch rules on the accuracy curve alone.
MULTI_OBJECTIVE_PRUNERS = ("median", "percentile", "none")
