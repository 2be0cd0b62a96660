"""Do shifted or turned views of each image (test-time augmentation) make the kept trials better
members, judged without the test split?

For every kept trial with weights, the validation probabilities are recomputed (one thread, as
the worker did: the first view reproduces the kept probabilities exactly, which is checked) on
the image and on copies shifted by `--shift` pixels up, down, left and right (5 views), or
turned by +-`--rotate` degrees (3 views), averaged. The shipped selection
(`selection.choose_size`, then `select`) then runs on one random half of validation and is
scored on the other half, both ways over `--splits` halvings, on three pools: the kept
(one-view) probabilities, the averaged views, and both as candidates; the best single trial
by the fitting half is scored the same way. Test images, labels and probabilities are never
read, so whether to adopt TTA can be decided from these figures alone.

    MNIST_HPO_STORAGE=sqlite:///runs.db MNIST_HPO_ARTIFACTS=art MNIST_HPO_DATA=/path/to/mnist \\
        .venv/bin/python benchmarks/ensemble_tta.py cnn [--shift 1 | --rotate 6] [--splits 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

from common import kept_pool, machine
from ensemble_holdout import BEST_SINGLE, SHIPPED, held_out
from mnist_hpo.ml import data as data_mod
from mnist_hpo.ml.predictions import probabilities
from mnist_hpo.outputs import model_file, selection
from mnist_hpo.search import kept as kept_mod
from mnist_hpo.search import study as study_mod


def shifted(x: torch.Tensor, dy: int, dx: int, background: float) -> torch.Tensor:
    """`x` (N, 1, 28, 28) moved by (dy, dx) pixels, the uncovered border set to background."""
    p = max(abs(dy), abs(dx))
    padded = F.pad(x, (p, p, p, p), value=background)
    h, w = x.shape[-2:]
    return padded[..., p - dy : p - dy + h, p - dx : p - dx + w]


def rotated(x: torch.Tensor, degrees: float, background: float) -> torch.Tensor:
    """`x` turned by `degrees` about its centre (bilinear), the corners set to background."""
    a = torch.tensor(degrees * np.pi / 180)
    theta = torch.tensor([[torch.cos(a), -torch.sin(a), 0.0], [torch.sin(a), torch.cos(a), 0.0]])
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    turned = F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros")
    return turned + background


def views(x: torch.Tensor, shift: int, rotate: float, background: float) -> list[torch.Tensor]:
    """The image first, then 4 shifted copies, or 2 turned ones with --rotate."""
    if rotate:
        return [x, rotated(x, rotate, background), rotated(x, -rotate, background)]
    moves = [(0, 0), (shift, 0), (-shift, 0), (0, shift), (0, -shift)]
    return [shifted(x, dy, dx, background) for dy, dx in moves]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+")
    parser.add_argument("--shift", type=int, default=1, help="pixels each shifted view moves")
    parser.add_argument("--rotate", type=float, default=0.0, help="degrees: 3 turned views")
    parser.add_argument("--splits", type=int, default=10, help="random halvings (each both ways)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the worker that kept the probabilities: the same sums, exactly
    found = kept_pool(args.studies)
    pool, kept = found.pool, found.kept
    raw = data_mod.load(pool.dataset, found.data_dir)
    study_mod.check_data(pool.studies[0][0], raw, record=False)
    splits: dict[tuple[int, int], data_mod.Data] = {}  # one standardised split per data shape
    label = f"rotate {args.rotate:g} deg" if args.rotate else f"shift {args.shift} px"
    one_view, many_views, seconds = [], [], 0.0
    for c in pool.candidates:
        weights = kept.weights(c.trial)
        if weights is None:
            continue
        _, spec = study_mod.load(found.storage, c.study)
        model = model_file.rebuild(spec, c.trial.params, torch.device("cpu"))
        model.load_state_dict(dict(weights))
        shape = (spec.validation_size, spec.train_size)
        if shape not in splits:
            splits[shape] = data_mod.split(raw, validation_size=shape[0], train_size=shape[1])
        data = splits[shape]
        outputs = str(kept_mod.of(c.trial)["outputs"])  # type: ignore[index]
        background = float(data.val_x.min())  # a black pixel, standardised
        start = time.perf_counter()
        each = [
            probabilities(model, v, outputs)
            for v in views(data.val_x, args.shift, args.rotate, background)
        ]
        seconds += time.perf_counter() - start
        recorded = kept.probabilities(c.trial, "val")
        assert np.array_equal(each[0], recorded), "the one-view probabilities are not the kept ones"
        one_view.append(recorded.astype(np.float32))
        many_views.append(np.mean([e.astype(np.float32) for e in each], axis=0))
    labels = next(iter(splits.values())).val_y.numpy()  # one validation split for the pool
    print(machine())
    print(
        f"{len(one_view)} kept trials with weights of {', '.join(args.studies)}; views ({label}) "
        f"of {len(labels)} validation images: {seconds / len(one_view):.1f} s a trial"
    )
    singles = [selection.accuracy(p, labels) for p in one_view]
    tta = [selection.accuracy(p, labels) for p in many_views]
    print(
        f"whole validation, mean over trials: one view {100 * np.mean(singles):.3f}%, "
        f"averaged views {100 * np.mean(tta):.3f}% (best {100 * max(singles):.2f}% -> "
        f"{100 * max(tta):.2f}%)"
    )
    pools = (
        ("one view", one_view),
        (label, many_views),
        ("both as candidates", one_view + many_views),
    )
    rules = {SHIPPED: "shipped selection", BEST_SINGLE: "best single"}
    for name, probs in pools:
        scores = held_out(probs, labels, [True] * len(probs), args.splits, only=set(rules))
        for variant, rule in rules.items():
            accs = scores[variant]
            print(
                f"{name:18s} {rule:18s} held-out validation {100 * np.mean(accs):.3f}% "
                f"(sd {100 * np.std(accs):.3f} over {len(accs)} halves)"
            )


if __name__ == "__main__":
    main()
