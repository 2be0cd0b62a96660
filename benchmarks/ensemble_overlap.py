"""How alike do the members of a search err? On the validation images only (test never read).

For the complete trials of the given studies (above `--min-val` validation accuracy, so that
the fast enqueued nets do not count), the validation images each one gets wrong, and for every
pair the share of the smaller error set that the other also gets wrong. Independent errors
would share about the other's error rate (under 1% here); a plain average cannot mend an image
every member gets wrong, so those set a floor under what any ensemble of these trials reaches.

    MNIST_HPO_STORAGE=sqlite:///runs.db MNIST_HPO_ARTIFACTS=art MNIST_HPO_DATA=/path/to/mnist \\
        .venv/bin/python benchmarks/ensemble_overlap.py cnn [deep_mlp ...] [--min-val 0.99]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from common import kept_pool


def overlaps(wrong: list[set[int]]) -> list[float]:
    """For each pair of error sets, the share of the smaller one that the other contains."""
    return [len(a & b) / max(1, min(len(a), len(b))) for a, b in itertools.combinations(wrong, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+")
    parser.add_argument("--min-val", type=float, default=0.99, help="complete trials above this")
    args = parser.parse_args()
    found = kept_pool(args.studies)
    pool, kept = found.pool, found.kept
    labels = found.val_labels()
    members = [
        c
        for c in pool.candidates
        if c.trial.state.name == "COMPLETE" and c.val_accuracy > args.min_val
    ]
    if len(members) < 2:
        raise SystemExit(f"{len(members)} complete trial(s) above --min-val: nothing to compare")
    wrong = [
        set(np.flatnonzero(kept.probabilities(c.trial, "val").argmax(1) != labels).tolist())
        for c in members
    ]
    shares = overlaps(wrong)
    print(f"{len(members)} complete trials of {', '.join(args.studies)} above {args.min_val:.2%}")
    print(f"validation errors each: {sorted(len(w) for w in wrong)} of {len(labels)} images")
    print(
        f"pairwise overlap: mean {np.mean(shares):.0%} (min {min(shares):.0%}, max "
        f"{max(shares):.0%}); independent errors would share about "
        f"{np.mean([len(w) for w in wrong]) / len(labels):.1%}"
    )
    print(
        f"images some member gets wrong: {len(set.union(*wrong))}; every member: "
        f"{len(set.intersection(*wrong))}"
    )


if __name__ == "__main__":
    main()
