"""Class probabilities of a trained model on a split, as the small float16 arrays a study keeps.

A trial's probabilities on the validation and the test split are what ensemble selection
combines (outputs/selection.py); float16 keeps 10,000 x 10 at 200 KB a split, and its 3
significant digits are far finer than the 1/10,000 steps of an accuracy on 10,000 images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mnist_hpo.ml.train import CPU_EVAL_BATCH, EVAL_BATCH


def to_probabilities(out: torch.Tensor, outputs: str) -> torch.Tensor:
    """Probabilities from a model's raw outputs: 'logits' (cross-entropy) or 'scores' (MSE)."""
    if outputs == "logits":
        return F.softmax(out.float(), dim=1)
    # MSE onto one-hot targets estimates each class's probability directly (the squared-error
    # minimiser is the conditional mean of the one-hot vector); clip and renormalise.
    probs = out.float().clamp(0, 1)
    return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)


@torch.inference_mode()
def probabilities(model: nn.Module, x: torch.Tensor, outputs: str) -> np.ndarray:
    """(N, classes) float16 probabilities of `model` on `x`, evaluated as accuracy() does."""
    was_training = model.training
    model.eval()
    step = CPU_EVAL_BATCH if x.device.type == "cpu" else EVAL_BATCH
    parts = [to_probabilities(model(x[i : i + step]), outputs) for i in range(0, len(x), step)]
    model.train(was_training)
    return torch.cat(parts).to(torch.float16).cpu().numpy()
