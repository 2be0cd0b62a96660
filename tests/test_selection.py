"""Ensemble selection: deterministic for a seed, better than its best member when the members
complement each other, and blind to the test split."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_hpo.outputs import ensemble, selection

N, C = 600, 10


def _probs(labels: np.ndarray, right: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Probabilities that put 0.6 on the true class where `right`, else on the next class."""
    target = np.where(right, labels, (labels + 1) % C)
    p = rng.uniform(0, 0.02, (len(labels), C))
    p[np.arange(len(labels)), target] += 0.6
    return (p / p.sum(1, keepdims=True)).astype(np.float16)


def _library(seed: int = 0, models: int = 12) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, N)
    return [
        _probs(labels, rng.random(N) < rng.uniform(0.7, 0.95), rng) for _ in range(models)
    ], labels


def test_the_same_seed_gives_the_same_ensemble() -> None:
    probs, labels = _library()
    a = selection.select(probs, labels, size=15, seed=3)
    b = selection.select(probs, labels, size=15, seed=3)
    assert a == b
    assert len(a.picks) == 15 and abs(sum(a.weights.values()) - 1) < 1e-9


def test_exact_ties_are_broken_by_the_seed_not_by_chance() -> None:
    probs, labels = _library(models=1)
    copies = probs * 4  # four identical models: every step is an exact tie
    picks = {tuple(selection.select(copies, labels, size=12, seed=s).picks) for s in range(6)}
    assert len(picks) > 1  # the seed decides...
    assert selection.select(copies, labels, size=12, seed=1).picks == (
        selection.select(copies, labels, size=12, seed=1).picks
    )  # ...and the same seed decides the same way


def test_two_weak_complementary_members_beat_one_strong_one() -> None:
    labels = np.arange(N) % C
    rng = np.random.default_rng(0)
    strong = _probs(labels, np.arange(N) % 10 != 0, rng)  # 90% right
    # Each weak model is right on 75% of the images, wrong on different quarters, and
    # confident where it is right: together they are right wherever either is (100%).
    half_a = np.arange(N) % 4 != 0
    half_b = np.arange(N) % 4 != 1
    weak_a, weak_b = _probs(labels, half_a, rng), _probs(labels, half_b, rng)
    weak_a[half_a] = _sharpen(weak_a[half_a])
    weak_b[half_b] = _sharpen(weak_b[half_b])
    chosen = selection.select([strong, weak_a, weak_b], labels, size=6, n_init=1)
    assert chosen.val_accuracy[0] == selection.accuracy(strong, labels) == 0.9
    assert chosen.val_accuracy[-1] > 0.9
    assert {1, 2} <= set(chosen.weights)


def _sharpen(p: np.ndarray) -> np.ndarray:
    out = np.full_like(p, 0.001)
    out[np.arange(len(p)), p.argmax(1)] = 0.991
    return out


@pytest.mark.parametrize("size", [10, None], ids=["fixed size", "size chosen on held-out"])
def test_selection_never_reads_the_test_split(size: int | None) -> None:
    probs, labels = _library()
    rng = np.random.default_rng(9)
    real_test = [_probs(labels, rng.random(N) < 0.9, rng) for _ in probs]
    garbage = [rng.random((N, C)).astype(np.float16) for _ in probs]
    asked: list[int] = []

    def reader(arrays: list[np.ndarray]):  # type: ignore[no-untyped-def]
        def read(i: int) -> np.ndarray:
            asked.append(i)
            return arrays[i]

        return read

    a = ensemble.choose(probs, labels, reader(real_test), labels, size=size)
    b = ensemble.choose(probs, labels, reader(garbage), np.zeros(N, dtype=int), size=size)
    assert a.picks == b.picks and a.weights == b.weights and a.val_by_size == b.val_by_size
    assert a.sized == b.sized and (a.sized is None) == (size is not None)
    assert a.test_by_size != b.test_by_size  # the test arrays were read, after choosing
    # ...and only those of trials the walk picked (with a chosen size, the walk goes on to 25
    # picks for the report's curve, so it may read a few more than the members)
    assert set(a.picks) <= set(asked) and (size is None or set(asked) == set(a.picks))


@pytest.mark.parametrize("size", [0, -1])
def test_a_size_below_one_is_refused(size: int) -> None:
    probs, labels = _library(models=2)
    with pytest.raises(ValueError, match="size >= 1"):
        selection.select(probs, labels, size=size)


def test_the_shortcut_counts_what_a_full_argmax_counts() -> None:
    probs, labels = _library(seed=4)
    stack = np.stack([p.astype(np.float32) for p in probs])
    total = stack[:3].sum(axis=0)
    full = ((total[None] + stack).argmax(axis=2) == labels).sum(axis=1)
    assert (selection._hits(total, stack, labels) == full).all()


