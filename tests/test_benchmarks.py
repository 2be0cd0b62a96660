"""Every benchmark script still imports against the package as it is (they are not run here:
they measure, and take minutes; but an API they use must not vanish under them)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import ROOT

BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
OPTIONAL = {"vs_peers"}  # needs the [peers] extra (Ray Tune), imported lazily or not at all


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_the_benchmark_imports(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(path.parent))  # they import their own `common`
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it is imported
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        if path.stem in OPTIONAL and e.name and e.name.split(".")[0] in ("ray",):
            pytest.skip(f"{path.stem} needs an optional extra: {e}")
        raise
    finally:
        sys.modules.pop(f"benchmark_{path.stem}", None)
    if path.stem != "common":  # what the others share
        assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
