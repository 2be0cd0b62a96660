"""Training-split augmentation: random shifts, affine warps and elastic distortion per batch.

Every transform works on a whole batch at once on the batch's device, drawing from its own
generator (part of a trainer checkpoint, so a resumed run augments exactly as an uninterrupted
one). The trainer applies it to the freshly gathered training batch only; validation and test
images never pass through here.

Cost per 50,000 images on one thread of the 2-core AMD EPYC (benchmarks/augmentation.py has the
epoch figures): integer shifts by one gather 0.10 s; an affine warp (one affine_grid + one
bilinear grid_sample) 0.40 s; elastic distortion adds 0.1 s for a Gaussian-smoothed random
displacement field (two small matmuls per batch).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from mnist_hpo.ml.config import AUGMENTS as AUGMENTS
from mnist_hpo.ml.config import NO_AUGMENT as NO_AUGMENT
from mnist_hpo.ml.config import Augment as Augment

# Offset of the augmentation generator's seed from the trial seed, so its stream never repeats
# the batch-order generator's (which is seeded with the trial seed itself).
SEED_OFFSET = 0x5EED_A06


class Augmenter:
    """Applies an Augment to batches (N, 1, H, W), drawing from a private generator."""

    def __init__(self, spec: Augment, seed: int, device: torch.device) -> None:
        if spec.shift < 0 or min(spec.rotate, spec.scale, spec.shear, spec.translate) < 0:
            raise ValueError(f"augmentation magnitudes must be >= 0, got {spec}")
        if spec.scale >= 1 or spec.elastic_alpha < 0 or spec.elastic_sigma <= 0:
            raise ValueError(f"scale must be < 1, elastic_alpha >= 0 and sigma > 0: {spec}")
        self.spec = spec
        self.device = device
        self.gen = torch.Generator(device=device).manual_seed(seed + SEED_OFFSET)
        self._blur: dict[int, torch.Tensor] = {}  # image side -> its Gaussian blur matrix

    def get_state(self) -> torch.Tensor:
        return self.gen.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.gen.set_state(state)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A new, transformed batch; `x` itself is never written to."""
        if self.spec.warps:
            # A whole-pixel shift on top of a warp is one more translation: fold it in.
            return self._warp(x)
        if self.spec.shift > 0:
            return self._shift(x)
        return x

    def _uniform(self, *shape: int, bound: float) -> torch.Tensor:
        """Uniform in -bound..bound, drawn from the private generator on the batch's device."""
        u = torch.rand(*shape, generator=self.gen, device=self.device)
        return (2 * u - 1) * bound

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.spec.shift
        # Edge replication: MNIST's border pixels are background, and after standardisation
        # background is not 0, so zero padding would draw grey bars.
        padded = F.pad(x, (s, s, s, s), mode="replicate").reshape(n, c, -1)
        wp = w + 2 * s
        offsets = torch.randint(0, 2 * s + 1, (n, 2), generator=self.gen, device=self.device)
        rows = torch.arange(h, device=x.device).view(h, 1) * wp
        base = (rows + torch.arange(w, device=x.device).view(1, w)).view(1, -1)
        index = base + offsets[:, :1] * wp + offsets[:, 1:]  # (n, h*w) source pixel per target
        return padded.gather(2, index.unsqueeze(1).expand(n, c, -1)).view(n, c, h, w)

    def _warp(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        spec = self.spec
        angle = self._uniform(n, bound=math.radians(spec.rotate))
        zoom = 1 + self._uniform(n, bound=spec.scale)
        shear = torch.tan(self._uniform(n, bound=math.radians(spec.shear)))
        # Translation in affine_grid's coordinates, where the image spans -1..1 (2/w per pixel).
        move = self._uniform(n, 2, bound=spec.translate + spec.shift) * 2 / max(h, w)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # theta maps each output pixel to where it samples the input: rotation x zoom x shear.
        theta = torch.stack(
            (
                torch.stack((cos, cos * shear - sin, move[:, 0]), 1),
                torch.stack((sin, sin * shear + cos, move[:, 1]), 1),
            ),
            1,
        )
        grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
        if spec.elastic_alpha > 0:
            grid = grid + self._elastic(n, h, w)
        # "border" repeats the edge pixels (background), like the shift's replication.
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _elastic(self, n: int, h: int, w: int) -> torch.Tensor:
        """Simard's displacement: uniform noise per pixel, Gaussian-smoothed, times alpha."""
        field = self._uniform(2 * n, h, w, bound=1.0)
        # The separable blur as two small matmuls: a 1x17 conv2d over 256 single-channel
        # 28x28 maps took 4 ms a batch on one thread, the matmuls 0.2 ms.
        field = self._blur_matrix(h).T @ field @ self._blur_matrix(w)
        # Pixels -> affine_grid units; (2n, h, w) -> (n, h, w, 2) with x first, as grid is.
        return field.view(n, 2, h, w).permute(0, 2, 3, 1) * (2 * self.spec.elastic_alpha / w)

    def _blur_matrix(self, size: int) -> torch.Tensor:
        """M with (rows @ M) = each row convolved with the Gaussian, edges reflected."""
        if size not in self._blur:
            k = _gaussian_kernel(self.spec.elastic_sigma, size, self.device)
            pad = len(k) // 2
            eye = F.pad(torch.eye(size, device=self.device).unsqueeze(1), (pad, pad), "reflect")
            self._blur[size] = F.conv1d(eye, k.view(1, 1, -1)).squeeze(1)
        return self._blur[size]


def _gaussian_kernel(sigma: float, size: int, device: torch.device) -> torch.Tensor:
    # Truncated at 2 sigma, and short enough for reflect padding of the image; sums to 1.
    radius = min(size - 1, max(1, math.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()
