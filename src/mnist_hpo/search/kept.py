"""What a study keeps of each finished trial: final weights and class probabilities.

When a trial completes or is pruned, its worker writes three artifacts into the study's artifact
store (the checkpoints' store, resilience/artifacts.py: each write atomic) with Optuna's
`upload_artifact`, so optuna-dashboard lists them on the trial's page:

- `trial<N>-weights.safetensors`: the final state_dict (`export-best` copies it, no retrain);
- `trial<N>-val-probs.npy`, `trial<N>-test-probs.npy`: float16 class probabilities on the
  validation and the test split (10,000 x 10: 200 KB each), for `mnist-hpo ensemble`.

The trial's `kept` user attr names the three artifact ids and their sizes. A retried trial keeps
one set: a retry inherits its predecessor's user attrs, so an attempt that uploaded and then
died before its result was stored is found there, and its set removed, when the retry keeps its
own. A spec's `keep_weights = K` keeps weights only for the best K trials by validation
accuracy; the probabilities are always kept. Loading never unpickles (safetensors, and
np.load(allow_pickle=False)).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from mnist_hpo.resilience.artifacts import ArtifactStore

if TYPE_CHECKING:
    import torch

ATTR = "kept"  # trial user attr: {"weights": {"id", "bytes"} | None, "val_probs": ..., ...}
ENSEMBLE_ATTR = "ensemble"  # study user attr (the first study): what `ensemble` chose
PARTS = ("weights", "val_probs", "test_probs")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Outcome:
    """What one finished trial keeps: its weights' bytes (None: over the keep_weights cap) and
    its probabilities, with the validation accuracy they rank by."""

    weights: bytes | None
    val_probs: np.ndarray
    test_probs: np.ndarray
    val_accuracy: float
    outputs: str  # 'logits' or 'scores': how the model's outputs became probabilities


def weights_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save  # here: reading a study needs no torch

    return save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def of(trial: FrozenTrial) -> dict[str, Any] | None:
    """The trial's kept set as recorded, or None (nothing kept, or not finished)."""
    raw = trial.user_attrs.get(ATTR)
    return raw if isinstance(raw, dict) and raw.get("val_probs") else None


def wants_weights(trials: list[FrozenTrial], val_accuracy: float, cap: int) -> bool:
    """Whether a trial of this validation accuracy is among the best `cap` (0: no cap)."""
    if cap <= 0:
        return True
    better = sum(
        1 for t in trials if (k := of(t)) and k.get("weights") and k["val_accuracy"] > val_accuracy
    )
    return better < cap


