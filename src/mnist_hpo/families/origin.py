"""Where a family's code comes from: the record a study keeps, and what a worker compares.

A study names its family by name only, and every worker imports that name again. For a plugin
(another package's module) the name alone does not say which code ran, so `create-study`
records the module, the distribution that installed it and its version, and a hash of the
module's source file; a worker whose copy differs refuses the study (search/family_origin.py).
The hash covers the family's own file, which is what an edited editable install changes; code
it imports from other modules is covered by the distribution's version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

BUILT_IN = "built-in"  # one of the four families in this package
PLUGIN = "plugin"  # an entry point of the group `mnist_hpo.families` in an installed package
MODULE = "module"  # a module path in a spec: family = "my_pkg.lenet5"
HASH_SHOWN = 12  # hex digits of the source hash in messages: enough to tell two apart


@dataclass(frozen=True)
class Origin:
    """Which code a family is: recorded with the study, the model file and the report."""

    kind: str  # BUILT_IN, PLUGIN or MODULE
    module: str  # the module's dotted name
    distribution: str = ""  # the installed distribution it comes from; "" when none
    version: str = ""  # that distribution's version; "" when none
    source_sha256: str = ""  # of the module's source file; "" when it has none

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any] | None) -> Origin | None:
        """A recorded origin, or None when there is none (a study created before origins)."""
        if not isinstance(data, Mapping) or "module" not in data:
            return None
        keys = ("kind", "module", "distribution", "version", "source_sha256")
        return Origin(**{k: str(data.get(k, "")) for k in keys})

    @property
    def built_in(self) -> bool:
        return self.kind == BUILT_IN

    def same_code(self, other: Origin) -> bool:
        """The same module from the same release with the same source."""
        return (self.module, self.distribution, self.version, self.source_sha256) == (
            other.module,
            other.distribution,
            other.version,
            other.source_sha256,
        )

    def package(self) -> str:
        """The distribution and version, as pip names them ("" when not from one)."""
        return f"{self.distribution} {self.version}".strip()

    def describe(self) -> str:
        """Where the code comes from, in words: for `families`, messages and the report."""
        sha = f"source sha256 {self.source_sha256[:HASH_SHOWN]}" if self.source_sha256 else ""
        if self.kind == BUILT_IN:
            return f"built-in, {self.package() or 'mnist-hpo'}"
        where = (
            f"package {self.package()}" if self.distribution else "not from an installed package"
        )
        what = "plugin" if self.kind == PLUGIN else "module"
        return f"{what} {self.module} ({', '.join(p for p in (where, sha) if p)})"

    def install_hint(self) -> str:
        """What makes this code importable on another machine."""
        if self.distribution:
            return f"`pip install '{self.distribution}=={self.version}'`"
        return f"make module {self.module} importable (its folder on PYTHONPATH)"


def source_hash(module: ModuleType) -> str:
    """sha256 of the module's source file ("" for a module without one)."""
    path = getattr(module, "__file__", None)
    if not path:
        return ""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def of_module(module: ModuleType, kind: str, distribution: str = "", version: str = "") -> Origin:
    return Origin(kind, module.__name__, distribution, version, source_hash(module))
