"""`mnist-hpo ensemble`: combine the kept trials of one or several studies into an ensemble.

The studies must share the dataset (its fingerprint, as each study recorded it) and the
validation split (the last `validation_size` training images): the selection compares models
on the same validation images. Selection (selection.py) reads validation probabilities only;
after it, the members' test probabilities are read and the ensemble's test accuracy is measured
once, beside the test accuracy of the best single trial by validation. The result is recorded
on the first study (user attr `ensemble`) for `status`, `best --json`, the report and
`export-best --ensemble`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.ml import data as data_mod
from mnist_hpo.outputs import selection
from mnist_hpo.resilience.artifacts import open_store
from mnist_hpo.resilience.storage import open_storage
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.kept import ENSEMBLE_ATTR as ATTR
from mnist_hpo.search.kept import FINISHED, Kept
from mnist_hpo.search.kept import of as kept_of
from mnist_hpo.search.spec import StudySpec


@dataclass(frozen=True)
class Candidate:
    """A finished trial with kept probabilities, of one of the studies."""

    study: str
    trial: FrozenTrial

    @property
    def val_accuracy(self) -> float:
        return float((kept_of(self.trial) or {}).get("val_accuracy", 0.0))


@dataclass(frozen=True)
class Pool:
    """The candidates of the studies, with what they were judged on."""

    studies: list[tuple[optuna.Study, StudySpec]]
    candidates: list[Candidate]
    dataset: str
    validation_size: int


def gather(storage: Any, names: Sequence[str]) -> Pool:
    """Every kept trial of the named studies; one sentence for each reason there are none or
    for studies that cannot be combined."""
    studies, candidates, identity = [], [], None
    for name in dict.fromkeys(names):
        study, spec = study_mod.load(storage, name)
        data = study.user_attrs.get(study_mod.DATA_ATTR)
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        if data is None or not finished:
            raise HpoError(f"study {name!r} has no finished trial yet; run `mnist-hpo work {name}`")
        kept = [Candidate(name, t) for t in finished if kept_of(t) is not None]
        if not kept:
            raise HpoError(
                f"study {name!r}'s trials kept no weights or probabilities (run before mnist-hpo "
                "kept them, or with keep = false / --no-keep); run new trials with keeping on"
            )
        mine = (data["fingerprint"], spec.validation_size)
        if identity is not None and mine != identity[0]:
            raise UsageError(
                f"studies {identity[1]!r} and {name!r} ran on different data or validation "
                f"splits ({spec.dataset}, validation {spec.validation_size:,} vs. the first's); "
                "an ensemble combines studies on the same dataset and split only"
            )
        identity = identity or (mine, name)
        studies.append((study, spec))
        candidates += kept
    first = studies[0][1]
    return Pool(studies, candidates, first.dataset, first.validation_size)


@dataclass(frozen=True)
class Outcome:
    """What the selection chose, and the test accuracies measured after it."""

    picks: list[int]  # candidate indices, in the order picked: the ensemble's `size` picks
    weights: dict[int, float]
    val_by_size: list[float]  # along every pick the selection made (past `size` when chosen)
    test_by_size: list[float]  # the same prefixes on test, measured after the selection
    member_test: dict[int, float]  # each member alone on test (a pruned trial recorded none)
    sized: selection.SizeChoice | None = None  # what held-out validation chose, if it chose

    @property
    def size(self) -> int:
        return len(self.picks)

    @property
    def val_accuracy(self) -> float:
        return self.val_by_size[self.size - 1]

    @property
    def test_accuracy(self) -> float:
        return self.test_by_size[self.size - 1]


def choose(
    val_probs: Sequence[np.ndarray],
    val_labels: np.ndarray,
    test_probs: Callable[[int], np.ndarray],
    test_labels: np.ndarray,
    *,
    size: int | None,
    max_size: int = selection.SIZE,
    seed: int = 0,
) -> Outcome:
    """Select on validation only: `size` picks, or as many (up to `max_size`) as generalise to
    held-out validation images (selection.choose_size) when `size` is None. Then read the
    picked candidates' test probabilities (`test_probs(i)`, asked only after the selection)
    and measure test once per ensemble size along the picks, for the report's curve."""
    sized = None
    if size is None:
        sized = selection.choose_size(val_probs, val_labels, max_size=max_size, seed=seed)
    keep = sized.size if sized else size or 1
    # With a chosen size the walk goes on anyway: the report plots every prefix of it.
    walk, n_init = (sized.walk, sized.n_init) if sized else (keep, selection.N_INIT)
    chosen = selection.select(val_probs, val_labels, size=walk, n_init=n_init, seed=seed)
    tests = {i: test_probs(i).astype(np.float32) for i in dict.fromkeys(chosen.picks)}
    running = np.zeros_like(next(iter(tests.values())))
    test_by_size = []
    for k, i in enumerate(chosen.picks, start=1):
        running += tests[i]
        test_by_size.append(selection.accuracy(running / k, test_labels))
    kept = chosen.picks[:keep]
    weights = selection.weights(kept)
    alone = {i: selection.accuracy(tests[i], test_labels) for i in weights}
    return Outcome(kept, weights, chosen.val_accuracy, test_by_size, alone, sized)


