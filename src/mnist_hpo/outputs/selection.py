"""Ensemble selection (Caruana et al., ICML 2004) on validation probabilities: pure numpy.

Greedy forward selection *with replacement*: start from the `n_init` best single models
(Caruana's sorted initialisation), then add, `size` times in all, whichever model (again or
for the first time) makes the running average score best; a model's weight is how often it
was picked over `size`. Picking again is what lets a good model count more without a weight
search, and what keeps the greedy walk from overfitting as quickly as selection without it.

Score: validation accuracy, the task metric (auto-sklearn optimises its task metric too), with
the log-loss of the average as the tie-break: on 10,000 validation images accuracy moves in
steps of 0.01%, so several candidates often tie on it and the log-loss tells the one that makes
the average more confident on the right class. An exact tie on both (a model picked twice in a
row against its own copy) is broken by a seeded generator: the same seed, the same ensemble.

How many picks: greedy steps on 10,000 validation images keep finding single-image gains long
after the ensemble stopped generalising (on the shipped cnn study, 25 picks read 99.72% on
validation and 99.59% on test). `choose_size` therefore asks held-out validation images: it
runs the selection on one random half of validation and scores every prefix of its picks on the
other half, both ways over SPLITS halvings, and keeps the size with the best mean held-out
accuracy (the smallest on a tie: fewer members predict faster). It weighs the plain averages of
the best 1..K trials (ranked on the fitting half) the same way, and takes one of those instead
when it scores better: on pools of several strong trials the plain average generalised better
than greedy picks (deep_mlp + cnn_20k: 99.64% held-out for the best 5 averaged against 99.60%
for 25 greedy picks). The final selection then runs on the whole validation split.

This module sees validation arrays only; it takes no test argument at all, so no choice it
makes can depend on the test split (tests/test_selection.py holds the ensemble core to that).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

N_INIT = 3  # sorted initialisation: Caruana used the best N; 3 of a study's 10-60 trials
SIZE = 25  # picks in all; auto-sklearn's default ensemble_size is 50 over far more models
SPLITS = 5  # halvings for choose_size, each used both ways: 10 selections (~1 s for 100 trials)
EPS = 1e-7  # probabilities are clipped here before the log (float16 rounds 1e-8 to 0)


@dataclass(frozen=True)
class Selection:
    """The picks in order (indices into the candidates) and the validation score after each."""

    picks: list[int]
    val_accuracy: list[float]  # of the running average after each pick: the trajectory
    val_log_loss: list[float]

    @property
    def weights(self) -> dict[int, float]:
        return weights(self.picks)


def weights(picks: Sequence[int]) -> dict[int, float]:
    """Candidate index -> its share of the picks, in order of first pick."""
    counts = Counter(picks)
    return {i: counts[i] / len(picks) for i in dict.fromkeys(picks)}


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == labels))


def mix(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted average of several models' (N, classes) probabilities, in float32."""
    total = np.zeros(probs[0].shape, dtype=np.float32)
    for p, w in zip(probs, weights, strict=True):
        total += np.float32(w) * p.astype(np.float32)
    return total / np.float32(sum(weights))


def select(
    val_probs: Sequence[np.ndarray] | np.ndarray,
    val_labels: np.ndarray,
    *,
    size: int = SIZE,
    n_init: int = N_INIT,
    seed: int = 0,
    by: str = "accuracy",
) -> Selection:
    """Greedy selection with replacement of `size` picks among the candidates' validation
    probabilities (each (N, classes)); see the module docstring. `by="log_loss"` ranks each
    step by the average's log-loss alone (accuracy then only reported)."""
    if by not in ("accuracy", "log_loss"):
        raise ValueError(f"by must be 'accuracy' or 'log_loss', not {by!r}")
    if size < 1 or len(val_probs) == 0:
        raise ValueError("ensemble selection needs at least one candidate and size >= 1")
    stack = _stacked(val_probs)  # (M, N, C) float32
    # A diverged trial kept NaN probabilities: never picked (as zeros it would only dilute).
    usable = np.asarray(np.isfinite(stack).all(axis=(1, 2)), dtype=bool)
    if not usable.all():
        stack = np.where(usable[:, None, None], stack, np.float32(0.0))  # a copy: never the input
    if not usable.any():
        raise ValueError("every candidate's probabilities are NaN or infinite (diverged)")
    labels = np.asarray(val_labels, dtype=np.int64)
    order, right = _ranking(stack, usable, labels)
    picks = order[: min(n_init, size)]
    total, total_right = stack[picks].sum(axis=0), right[picks].sum(axis=0)
    trajectory = [
        _score(stack[picks[: k + 1]].sum(0), right[picks[: k + 1]].sum(0), k + 1, labels)
        for k in range(len(picks))
    ]
    rng = np.random.default_rng(seed)
    for k in range(len(picks) + 1, size + 1):
        hits = np.where(usable, _hits(total, stack, labels), -1)
        losses = -np.log(np.clip((total_right[None] + right) / k, EPS, None)).mean(axis=1)
        if by == "log_loss":
            losses = np.where(usable, losses, np.inf)
            best = np.flatnonzero(losses == losses.min())
        else:
            best = np.flatnonzero(hits == hits.max())
            best = best[losses[best] == losses[best].min()]
        m = int(best[0] if len(best) == 1 else rng.choice(best))
        picks.append(m)
        total += stack[m]
        total_right += right[m]
        trajectory.append((float(hits[m]) / len(labels), float(losses[m])))
    return Selection(picks, [a for a, _ in trajectory], [ll for _, ll in trajectory])