@dataclass(frozen=True)
class Kept:
    """Write, read and remove kept sets in `store` (at `location`, for messages)."""

    store: ArtifactStore
    location: str

    def write(self, trial: optuna.Trial, outcome: Outcome) -> dict[str, Any]:
        """Upload the trial's set and record it on the trial; removes an inherited set first
        (an earlier attempt of its retry chain that died after uploading)."""
        inherited = trial.user_attrs.get(ATTR)
        if isinstance(inherited, dict):
            self.remove_set(inherited)
        bodies = {
            "weights": outcome.weights,
            "val_probs": npy_bytes(outcome.val_probs),
            "test_probs": npy_bytes(outcome.test_probs),
        }
        names = {
            "weights": f"trial{trial.number}-weights.safetensors",
            "val_probs": f"trial{trial.number}-val-probs.npy",
            "test_probs": f"trial{trial.number}-test-probs.npy",
        }
        record: dict[str, Any] = {"val_accuracy": outcome.val_accuracy, "outputs": outcome.outputs}
        with tempfile.TemporaryDirectory(prefix="mnist-hpo-kept-") as tmp:
            for part, body in bodies.items():
                record[part] = None if body is None else self._upload(trial, tmp, names[part], body)
        trial.set_user_attr(ATTR, record)
        return record

    def _upload(self, trial: optuna.Trial, tmp: str, name: str, body: bytes) -> dict[str, Any]:
        path = Path(tmp) / name
        path.write_bytes(body)
        artifact_id = optuna.artifacts.upload_artifact(
            artifact_store=self.store, file_path=str(path), study_or_trial=trial
        )
        return {"id": artifact_id, "bytes": len(body)}

    def _read(self, artifact_id: str) -> bytes:
        with self.store.open_reader(artifact_id) as f:
            return f.read()

    def probabilities(self, trial: FrozenTrial, split: str) -> np.ndarray:
        """The trial's kept probabilities on 'val' or 'test'. Raises LookupError if missing."""
        record = of(trial)
        if record is None or not record.get(f"{split}_probs"):
            raise LookupError(f"trial {trial.number} kept no {split} probabilities")
        artifact_id = record[f"{split}_probs"]["id"]
        try:
            body = self._read(artifact_id)
        except ArtifactNotFound:
            raise LookupError(
                f"trial {trial.number}'s {split} probabilities ({artifact_id}) are not in "
                f"{self.location}"
            ) from None
        return np.asarray(np.load(io.BytesIO(body), allow_pickle=False))

    def weights(self, trial: FrozenTrial) -> dict[str, torch.Tensor] | None:
        """The trial's kept final weights, or None (none kept, or removed by the cap)."""
        from safetensors.torch import load

        record = of(trial)
        if record is None or not record.get("weights"):
            return None
        try:
            return load(self._read(record["weights"]["id"]))
        except ArtifactNotFound:
            return None

    def remove_set(self, record: dict[str, Any], parts: tuple[str, ...] = PARTS) -> int:
        """Delete a recorded set's artifacts (missing ones are fine); how many there were."""
        removed = 0
        for part in parts:
            item = record.get(part)
            if isinstance(item, dict) and item.get("id"):
                with contextlib.suppress(ArtifactNotFound):
                    self.store.remove(str(item["id"]))
                    removed += 1
        return removed

    def drop_weights_beyond(self, records: list[dict[str, Any]], cap: int) -> int:
        """Keep weights for the best `cap` trials only: remove the weights of the one each new
        entry pushed out (a trial's attrs cannot change once it finished, so a reader finds its
        weights gone and retrains). Workers finishing at the same moment may leave one extra."""
        if cap <= 0:
            return 0
        ranked = sorted(
            (k for k in records if k.get("weights")), key=lambda k: -float(k["val_accuracy"])
        )
        return sum(self.remove_set(k, ("weights",)) for k in ranked[cap:])

    def remove_trials(self, trials: list[FrozenTrial]) -> int:
        """Delete every set these trials recorded (delete-study); how many files there were."""
        return sum(self.remove_set(k) for t in trials if (k := of(t)) is not None)


def recorded_ensemble(study: optuna.Study) -> dict[str, Any] | None:
    """The ensemble `mnist-hpo ensemble` recorded on this study, if any."""
    value = study.user_attrs.get(ENSEMBLE_ATTR)
    return value if isinstance(value, dict) else None


def member_studies(recorded: dict[str, Any]) -> set[str]:
    """The studies whose trials a recorded ensemble has as members."""
    return {str(m["study"]) for m in recorded["members"]}


def ensembles_using(storage: BaseStorage, name: str) -> list[str]:
    """The other studies whose recorded ensemble has members from study `name` (after it is
    deleted, those ensembles can no longer be exported)."""
    return sorted(
        s.study_name
        for s in storage.get_all_studies()
        if s.study_name != name
        and isinstance(e := s.user_attrs.get(ENSEMBLE_ATTR), dict)
        and name in member_studies(e)
    )


def deleted_members(
    recorded: dict[str, Any], own: str, storage: Callable[[], BaseStorage]
) -> list[str]:
    """The studies a recorded ensemble (on study `own`) has members from that the storage no
    longer holds; `storage()` is opened only when members come from other studies."""
    others = member_studies(recorded) - {own}
    if not others:
        return []
    return sorted(others - {s.study_name for s in storage().get_all_studies()})


def status_line(study: optuna.Study, storage: Callable[[], BaseStorage]) -> str | None:
    """`status`'s line about the study's ensemble, or None; it says when members came from a
    study deleted since."""
    e = recorded_ensemble(study)
    if e is None:
        return None
    single = (e.get("best_single") or {}).get("test_accuracy")
    n, of = len(e["members"]), ", ".join(e["studies"])
    line = (
        f"ensemble: {n} trial{'' if n == 1 else 's'} of {of} (size {e['size']}), "
        f"validation {100 * e['val_accuracy']:.2f}%, test {100 * e['test_accuracy']:.2f}% "
        f"(best single trial's test {'-' if single is None else f'{100 * single:.2f}%'})"
    )
    if gone := deleted_members(e, study.study_name, storage):
        line += (
            f"; members from {', '.join(gone)} are deleted: run `mnist-hpo ensemble "
            f"{study.study_name}` again"
        )
    return line