def test_a_diverged_trial_is_never_picked_and_breaks_nothing() -> None:
    probs, labels = _library(models=4)
    nan = np.full_like(probs[0], np.nan)
    chosen = selection.select([nan, *probs], labels, size=10)
    assert 0 not in chosen.picks and not np.isnan(chosen.val_log_loss).any()


def test_the_size_chosen_on_held_out_halves_is_deterministic_and_kept_in_the_outcome() -> None:
    probs, labels = _library(seed=2)
    a = selection.choose_size(probs, labels, max_size=12, seed=5)
    assert a == selection.choose_size(probs, labels, max_size=12, seed=5)
    assert len(a.held_out) == len(a.held_out_average) == 12 and 1 <= a.size <= 12
    curve = a.held_out_average if a.averaged else a.held_out
    best = max(a.held_out + a.held_out_average)
    assert curve[a.size - 1] == best  # the best held-out size of either rule...
    assert all(h < best for h in curve[: a.size - 1])  # ...the smallest such
    real = ensemble.choose(
        probs, labels, lambda i: probs[i], labels, size=None, max_size=12, seed=5
    )
    assert real.size == a.size and real.sized == a
    assert len(real.val_by_size) == a.walk  # the walk's every pick, for the report's curve
    assert real.val_accuracy == real.val_by_size[a.size - 1]


def test_a_plain_average_is_chosen_where_it_generalises_better_than_greedy_picks() -> None:
    """Six equally good members with independent errors: averaging all six is right nearly
    everywhere, while the greedy walk on half the images keeps re-picking whichever happened to
    fit that half and never gives all six equal weight."""
    labels = np.arange(N) % C
    rng = np.random.default_rng(3)
    members = []
    for _ in range(6):
        right = rng.random(N) < 0.8
        p = _probs(labels, right, rng)
        p[~right] = _sharpen(p[~right]) * 0.7 + 0.03  # confidently wrong, not all-in
        members.append(p.astype(np.float16))
    chosen = selection.choose_size(members, labels, max_size=10)
    assert chosen.averaged and chosen.size >= 4, chosen
    # and the walk that `choose` then runs is the ranking: its first `size` picks, equal weights
    outcome = ensemble.choose(members, labels, lambda i: members[i], labels, size=None)
    assert len(outcome.weights) == chosen.size
    assert set(outcome.weights.values()) == {1 / chosen.size}


def test_held_out_halves_keep_complementary_members_and_drop_useless_ones() -> None:
    labels = np.arange(N) % C
    rng = np.random.default_rng(1)
    # Four members, each wrong on a different fifth of the images: confidently wrong there
    # (0.99), modestly right elsewhere (0.6). Two members lose to the confident mistake; any
    # three outvote it, so an ensemble of 3 or more is right everywhere, on unseen images too.
    complementary = []
    for k in range(4):
        right = np.arange(N) % 5 != k
        p = _probs(labels, right, rng)
        p[~right] = _sharpen(p[~right])
        complementary.append(p)
    assert selection.choose_size(complementary, labels, max_size=10).size >= 3
    # One good member among guesses: every pick past the first only dilutes it.
    good = _sharpen(_probs(labels, np.arange(N) % 10 != 0, rng))
    guesses = [_probs(labels, rng.random(N) < 0.15, rng) for _ in range(5)]
    assert selection.choose_size([good, *guesses], labels, max_size=10).size == 1


def test_a_walk_by_log_loss_takes_the_candidate_with_the_lowest_log_loss_at_each_step() -> None:
    probs, labels = _library(seed=6, models=6)
    chosen = selection.select(probs, labels, size=7, by="log_loss")
    stack = [p.astype(np.float32) for p in probs]
    rows = np.arange(N)
    for k in range(selection.N_INIT, 7):
        total = sum(stack[m] for m in chosen.picks[:k])
        losses = [
            -np.log(np.clip(((total + p) / (k + 1))[rows, labels], selection.EPS, None)).mean()
            for p in stack
        ]
        assert np.isclose(losses[chosen.picks[k]], min(losses), rtol=1e-5)
    with pytest.raises(ValueError, match="by must be"):
        selection.select(probs, labels, by="f1")


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({"size": 8}, "8 greedy picks"),
        ({"size": 2}, "the plain average of the best 2"),  # inside the sorted initialisation
        ({"size": 1, "size_chosen_on": "h"}, "the best trial alone, which scored best on held"),
        (
            {"size": 5, "rule": "average of the best", "size_chosen_on": "h"},
            "average of the best 5",
        ),
        ({"size": 19, "rule": "greedy", "size_chosen_on": "h"}, "19 greedy picks, which scored"),
    ],
)
def test_how_the_size_was_set_is_said_in_words(record: dict, words: str) -> None:  # type: ignore[type-arg]
    assert selection.how(record).startswith(words) or words in selection.how(record)
