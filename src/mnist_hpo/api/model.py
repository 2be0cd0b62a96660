"""An exported model from Python: `mnist_hpo.load_model(path)`, then `.predict(...)`.

Reads what `export-best` (one trial) or `export-best --ensemble` (every member with its weight)
wrote, without Optuna or a storage: a model file is all it needs, as for `mnist-hpo predict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mnist_hpo.outputs.model_file import LoadedModel
    from mnist_hpo.outputs.predict import Prediction


@dataclass(frozen=True)
class Model:
    """A loaded model file: `meta` is its header (family, params, accuracies; an ensemble's
    members and weights), `predict` classifies digits."""

    path: Path
    loaded: LoadedModel

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.loaded.meta)

    @property
    def is_ensemble(self) -> bool:
        return self.loaded.meta.get("kind") == "ensemble"

    @property
    def members(self) -> int:
        """How many trials vote: 1 for a single model."""
        return len(self.loaded.meta["members"]) if self.is_ensemble else 1

    def predict(
        self,
        images: str | Path | Sequence[str | Path] | np.ndarray | torch.Tensor,
        *,
        invert: bool = False,
        names: Sequence[str] | None = None,
    ) -> list[Prediction]:
        """A Prediction (name, digit, confidence, looks_inverted) per image: `images` is a
        28x28 image file, an MNIST IDX file, a list of those, or a (N, 28, 28) uint8 array
        (named `names`, else by index)."""
        import torch

        from mnist_hpo.outputs import predict as predict_mod

        if isinstance(images, str | Path):
            images = [images]
        if isinstance(images, Sequence):
            read = [predict_mod.read_images(Path(p)) for p in images]
            pixels = torch.cat([r[0] for r in read]) if read else torch.zeros(0, 28, 28)
            names = [n for r in read for n in r[1]]
        else:
            pixels = torch.as_tensor(images, dtype=torch.uint8)
            names = list(names) if names is not None else [f"[{i}]" for i in range(len(pixels))]
        if pixels.ndim != 3 or tuple(pixels.shape[1:]) != (28, 28):
            from mnist_hpo.errors import UsageError

            raise UsageError(
                f"images of shape {tuple(pixels.shape)}: give (N, 28, 28) uint8 digits, white "
                "on black, as MNIST's"
            )
        return predict_mod.classify(self.loaded, pixels, list(names), invert=invert)


def load_model(path: str | Path) -> Model:
    """A model file written by `export-best` (or `Study.export_best`), one trial or an
    ensemble; UsageError, in one sentence, for anything else."""
    from mnist_hpo.outputs.model_file import load_model as read

    return Model(Path(path), read(Path(path)))
