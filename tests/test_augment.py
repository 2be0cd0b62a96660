"""Augmentation of training batches: each transform does what it says, reproducibly."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mnist_hpo.ml.augment import Augment, Augmenter

CPU = torch.device("cpu")


def _digits(n: int = 16) -> torch.Tensor:
    """Standardised-looking images: background -0.42, a bright 8x8 square off centre."""
    x = torch.full((n, 1, 28, 28), -0.42)
    x[:, :, 9:17, 11:19] = 2.8
    return x + 0.01 * torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _centre(x: torch.Tensor) -> torch.Tensor:
    """(n, 2) centre of mass (row, column) of the bright part of each image."""
    w = (x[:, 0] - x.amin(dim=(1, 2, 3)).view(-1, 1, 1)).clamp(min=0)
    idx = torch.arange(28, dtype=torch.float32)
    total = w.sum(dim=(1, 2))
    return torch.stack(((w.sum(2) * idx).sum(1) / total, (w.sum(1) * idx).sum(1) / total), 1)


def test_off_is_off() -> None:
    assert not Augment().active
    assert Augment(shift=1).active and not Augment(shift=1).warps
    assert Augment(rotate=5).warps and Augment(elastic_alpha=34).warps


def test_shift_moves_each_image_by_whole_pixels_within_the_bound() -> None:
    x = _digits(64)
    out = Augmenter(Augment(shift=2), seed=0, device=CPU)(x)
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    seen = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 28, dx : dx + 28])
        ]
        assert matches, f"image {i} is not a whole-pixel shift of its input"
        seen.add(matches[0])
    assert len(seen) > 10  # 25 possible offsets, 64 images: the shifts really vary


@pytest.mark.parametrize(
    "spec",
    [Augment(translate=1e-9), Augment(rotate=1e-9, scale=1e-9, shear=1e-9)],
    ids=["translate", "rotate-scale-shear"],
)
def test_a_warp_of_almost_nothing_returns_the_image(spec: Augment) -> None:
    x = _digits()
    assert torch.allclose(Augmenter(spec, seed=0, device=CPU)(x), x, atol=1e-5)


def test_translation_moves_the_centre_of_mass_by_at_most_its_bound() -> None:
    x = _digits(256)
    out = Augmenter(Augment(translate=3.0), seed=0, device=CPU)(x)
    moved = _centre(out) - _centre(x)
    assert moved.abs().max() <= 3.05
    assert moved.abs().mean() > 1.0  # uniform in -3..3: mean |move| 1.5


def test_rotation_keeps_the_centre_and_changes_the_shape() -> None:
    x = torch.full((128, 1, 28, 28), -0.42)
    x[:, :, 4:24, 13:15] = 2.8  # a vertical bar through the centre
    out = Augmenter(Augment(rotate=30.0), seed=0, device=CPU)(x)
    assert (_centre(out) - _centre(x)).abs().max() < 0.6
    # The bar's top end moves sideways by up to 10 px x sin(30 deg) = 5 px.
    cols = (out[:, 0, 5] > 1.0).float().argmax(1).float()  # first bright column in row 5
    assert cols.std() > 1.0


def test_elastic_displacement_has_simards_magnitude() -> None:
    aug = Augmenter(Augment(elastic_alpha=34.0, elastic_sigma=4.0), seed=0, device=CPU)
    field = aug._elastic(64, 28, 28) * 28 / 2  # back to pixels
    # Uniform(-1, 1) noise smoothed by a unit-sum Gaussian of sigma 4 has std ~0.04; x 34.
    assert 0.5 < float(field.abs().mean()) < 3.0
    # Smooth: neighbouring pixels move almost alike.
    assert float((field[:, 1:] - field[:, :-1]).abs().mean()) < 0.3 * float(field.abs().mean())


def test_same_seed_same_batches_and_the_state_restores_the_stream() -> None:
    spec = Augment(rotate=12.0, scale=0.1, shear=5.0, translate=2.0, elastic_alpha=20.0)
    x = _digits()
    a, b = Augmenter(spec, seed=3, device=CPU), Augmenter(spec, seed=3, device=CPU)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), Augmenter(spec, seed=4, device=CPU)(x))
    state = a.get_state()
    first = a(x)
    a.set_state(state)
    assert torch.equal(a(x), first)


@pytest.mark.parametrize("spec", [Augment(shift=2), Augment(rotate=10.0, elastic_alpha=34.0)])
def test_the_input_batch_is_never_written(spec: Augment) -> None:
    x = _digits()
    before = x.clone()
    out = Augmenter(spec, seed=0, device=CPU)(x)
    assert torch.equal(x, before)
    assert out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize(
    "spec", [Augment(shift=-1), Augment(rotate=-1.0), Augment(scale=1.0), Augment(elastic_sigma=0)]
)
def test_bad_magnitudes_are_refused(spec: Augment) -> None:
    with pytest.raises(ValueError):
        Augmenter(spec, seed=0, device=CPU)


def test_rotation_bounds_are_degrees() -> None:
    # +-10 degrees tilts a 20-pixel vertical bar's ends by at most 10 x sin(10 deg) = 1.7 px;
    # read as radians, most bars would end up far off vertical.
    x = torch.full((256, 1, 28, 28), -0.42)
    x[:, :, 4:24, 13:15] = 2.8
    out = Augmenter(Augment(rotate=10.0), seed=0, device=CPU)(x)
    for row in (6, 21):
        bright = out[:, 0, row] > 1.0
        assert bright.any(1).all()  # every bar still crosses this row
        cols = torch.arange(28).expand(256, 28)[bright].float()
        assert (cols - 13.5).abs().max() <= 1.7 + 1.5  # + half the bar's width and blur
