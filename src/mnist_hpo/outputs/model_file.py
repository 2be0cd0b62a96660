"""The model file `export-best` writes and `predict` reads: safetensors tensors + a JSON header.

Raw tensors and a JSON header, no pickle, so loading a file from someone else cannot run code.
The header's `mnist_hpo` entry holds the family and where its code came from (a plugin's package
and version, so `predict` elsewhere can say what to install), the trial's parameters and the
study spec (the architecture is rebuilt from them by build.build_trial, the code the workers
ran), the
normalisation the model expects (mean and std of the study's training split) and the
accuracies. This module imports neither Optuna nor SQLAlchemy: `predict` starts fast.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.families.registry import UnknownFamily
from mnist_hpo.ml.predictions import to_probabilities
from mnist_hpo.ml.space import Fixed
from mnist_hpo.search import family_origin
from mnist_hpo.search.build import build_trial
from mnist_hpo.search.spec import StudySpec

FORMAT = "mnist-hpo-model"
FORMAT_VERSION = 1
HEADER_KEY = "mnist_hpo"  # the safetensors metadata entry holding our JSON
REASON_CHARS = 200  # of a loading error's text in the one-line message


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


def save(path: Path, model: nn.Module, meta: Mapping[str, Any]) -> None:
    """Write the model's state_dict as plain tensors and `meta` as JSON in the header."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={HEADER_KEY: json.dumps(dict(meta))})
    except OSError as e:
        raise HpoError(f"cannot write {path} ({e}); pick a writable --output path") from None


class Ensemble(nn.Module):
    """Members averaged on probabilities with their weights; takes pixels in [0, 1] (N, 1, 28,
    28) because each member applies its own study's normalisation, and returns the log of the
    weighted mean probabilities (so softmax gives them back: `outputs` is 'logits')."""

    def __init__(self, members: list[nn.Module], info: Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weights = [float(i["weight"]) for i in info]
        self.norms = [
            (float(i["normalisation"]["mean"]), float(i["normalisation"]["std"])) for i in info
        ]
        self.kinds = [str(i["outputs"]) for i in info]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = zip(self.members, self.weights, self.norms, self.kinds, strict=True)
        total = torch.zeros(())
        for m, w, (mean, std), kind in parts:
            total = total + w * to_probabilities(m((x - mean) / std), kind)
        return torch.log(total.clamp_min(1e-12) / sum(self.weights))


def rebuild(spec: StudySpec, params: Mapping[str, Any], device: torch.device) -> nn.Module:
    """A trial's architecture from its recorded parameters (untrained)."""
    return build_trial(spec, Fixed(params), seed=0, device=device).model


def load_model(path: Path) -> LoadedModel:
    """Rebuild an exported model on CPU; anything that is not a valid export is a UsageError."""
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist; give the path export-best wrote")
    meta, tensors = _read(path)
    try:
        if meta.get("kind") == "ensemble":
            model: nn.Module = Ensemble(
                [_member(path, m) for m in meta["members"]], meta["members"]
            )
        else:
            model = _member(path, meta)
        model.load_state_dict(tensors, strict=True)
        for key in ("mean", "std"):
            float(meta["normalisation"][key])
        if meta["outputs"] not in ("logits", "scores"):
            raise ValueError(f"unknown outputs {meta['outputs']!r}")
    except UnknownFamily as e:  # its plugin is not installed here: say which to install
        where, origin = f"model file {path}", family_origin.recorded(meta)
        raise family_origin.missing(where, e.name, origin) from None
    except (KeyError, TypeError, ValueError, RuntimeError, UsageError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise _invalid(path, f"{type(e).__name__}: {reason[:REASON_CHARS]}") from None
    model.eval()
    return LoadedModel(model, meta)


def _member(path: Path, meta: Mapping[str, Any]) -> nn.Module:
    """One model's architecture, from the spec and params a file records for it."""
    spec = StudySpec.from_dict(meta["spec"], source=f"the spec stored in {path}")
    family_origin.check(f"model file {path}", spec.family_def, family_origin.recorded(meta))
    return rebuild(spec, meta["params"], torch.device("cpu"))


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(HEADER_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as e:
        raise _invalid(path, f"not a safetensors file: {str(e).splitlines()[0]}") from None
    if header is None:
        raise _invalid(path, "a safetensors file without mnist-hpo metadata")
    try:
        meta = json.loads(header)
    except json.JSONDecodeError:
        raise _invalid(path, "its metadata is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _invalid(path, "its metadata does not say format mnist-hpo-model")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _invalid(
            path,
            f"format version {meta.get('format_version')!r}; this mnist-hpo reads version "
            f"{FORMAT_VERSION}",
        )
    return meta, tensors


def _invalid(path: Path, why: str) -> UsageError:
    return UsageError(
        f"{path} is not a valid mnist-hpo model export ({why}); make one with "
        "`mnist-hpo export-best STUDY`"
    )
