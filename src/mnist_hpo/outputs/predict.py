"""Classify digits with an exported model: 28x28 PNGs (any image Pillow reads) or IDX files.

Input rules, chosen so a prediction is never made on something the model was not trained for:
- Colour or palette images are converted to 8-bit grayscale (Pillow's ITU-R 601 luma); an
  alpha channel is dropped.
- Any size other than 28x28 is refused: MNIST digits are size-normalised into a 20x20 box and
  centred by mass in 28x28, and a plain resize of another picture is not that, so the model's
  answer would be confident and meaningless.
- MNIST is white on black. An image whose border is mostly bright (mean above 128) is flagged
  as probably dark-on-light; `invert=True` flips it.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from mnist_hpo.errors import UsageError
from mnist_hpo.ml import data as data_mod
from mnist_hpo.ml.predictions import to_probabilities
from mnist_hpo.ml.train import EVAL_BATCH
from mnist_hpo.outputs.model_file import LoadedModel

SIDE = 28
BORDER = 2  # pixels of the frame judged for polarity: MNIST keeps them (almost) all black
BRIGHT_BORDER = 128  # mean border brightness above this means dark digit on light background


@dataclass(frozen=True)
class Prediction:
    name: str  # file name, with [index] for images from an IDX file
    digit: int
    confidence: float  # probability of `digit`, in [0, 1]
    looks_inverted: bool  # bright border: probably a dark digit on a light background


def read_images(path: Path) -> tuple[torch.Tensor, list[str]]:
    """(N, 28, 28) uint8 images and a name for each, from an image file or an IDX file."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise UsageError(
            f"cannot read {path} ({e.strerror}); give an existing image file"
        ) from None
    if head[:2] == b"\x1f\x8b" or head[:3] == b"\x00\x00\x08":
        return _read_idx(path)
    try:
        with Image.open(path) as img:
            gray = img.convert("L")
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(
            f"{path} is neither an image Pillow can read nor an IDX file ({e}); give 28x28 PNGs"
        ) from None
    if gray.size != (SIDE, SIDE):
        w, h = gray.size
        raise UsageError(
            f"{path} is {w}x{h}; the model takes 28x28 MNIST-style digits (white on black, "
            "centred in the middle 20x20), so crop or scale it to 28x28 first"
        )
    pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8)
    return pixels.reshape(1, SIDE, SIDE), [path.name]


def _read_idx(path: Path) -> tuple[torch.Tensor, list[str]]:
    try:
        content = path.read_bytes()
        if content[:2] == b"\x1f\x8b":
            content = gzip.decompress(content)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UsageError(f"cannot read {path} ({e}); give an IDX image file or PNGs") from None
    images = data_mod.parse_idx(content, str(path))  # HpoError if malformed
    if images.dim() != 3 or tuple(images.shape[1:]) != (SIDE, SIDE):
        raise UsageError(
            f"{path} holds {tuple(images.shape)} values, not 28x28 images; give an IDX image file "
            "like t10k-images-idx3-ubyte"
        )
    return images, [f"{path.name}[{i}]" for i in range(len(images))]


def classify(
    loaded: LoadedModel, images: torch.Tensor, names: list[str], *, invert: bool = False
) -> list[Prediction]:
    """Predict a digit and its probability for each (N, 28, 28) uint8 image."""
    if invert:
        images = 255 - images
    frame = torch.ones(SIDE, SIDE, dtype=torch.bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    bright = images[:, frame].float().mean(dim=1) > BRIGHT_BORDER
    # The same scaling as training: pixels in [0, 1], then the training split's mean and std.
    x = ((data_mod.pixels(images) - loaded.mean) / loaded.std).unsqueeze(1)
    with torch.inference_mode():
        out = torch.cat([loaded.model(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    probs = to_probabilities(out, loaded.outputs)  # softmax, or MSE scores clipped: see there
    digit = out.argmax(dim=1)
    conf = probs.gather(1, digit.unsqueeze(1)).squeeze(1)
    return [
        Prediction(name, int(d), float(c), bool(b))
        for name, d, c, b in zip(names, digit, conf, bright, strict=True)
    ]
