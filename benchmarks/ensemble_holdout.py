"""Which ensemble selection generalises, judged without the test split: select on one random half
of the validation images, score on the other half, both ways, over several splits.

Compares, on the kept trials of real studies, the shipped selection (Caruana: best 3, then
greedy picks with replacement, as many as `selection.choose_size` finds generalise on halves of
the fitting half, or the plain average of the best K where that generalises better: a nested
check) against a fixed 25 picks and variants: greedy on log-loss, complete trials only, a best-5
start, and the plain average of the best K by validation. Test probabilities and test
labels are never read, so a variant can be chosen from these figures without touching test.

    MNIST_HPO_STORAGE=sqlite:///runs.db MNIST_HPO_ARTIFACTS=art MNIST_HPO_DATA=/path/to/mnist \\
        .venv/bin/python benchmarks/ensemble_holdout.py cnn [deep_mlp ...] [--splits 10]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import numpy as np

from common import kept_pool, machine
from mnist_hpo.outputs import selection

AUTO = 0  # picks: chosen by selection.choose_size on the fitting half alone (nested)
SHIPPED = "shipped: chosen on held-out halves"
BEST_SINGLE = "plain average of the best 1"


def variants(complete: list[bool]) -> Iterator[tuple[str, list[int], int, int, str]]:
    """(name, candidate indices, picks or AUTO, n_init, the greedy steps' score)."""
    every = list(range(len(complete)))
    yield SHIPPED, every, AUTO, 3, "accuracy"
    yield "best 3, then 25 picks", every, 25, 3, "accuracy"
    yield "LOG-LOSS: best 3, then 25 picks", every, 25, 3, "log_loss"
    yield "LOG-LOSS: picks chosen on halves", every, AUTO, 3, "log_loss"
    yield "complete trials only", [i for i in every if complete[i]], 25, 3, "accuracy"
    yield "best 5, then 25 picks", every, 25, 5, "accuracy"
    for k in (1, 2, 3, 5):
        yield f"plain average of the best {k}", every, k, k, "accuracy"


def held_out(
    val: list[np.ndarray],
    labels: np.ndarray,
    complete: list[bool],
    splits: int,
    only: set[str] | None = None,
) -> Any:
    """Each variant's (or only those named) held-out accuracy on every half, the same halves
    for every variant (seeded): variant name -> list of accuracies."""
    rng = np.random.default_rng(0)
    scores: dict[str, list[float]] = {}
    for _ in range(splits):
        order = rng.permutation(len(labels))
        halves = order[: len(labels) // 2], order[len(labels) // 2 :]
        for chosen_on, scored_on in (halves, halves[::-1]):
            for name, cands, size, n_init, by in variants(complete):
                if only is not None and name not in only:
                    continue
                if size == AUTO:  # the shipped default: greedy picks or a plain average
                    fit = [val[i][chosen_on] for i in cands]
                    sized = selection.choose_size(fit, labels[chosen_on], by=by)
                    size = sized.size
                    n_init = size if sized.averaged else n_init
                picked = selection.select(
                    [val[i][chosen_on] for i in cands],
                    labels[chosen_on],
                    size=size,
                    n_init=n_init,
                    by=by,
                )
                mixed = sum(val[cands[i]][scored_on] * w for i, w in picked.weights.items())
                scores.setdefault(name, []).append(selection.accuracy(mixed, labels[scored_on]))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+")
    parser.add_argument("--splits", type=int, default=10, help="random halvings (each both ways)")
    args = parser.parse_args()
    found = kept_pool(args.studies)
    pool, kept = found.pool, found.kept
    val_labels = found.val_labels()
    val = [kept.probabilities(c.trial, "val").astype(np.float32) for c in pool.candidates]
    complete = [c.trial.state.name == "COMPLETE" for c in pool.candidates]
    print(machine())
    print(f"{len(val)} kept trials of {', '.join(args.studies)} ({sum(complete)} complete)")
    for name, accs in held_out(val, val_labels, complete, args.splits).items():
        print(
            f"{name:36s} held-out validation {100 * np.mean(accs):.3f}% "
            f"(sd {100 * np.std(accs):.3f} over {len(accs)} halves)"
        )


if __name__ == "__main__":
    main()