def labels(
    pool: Pool, data_dir: Path | None, cache_dir: Path | None, download: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The validation and test labels of the pool's data, checked against its fingerprint."""
    raw = data_mod.load(pool.dataset, data_dir, cache_dir=cache_dir, download=download)
    study_mod.check_data(pool.studies[0][0], raw, record=False)
    val = raw.train_labels[len(raw.train_labels) - pool.validation_size :]
    return val.numpy(), raw.test_labels.numpy()


def run(
    storage_url: str,
    names: Sequence[str],
    artifacts: str,
    *,
    size: int | None = None,
    seed: int = 0,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
) -> dict[str, Any]:
    """Select an ensemble over the studies' kept trials (`size` picks, or as many as held-out
    validation images favour when None), measure it, record it on the first study; returns
    the record (see `record`)."""
    if size is not None and size < 1:
        raise UsageError(f"--size must be at least 1 (picks of the greedy selection), not {size}")
    pool = gather(open_storage(storage_url, must_exist=True), names)
    kept = Kept(open_store(artifacts), artifacts)
    val_labels, test_labels = labels(pool, data_dir, cache_dir, download)
    try:
        val = [kept.probabilities(c.trial, "val") for c in pool.candidates]
        outcome = choose(
            val,
            val_labels,
            lambda i: kept.probabilities(pool.candidates[i].trial, "test"),
            test_labels,
            size=size,
            seed=seed,
        )
    except ValueError as e:
        raise HpoError(f"no ensemble of {', '.join(names)}: {e}") from None
    except LookupError as e:
        raise HpoError(
            f"{e}; point --artifacts (MNIST_HPO_ARTIFACTS) at the workers' store"
        ) from None
    result = record(pool, outcome, seed)
    pool.studies[0][0].set_user_attr(ATTR, result)
    return result


def record(pool: Pool, outcome: Outcome, seed: int) -> dict[str, Any]:
    """The `ensemble` user attr: members (study, trial, weight), accuracies, the trajectory
    (every pick made, `size` of them kept) and, when the size was chosen, the held-out curve."""
    cands = pool.candidates
    members = [
        {
            "study": cands[i].study,
            "trial": cands[i].trial.number,
            "weight": w,
            "val_accuracy": cands[i].val_accuracy,
            "test_accuracy": outcome.member_test[i],
        }
        for i, w in outcome.weights.items()
    ]
    single = max(
        (c for c in cands if c.trial.state == TrialState.COMPLETE),
        key=lambda c: float(c.trial.values[0]),
        default=None,
    )
    return {
        "studies": [s.study_name for s, _ in pool.studies],
        "candidates": len(cands),
        "size": outcome.size,
        **_sizing(outcome.sized),
        "seed": seed,
        "members": members,
        "val_accuracy": outcome.val_accuracy,
        "test_accuracy": outcome.test_accuracy,
        "best_single": None
        if single is None
        else {
            "study": single.study,
            "trial": single.trial.number,
            "val_accuracy": float(single.trial.values[0]),
            "test_accuracy": single.trial.user_attrs.get("test_accuracy"),
        },
        "trajectory": {"val": outcome.val_by_size, "test": outcome.test_by_size},
    }


def _sizing(sized: selection.SizeChoice | None) -> dict[str, Any]:
    """How the size was set: given, or chosen on held-out halves of validation (and whether as
    greedy picks or the plain average of the best trials), with both held-out curves."""
    if sized is None:
        return {"size_chosen_on": None, "rule": "greedy", "held_out": None}
    return {
        "size_chosen_on": "held-out validation halves",
        "rule": "average of the best" if sized.averaged else "greedy",
        "held_out": {"greedy": sized.held_out, "average of the best": sized.held_out_average},
    }
