"""Best-model export: a trial's weights plus everything needed to use them, in one safetensors file.

The file is a safetensors archive: raw tensors and a JSON header, no pickle, so loading a file
from someone else cannot run code. The header's `mnist_hpo` entry (JSON) holds the family, the
trial's parameters and the study spec (the architecture is rebuilt from them by the same
family code the workers ran), the normalisation the model expects (mean and std of the study's
training split), and the accuracies measured on the exported weights beside the recorded ones.

Weights come from a saved final checkpoint when the caller has one, else from retraining the
trial: its recorded parameters and seed with the same code path as the objective. On CPU that
reproduces the trial's weights exactly (tests/test_train.py: a resumed run equals a straight
one); another device or thread count may round differently, so both accuracies are recorded.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FixedTrial, FrozenTrial, TrialState
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mnist_hpo import __version__
from mnist_hpo import data as data_mod
from mnist_hpo import storage as storage_mod
from mnist_hpo import study as study_mod
from mnist_hpo.data import Data
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.hyperparams import sample_training
from mnist_hpo.objective import versions
from mnist_hpo.space import Hyper
from mnist_hpo.spec import StudySpec
from mnist_hpo.train import EpochEnd, TrainConfig, accuracy, prepare, train
from mnist_hpo.worker import resolve_device

FORMAT = "mnist-hpo-model"
FORMAT_VERSION = 1
HEADER_KEY = "mnist_hpo"  # the safetensors metadata entry holding our JSON

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


@dataclass(frozen=True)
class LoadedModel:
    """An exported model, rebuilt and ready for inference on CPU."""

    model: nn.Module
    meta: dict[str, Any]

    @property
    def mean(self) -> float:
        return float(self.meta["normalisation"]["mean"])

    @property
    def std(self) -> float:
        return float(self.meta["normalisation"]["std"])

    @property
    def outputs(self) -> str:
        """'logits' (cross-entropy training) or 'scores' (MSE regression onto one-hot targets)."""
        return str(self.meta["outputs"])


def configs(spec: StudySpec, params: Mapping[str, Any], seed: int) -> tuple[Any, TrainConfig]:
    """A trial's architecture config and training config, rebuilt from its recorded params.

    The same calls, in the same order, as objective.Objective, through a FixedTrial: one source
    of truth for how params become a model.
    """
    with warnings.catch_warnings():
        # FixedTrial warns about values outside the family's *default* range; a spec may widen it.
        warnings.simplefilter("ignore", UserWarning)
        hp = Hyper(FixedTrial(dict(params)), spec.overrides)
        arch = spec.family_def.sample(hp)
        cfg = sample_training(hp, epochs=spec.epochs, seed=seed)
    return arch, cfg


def retrain(
    spec: StudySpec, trial: FrozenTrial, split: Data, message: Message = _ignore
) -> nn.Module:
    """Train the trial again from its recorded params and seed; returns the trained model."""
    seed = int(trial.user_attrs.get("seed", spec.seed + trial.number))
    arch, cfg = configs(spec, trial.params, seed)
    torch.manual_seed(seed)  # as the objective does, right before building the model
    model = prepare(spec.family_def.build(arch), split.device)

    def progress(e: EpochEnd) -> None:
        message(
            f"retraining trial {trial.number}: epoch {e.epoch}/{cfg.epochs}, "
            f"validation {100 * e.val_accuracy:.2f}%"
        )

    # Older trials recorded no precision: they trained in fp32.
    train(model, cfg, split, progress, precision=str(trial.user_attrs.get("precision", "fp32")))
    return model


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
    download: bool = True,
    device: str | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
    message: Message = _ignore,
) -> Exported:
    """Export the study's best trial (or `trial_number`) to `out`.

    `weights` is the trial's final state_dict when a checkpoint of it exists; without it the
    trial is retrained. `device` defaults to the device the trial recorded (the faithful
    reproduction); the data must be the data the study ran on.
    """
    study, spec = study_mod.load(storage_mod.open_storage(storage_url, must_exist=True), study_name)
    trial = pick_trial(study, trial_number)
    recorded_data = study.user_attrs.get(study_mod.DATA_ATTR) or {}
    raw = data_mod.load(spec.dataset, data_dir, download=download, message=message)
    if recorded_data.get("fingerprint") not in (None, raw.fingerprint):
        raise HpoError(
            f"study {study_name!r} ran on other data ({recorded_data.get('source')}) than found "
            f"here ({raw.source}); point MNIST_HPO_DATA at the same files"
        )
    run_on = resolve_device(device or str(trial.user_attrs.get("device", "cpu")).split(":")[0])
    split = data_mod.split(
        raw, validation_size=spec.validation_size, train_size=spec.train_size, device=run_on
    )
    if weights is None:
        source = f"retrained on {run_on} from the trial's recorded params and seed"
        model = retrain(spec, trial, split, message)
    else:
        source = "the trial's final checkpoint"
        arch, _ = configs(spec, trial.params, int(trial.user_attrs.get("seed", 0)))
        model = prepare(spec.family_def.build(arch), run_on)
        model.load_state_dict(dict(weights))
    mean, std = data_mod.normalisation(
        raw, validation_size=spec.validation_size, train_size=spec.train_size
    )
    _, cfg = configs(spec, trial.params, 0)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": spec.family,
        "params": dict(trial.params),
        "spec": spec.to_dict(),
        "normalisation": {"mean": mean, "std": std},
        "input": "28x28 grayscale, white digit on black; pixels/255, then (x - mean) / std",
        "outputs": "logits" if cfg.loss == "cross_entropy" else "scores",
        "study": study_name,
        "trial": trial.number,
        "seed": trial.user_attrs.get("seed"),
        "weights_from": source,
        "validation_accuracy": accuracy(model, split.val_x, split.val_y),
        "test_accuracy": accuracy(model, split.test_x, split.test_y),
        "recorded": {
            "validation_accuracy": trial.value,
            "test_accuracy": trial.user_attrs.get("test_accuracy"),
            "device": trial.user_attrs.get("device"),
            "precision": trial.user_attrs.get("precision", "fp32"),
            "versions": trial.user_attrs.get("versions"),
        },
        "n_params": sum(p.numel() for p in model.parameters()),
        "data": {"fingerprint": raw.fingerprint, "source": raw.source},
        "exported_by": f"mnist-hpo {__version__}",
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    save(out, model, meta)
    return Exported(out, meta)


def save(path: Path, model: nn.Module, meta: Mapping[str, Any]) -> None:
    """Write the model's state_dict as plain tensors and `meta` as JSON in the header."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={HEADER_KEY: json.dumps(dict(meta))})
    except OSError as e:
        raise HpoError(f"cannot write {path} ({e}); pick a writable --output path") from None