def _ranking(
    stack: np.ndarray, usable: np.ndarray, labels: np.ndarray
) -> tuple[list[int], np.ndarray]:
    """The candidates best first (usable ones first, then by accuracy, log-loss, index), and
    each one's probability of the true class, (M, N)."""
    right = stack[:, np.arange(len(labels)), labels]
    correct = (stack.argmax(axis=2) == labels).sum(axis=1)
    log_loss = -np.log(np.clip(right, EPS, None)).mean(axis=1)
    order = sorted(range(len(stack)), key=lambda m: (not usable[m], -correct[m], log_loss[m], m))
    return order, right


@dataclass(frozen=True)
class SizeChoice:
    """What held-out validation chose: the greedy walk's first `size` picks, or (`averaged`)
    the plain average of the best `size` trials; and the mean held-out accuracy of each size
    of both (index 0 is size 1)."""

    size: int
    averaged: bool
    held_out: list[float]  # the greedy walk's prefixes, sizes 1..max_size
    held_out_average: list[float]  # plain averages of the best 1..K trials

    @property
    def n_init(self) -> int:
        """select()'s n_init for the chosen walk: the plain average is an initialisation of
        K trials with no greedy step after it."""
        return len(self.held_out_average) if self.averaged else N_INIT

    @property
    def walk(self) -> int:
        """How many picks the chosen walk makes in all (its every prefix is plotted)."""
        return len(self.held_out_average) if self.averaged else len(self.held_out)


def choose_size(
    val_probs: Sequence[np.ndarray],
    val_labels: np.ndarray,
    *,
    max_size: int = SIZE,
    n_init: int = N_INIT,
    splits: int = SPLITS,
    seed: int = 0,
    by: str = "accuracy",
) -> SizeChoice:
    """How many picks generalise, and whether greedy steps beat a plain average of the best:
    on one random half of validation, walk greedily (and rank the trials); score each prefix of
    both on the other half, both ways over `splits` halvings (see the module docstring)."""
    labels = np.asarray(val_labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    whole = _stacked(val_probs)  # converted to float32 once, not once per walk
    usable = np.isfinite(whole).all(axis=(1, 2))
    top = max(1, min(max_size, int(usable.sum())))
    greedy, average = np.zeros(max_size), np.zeros(top)
    for _ in range(splits):
        order = rng.permutation(len(labels))
        halves = order[: len(labels) // 2], order[len(labels) // 2 :]
        for fit, held in (halves, halves[::-1]):
            part = whole[:, fit]
            walk = select(part, labels[fit], size=max_size, n_init=n_init, seed=seed, by=by)
            greedy += _prefix_accuracy(whole[walk.picks][:, held], labels[held])
            ranked = _ranking(part, usable, labels[fit])[0][:top]
            average += _prefix_accuracy(whole[ranked][:, held], labels[held])
    greedy, average = greedy / (2 * splits), average / (2 * splits)
    averaged = bool(average.max() > greedy.max() + 1e-12)  # a tie stays with Caruana's walk
    curve = average if averaged else greedy
    size = int(np.flatnonzero(curve >= curve.max() - 1e-12)[0]) + 1
    return SizeChoice(size, averaged, [float(x) for x in greedy], [float(x) for x in average])


def _prefix_accuracy(picked: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The accuracy of the running average after each pick: `picked` is (picks, N, C)."""
    running = np.cumsum(picked, axis=0)
    return np.asarray((running.argmax(axis=2) == labels).mean(axis=1), dtype=float)


def _stacked(probs: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    if isinstance(probs, np.ndarray) and probs.ndim == 3:
        return probs.astype(np.float32, copy=False)  # choose_size's halves: already float32
    return np.stack([p.astype(np.float32) for p in probs])


def _hits(total: np.ndarray, stack: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How many images each candidate added to the running sum `total` gets right. A model adds
    at most 1 to any class, so an image whose true class leads (or trails) every other by more
    than 1 stays right (wrong) whatever is added: only the rest, a few percent of the images
    once three models are summed, is recomputed per candidate (100 trials, 25 picks: 2.2 s of
    full argmaxes down to well under 1 s on 2 cores)."""
    rows = np.arange(len(labels))
    others = total.copy()
    others[rows, labels] = -np.inf
    margin = total[rows, labels] - others.max(axis=1)
    open_ = np.abs(margin) <= 1.0 + 1e-3  # float16 probabilities may round a little over 1
    settled = int(np.count_nonzero(margin[~open_] > 0))
    summed = total[open_][None] + stack[:, open_]
    hits: np.ndarray = settled + (summed.argmax(axis=2) == labels[open_]).sum(axis=1)
    return hits


def _score(
    total: np.ndarray, total_right: np.ndarray, k: int, labels: np.ndarray
) -> tuple[float, float]:
    acc = float(np.mean(total.argmax(axis=1) == labels))
    return acc, float(-np.log(np.clip(total_right / k, EPS, None)).mean())


def how(record: Mapping[str, Any]) -> str:
    """How an ensemble record's size was set, in words for the CLI and the report."""
    size, where = record["size"], "on held-out halves of validation"
    averaged = record.get("rule") == "average of the best" or size <= N_INIT  # no greedy step
    what = (
        "the best trial alone"
        if size == 1
        else f"the plain average of the best {size}"
        if averaged
        else f"{size} greedy picks"
    )
    return f"{what}, which scored best {where}" if record.get("size_chosen_on") else what
