"""The family origin a study records when it is created, and the check a worker (export-best,
predict) makes against the code installed where it runs, before it trains anything.

A built-in family is not compared: it is part of mnist-hpo, whose version each trial records,
and a study outlives upgrades of mnist-hpo by design (stored specs are read leniently for the
same reason). A plugin or module family is compared: another version or an edited source
would silently run different code under the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mnist_hpo.errors import HpoError
from mnist_hpo.families import Family
from mnist_hpo.families.origin import BUILT_IN, Origin

ATTR = "family_origin"  # study user attr (and model-file header key): Origin.to_dict()


def recorded(attrs: Mapping[str, Any]) -> Origin | None:
    """The origin a study's user attrs (or a model file's header) hold; None before origins
    were recorded."""
    return Origin.from_dict(attrs.get(ATTR))


def missing(where: str, name: str, origin: Origin | None) -> HpoError:
    """The error for a family that `where` (a study, a model file) needs and this machine lacks."""
    if origin is None or origin.kind == BUILT_IN:
        return HpoError(
            f"{where} uses family {name!r}, which is not installed here; install the package "
            "that provides it on this machine (`mnist-hpo families` lists what is installed)"
        )
    return HpoError(
        f"{where} uses family {name!r} from {origin.describe()}, which is not installed here; "
        f"{origin.install_hint()} on this machine (every worker needs it)"
    )


def check(where: str, family: Family, then: Origin | None) -> None:
    """Refuse, with one sentence naming both, when the family installed here is not the code
    `where` ran (`then`, its recorded origin)."""
    here = family.origin
    if then is None or (then.kind == BUILT_IN and here.kind == BUILT_IN) or then.same_code(here):
        return
    release = (here.module, here.distribution, here.version)
    if (then.module, then.distribution, then.version) == release:
        fix = "its source was edited since; restore it, or create a new study for the edited code"
    else:
        fix = f"{then.install_hint()} here, or create a new study for this code"
    raise HpoError(
        f"{where} ran family {family.name} from {then.describe()}, but this machine has "
        f"{here.describe()}; {fix}"
    )
