"""Seeds of a study's trials: the sampler's draw and the training run of each trial number."""

from __future__ import annotations


def number_seed(seed: int, number: int) -> int:
    """Trial `number`'s seed in a study seeded `seed`: no two seeds share one.

    `seed + number` made study seed 1's trial n study seed 0's trial n + 1: two "seeds" of one
    spec then drew 4 of their 5 random start-up points alike. The factor keeps seed 0's trials
    as they were (seed n) and seeds apart for the first million trials; the modulus keeps the
    value a valid NumPy seed (< 2**32), which Optuna's samplers need.
    """
    return (seed * 1_000_003 + number) % 2**32
