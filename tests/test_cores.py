"""Threads per worker: the usable cores shared out between --jobs processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_hpo.fleet.cores import threads_per_job, usable_cores


@pytest.mark.parametrize(
    ("jobs", "cores", "threads"), [(1, 2, 2), (2, 2, 1), (4, 2, 1), (2, 16, 8), (3, 16, 5)]
)
def test_threads_per_job_shares_cores(jobs: int, cores: int, threads: int) -> None:
    assert threads_per_job(jobs, cores) == threads


def test_container_quota_caps_cores(tmp_path: Path) -> None:
    unlimited = tmp_path / "unlimited"
    unlimited.write_text("max 100000\n")
    quota = tmp_path / "quota"
    quota.write_text("150000 100000\n")  # docker run --cpus 1.5
    tiny = tmp_path / "tiny"
    tiny.write_text("20000 100000\n")  # --cpus 0.2: still one thread
    base = usable_cores(tmp_path / "missing")
    assert usable_cores(unlimited) == base
    assert usable_cores(quota) == min(base, 1)
    assert usable_cores(tiny) == 1