def load_model(path: Path) -> LoadedModel:
    """Rebuild an exported model on CPU; anything that is not a valid export is a UsageError."""

    def invalid(why: str) -> UsageError:
        return UsageError(
            f"{path} is not a valid mnist-hpo model export ({why}); make one with "
            "`mnist-hpo export-best STUDY`"
        )

    if not path.is_file():
        raise UsageError(f"model file {path} does not exist; give the path export-best wrote")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(HEADER_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as e:
        raise invalid(f"not a safetensors file: {str(e).splitlines()[0]}") from None
    if header is None:
        raise invalid("a safetensors file without mnist-hpo metadata")
    try:
        meta = json.loads(header)
    except json.JSONDecodeError:
        raise invalid("its metadata is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise invalid("its metadata does not say format mnist-hpo-model")
    if meta.get("format_version") != FORMAT_VERSION:
        raise invalid(
            f"format version {meta.get('format_version')!r}; this mnist-hpo reads "
            f"version {FORMAT_VERSION}"
        )
    try:
        spec = StudySpec.from_dict(meta["spec"], source=f"the spec stored in {path}")
        arch, _ = configs(spec, meta["params"], 0)
        model = spec.family_def.build(arch)
        model.load_state_dict(tensors, strict=True)
        for key in ("mean", "std"):
            float(meta["normalisation"][key])
        if meta["outputs"] not in ("logits", "scores"):
            raise ValueError(f"unknown outputs {meta['outputs']!r}")
    except (KeyError, TypeError, ValueError, RuntimeError, UsageError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise invalid(f"{type(e).__name__}: {reason[:200]}") from None
    model.eval()
    return LoadedModel(model, meta)
