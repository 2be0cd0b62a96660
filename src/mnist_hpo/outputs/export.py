"""Best-model export: copy (or retrain) a trial's weights and write its model file; or write
the study's recorded ensemble as one file.

Weights come from the trial's kept weights (search/kept.py: every finished trial keeps them
unless the spec capped them), copied in seconds and checked on export: the copy must score
exactly the validation accuracy the trial recorded. A trial without kept weights (a study from
before keeping, or past the `keep_weights` cap) is retrained: its recorded parameters and seed
through build.build_trial, the objective's own code path, with the worker's thread count and
precision as the trial recorded them. On CPU that reproduces the trial's weights exactly
(tests/test_export.py); another device may round differently, so the file records both
accuracies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from mnist_hpo import __version__
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.ml import data as data_mod
from mnist_hpo.ml.data import Data
from mnist_hpo.ml.device import resolve_device
from mnist_hpo.ml.space import Fixed
from mnist_hpo.ml.train import EpochEnd, accuracy, train
from mnist_hpo.outputs import model_file
from mnist_hpo.resilience.artifacts import open_store
from mnist_hpo.resilience.storage import open_storage
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.build import build_trial, trial_seed
from mnist_hpo.search.kept import Kept, deleted_members, recorded_ensemble
from mnist_hpo.search.kept import of as kept_of
from mnist_hpo.search.spec import StudySpec

Message = Callable[[str], None]


def _ignore(_: str) -> None:
    """The default message sink."""


@dataclass(frozen=True)
class Exported:
    """What export_best wrote, for the CLI to report."""

    path: Path
    meta: dict[str, Any]  # the JSON stored in the file

    @property
    def reproduced(self) -> bool:
        """True when the exported weights score exactly what the trial recorded on validation."""
        return bool(
            self.meta["validation_accuracy"] == self.meta["recorded"]["validation_accuracy"]
        )


def retrain(
    spec: StudySpec, trial: FrozenTrial, split: Data, message: Message = _ignore
) -> nn.Module:
    """Train the trial again from its recorded params and seed; returns the trained model."""
    seed = trial_seed(spec, trial.number, trial.user_attrs)
    built = build_trial(spec, Fixed(trial.params), seed, split.device)

    def progress(e: EpochEnd) -> None:
        message(
            f"retraining trial {trial.number}: epoch {e.epoch}/{built.cfg.epochs}, "
            f"validation {100 * e.val_accuracy:.2f}%"
        )

    # Older trials recorded no precision: they trained in fp32.
    precision = str(trial.user_attrs.get("precision", "fp32"))
    train(built.model, built.cfg, split, progress, precision=precision)
    return built.model


def _retrain(
    spec: StudySpec,
    trial: FrozenTrial,
    split: Data,
    threads: int | None,
    message: Message,
    missing_from: str | None = None,
) -> tuple[nn.Module, str]:
    """Retrain a trial without kept weights with its worker's threads and precision (another
    thread count sums in another order: 2 threads did not reproduce a 1-thread deep_mlp).
    `missing_from`: the store its recorded weights are not in (most often: the wrong store)."""
    recorded = trial.user_attrs.get("threads")
    how = "--threads" if threads else "as its worker did" if recorded else "torch's default"
    count = threads or recorded
    if count:
        torch.set_num_threads(int(count))
    precision = trial.user_attrs.get("precision", "fp32")
    why = (
        f"kept its weights, but they are not in {missing_from} (to copy them instead, stop "
        "here and point --artifacts (MNIST_HPO_ARTIFACTS) at the workers' store)"
        if missing_from
        else "kept no weights (a study from before keeping, or past its keep_weights cap)"
    )
    message(
        f"trial {trial.number} {why}: retraining it with {torch.get_num_threads()} thread(s) "
        f"({how}) in {precision}"
    )
    model = retrain(spec, trial, split, message)
    return model, f"retrained on {split.device} from the trial's recorded params and seed"


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """The best completed trial by validation accuracy, or trial `number` if it completed."""
    name = study.study_name
    if number is None:
        best = study_mod.best_trial(study)
        if best is None:
            raise HpoError(
                f"study {name!r} has no completed trial yet; run `mnist-hpo work {name}`"
            )
        return best
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise UsageError(
            f"study {name!r} has no trial {number}; it has trials 0..{len(trials) - 1}"
        )
    chosen = trials[number]
    if chosen.state != TrialState.COMPLETE:
        raise UsageError(
            f"trial {number} of {name!r} is {chosen.state.name}, not COMPLETE; export a completed "
            "trial (omit --trial for the best one)"
        )
    return chosen


def export_best(
    storage_url: str,
    study_name: str,
    out: Path,
    *,
    trial_number: int | None = None,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
    device: str | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
    artifacts: str | None = None,
    threads: int | None = None,
    message: Message = _ignore,
) -> Exported:
    """Export the study's best trial (or `trial_number`) to `out`.

    `weights` is the trial's final state_dict when the caller has it; else the trial's kept
    weights in the artifact store at `artifacts` are copied; without either the trial is
    retrained with `threads` (default: the worker's, as the trial recorded it). `device`
    defaults to the device the trial recorded (the faithful reproduction); the data must be the
    data the study ran on.
    """
    study, spec = study_mod.load(open_storage(storage_url, must_exist=True), study_name)
    study_mod.check_family(study, spec)  # the trial is rebuilt (retrained) with this code
    trial = pick_trial(study, trial_number)
    raw = data_mod.load(
        spec.dataset, data_dir, cache_dir=cache_dir, download=download, message=message
    )
    study_mod.check_data(study, raw, record=False)
    run_on = resolve_device(device or str(trial.user_attrs.get("device", "cpu")).split(":")[0])
    split = data_mod.split(
        raw, validation_size=spec.validation_size, train_size=spec.train_size, device=run_on
    )
    source, missing = "the trial's final checkpoint", None
    if weights is None and artifacts is not None:
        weights = Kept(open_store(artifacts), artifacts).weights(trial)
        source = "the trial's kept weights (copied, not retrained)"
        missing = artifacts if weights is None and _recorded_weights(trial) else None
    if weights is None:
        model, source = _retrain(spec, trial, split, threads, message, missing)
    else:
        model = model_file.rebuild(spec, trial.params, run_on)
        model.load_state_dict(dict(weights))
    meta = _meta(spec, study, trial, raw, split, model, source)
    model_file.save(out, model, meta)
    return Exported(out, meta)


def _meta(
    spec: StudySpec,
    study: optuna.Study,
    trial: FrozenTrial,
    raw: data_mod.RawData,
    split: Data,
    model: nn.Module,
    source: str,
) -> dict[str, Any]:
    mean, std = data_mod.normalisation(
        raw, validation_size=spec.validation_size, train_size=spec.train_size
    )
    cfg = build_trial(spec, Fixed(trial.params), 0, torch.device("cpu")).cfg
    return {
        "format": model_file.FORMAT,
        "format_version": model_file.FORMAT_VERSION,
        "family": spec.family,
        "family_origin": spec.family_def.origin.to_dict(),
        "params": dict(trial.params),
        "spec": spec.to_dict(),
        "normalisation": {"mean": mean, "std": std},
        "input": "28x28 grayscale, white digit on black; pixels/255, then (x - mean) / std",
        "outputs": "logits" if cfg.loss == "cross_entropy" else "scores",
        "study": study.study_name,
        "trial": trial.number,
        "seed": trial.user_attrs.get("seed"),
        "weights_from": source,
        "validation_accuracy": accuracy(model, split.val_x, split.val_y),
        "test_accuracy": accuracy(model, split.test_x, split.test_y),
        "recorded": {
            "validation_accuracy": trial.values[0],
            "test_accuracy": trial.user_attrs.get("test_accuracy"),
            "device": trial.user_attrs.get("device"),
            "precision": trial.user_attrs.get("precision", "fp32"),
            "versions": trial.user_attrs.get("versions"),
        },
        "n_params": sum(p.numel() for p in model.parameters()),
        "data": {"fingerprint": raw.fingerprint, "source": raw.source},
        "exported_by": f"mnist-hpo {__version__}",
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": study_mod.versions(),
    }


def export_ensemble(
    storage_url: str,
    study_name: str,
    out: Path,
    *,
    artifacts: str,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
    message: Message = _ignore,
) -> Exported:
    """Write the ensemble recorded on the study (`mnist-hpo ensemble`) as one model file: every
    member's kept weights, its weight and its own normalisation (model_file.Ensemble)."""
    storage = open_storage(storage_url, must_exist=True)
    study, spec = study_mod.load(storage, study_name)
    chosen = recorded_ensemble(study)
    if chosen is None:
        raise HpoError(
            f"study {study_name!r} has no ensemble recorded; run `mnist-hpo ensemble "
            f"{study_name}` first"
        )
    if gone := deleted_members(chosen, study_name, lambda: storage):
        raise HpoError(
            f"the ensemble recorded on {study_name!r} has members from {', '.join(gone)}, no "
            f"longer in the storage; run `mnist-hpo ensemble {study_name}` again to choose "
            "from what is left"
        )
    raw = data_mod.load(
        spec.dataset, data_dir, cache_dir=cache_dir, download=download, message=message
    )
    study_mod.check_data(study, raw, record=False)
    kept = Kept(open_store(artifacts), artifacts)
    members, info = [], []
    for m in chosen["members"]:
        model, record = _member(storage, kept, raw, m)
        members.append(model)
        info.append(record)
    ens = model_file.Ensemble(members, info).eval()
    val_x, val_y, test_x, test_y = _pixels(raw, spec.validation_size)
    meta = {
        "format": model_file.FORMAT,
        "format_version": model_file.FORMAT_VERSION,
        "kind": "ensemble",
        "family": "ensemble",
        "members": info,
        "normalisation": {"mean": 0.0, "std": 1.0},  # each member normalises for itself
        "input": "28x28 grayscale, white digit on black; pixels/255",
        "outputs": "logits",  # log of the weighted mean probabilities
        "study": study.study_name,
        "trial": None,
        "validation_accuracy": accuracy(ens, val_x, val_y),
        "test_accuracy": accuracy(ens, test_x, test_y),
        "recorded": {k: chosen[k] for k in ("studies", "size", "val_accuracy", "test_accuracy")},
        "n_params": sum(p.numel() for p in ens.parameters()),
        "data": {"fingerprint": raw.fingerprint, "source": raw.source},
        "exported_by": f"mnist-hpo {__version__}",
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": study_mod.versions(),
    }
    model_file.save(out, ens, meta)
    return Exported(out, meta)


def _recorded_weights(trial: FrozenTrial) -> bool:
    """Whether the trial recorded keeping its weights (so their absence is the store's)."""
    record = kept_of(trial)
    return bool(record and record.get("weights"))


def _member(
    storage: Any, kept: Kept, raw: data_mod.RawData, m: Mapping[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """One ensemble member rebuilt from its kept weights, and what the file records of it."""
    study, spec = study_mod.load(storage, m["study"])
    study_mod.check_family(study, spec)
    trial = study.get_trials(deepcopy=False)[int(m["trial"])]
    weights = kept.weights(trial)
    if weights is None and _recorded_weights(trial):
        raise HpoError(
            f"trial {trial.number} of {m['study']!r}, an ensemble member, kept its weights, "
            f"but they are not in {kept.location}; point --artifacts (MNIST_HPO_ARTIFACTS) at "
            "the workers' store"
        )
    if weights is None:
        raise HpoError(
            f"trial {trial.number} of {m['study']!r}, an ensemble member, kept no weights (its "
            f"spec's keep_weights = {spec.keep_weights}); rerun `mnist-hpo ensemble` after "
            "raising the cap, or export single trials"
        )
    model = model_file.rebuild(spec, trial.params, torch.device("cpu"))
    model.load_state_dict(dict(weights))
    mean, std = data_mod.normalisation(
        raw, validation_size=spec.validation_size, train_size=spec.train_size
    )
    cfg = build_trial(spec, Fixed(trial.params), 0, torch.device("cpu")).cfg
    return model, {
        "study": m["study"],
        "trial": trial.number,
        "weight": float(m["weight"]),
        "family": spec.family,
        "family_origin": spec.family_def.origin.to_dict(),
        "params": dict(trial.params),
        "spec": spec.to_dict(),
        "normalisation": {"mean": mean, "std": std},
        "outputs": "logits" if cfg.loss == "cross_entropy" else "scores",
    }


def _pixels(
    raw: data_mod.RawData, validation_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validation and test images as pixels in [0, 1] (N, 1, 28, 28), with their labels."""
    n_fit = len(raw.train_images) - validation_size
    return (
        data_mod.pixels(raw.train_images[n_fit:]).unsqueeze(1),
        raw.train_labels[n_fit:],
        data_mod.pixels(raw.test_images).unsqueeze(1),
        raw.test_labels,
    )
