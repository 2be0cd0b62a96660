"""Where a spec NAME is found (--studies, ./studies, the shipped specs) and the catalogue of
every spec a NAME can reach; reading a file hands its contents to spec.parse."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mnist_hpo.errors import UsageError
from mnist_hpo.search.spec import StudySpec, parse

SHIPPED = "shipped with mnist-hpo"  # how the shipped specs' folder is named in messages


def shipped_studies() -> Path:
    """The specs that ship with mnist-hpo: one per family, the quickstart and the report's.

    In a wheel they are package data (pyproject maps the top-level studies/ folder to
    mnist_hpo/studies); in an editable install or a source tree, that folder itself.
    """
    packaged = resources.files("mnist_hpo") / "studies"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "studies"


def search_path(extra: Sequence[Path] = ()) -> list[Path]:
    """Where a spec NAME is looked for, in order: `extra` (the CLI's --studies /
    MNIST_HPO_STUDIES), ./studies, then the shipped specs; a folder named twice counts once.
    (A path to a .toml file is not searched for: it is taken as is.)"""
    folders: dict[Path, Path] = {}
    for d in [*extra, Path("studies"), shipped_studies()]:
        folders.setdefault(d.resolve(), d)
    return list(folders.values())


def is_shipped(folder: Path) -> bool:
    return folder.resolve() == shipped_studies().resolve()


def folder_label(folder: Path) -> str:
    """A search folder as messages name it: the path as given, or the shipped one as such."""
    return f"{folder} ({SHIPPED})" if is_shipped(folder) else str(folder)


def origin(path: Path) -> str:
    """Where a resolved spec file came from, for `create-study`'s "spec:" line."""
    return f"{path.stem} ({SHIPPED})" if is_shipped(path.parent) else str(path)


def resolve_path(ref: str, search: Sequence[Path] | None = None) -> Path:
    """NAME -> NAME.toml in the first folder of `search` that has it; a path is taken as is."""
    as_path = Path(ref)
    if as_path.suffix == ".toml" or os.sep in ref:
        if not as_path.is_file():
            raise UsageError(f"spec file {ref} does not exist; give a path to a .toml file")
        return as_path
    dirs = search_path() if search is None else list(search)
    for d in dirs:
        candidate = d / f"{ref}.toml"
        if candidate.is_file():
            return candidate
    searched = ", then ".join(dict.fromkeys(folder_label(d) for d in dirs))
    raise UsageError(
        f"no study spec named {ref!r} (looked for {ref}.toml in {searched}); "
        "give a path to a .toml file or set MNIST_HPO_STUDIES to the folder holding it "
        "(`mnist-hpo studies` lists the specs found)"
    )


def load_spec(
    ref: str, *, name: str | None = None, search: Sequence[Path] | None = None
) -> StudySpec:
    """Read and validate a spec file; `name` overrides the study name (default: the file stem)."""
    return read_spec(resolve_path(ref, search), name=name)


def read_spec(path: Path, *, name: str | None = None) -> StudySpec:
    """Read and validate the spec file at `path` (see load_spec)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML ({e}); fix the syntax there") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path} ({e}); check the file") from None
    if name:
        data["name"] = name
    return parse(data, source=str(path), default_name=path.stem)


@dataclass(frozen=True)
class Listed:
    """One spec file a NAME can reach, for `mnist-hpo studies`."""

    path: Path
    folder: Path  # the search folder it is in
    spec: StudySpec | None  # None when the file does not parse
    problem: str  # why it does not parse ("" when it does)
    shadowed_by: Path | None  # the file of the same NAME in an earlier folder: that one wins
    shadows: tuple[Path, ...]  # files of the same NAME in later folders, which this one beats

    @property
    def name(self) -> str:
        return self.path.stem


def catalogue(search: Sequence[Path] | None = None) -> list[Listed]:
    """Every spec in the search folders, folder by folder in search order, each folder sorted
    by NAME; of several files with one NAME the first wins, as in resolve_path."""
    files = [
        (folder, path)
        for folder in (search_path() if search is None else search)
        if folder.is_dir()
        for path in sorted(folder.glob("*.toml"))
    ]
    by_name: dict[str, list[Path]] = {}
    for _, path in files:
        by_name.setdefault(path.stem, []).append(path)
    return [_listed(folder, path, by_name[path.stem]) for folder, path in files]


def _listed(folder: Path, path: Path, same_name: list[Path]) -> Listed:
    try:
        spec, problem = read_spec(path), ""
    except UsageError as e:
        spec, problem = None, str(e)
    winner = same_name[0]
    shadows = tuple(same_name[1:]) if path == winner else ()
    return Listed(path, folder, spec, problem, None if path == winner else winner, shadows)
