"""How many CPU cores this process may use, and how many torch threads each worker gets."""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def usable_cores(cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may run on: its CPU affinity, capped by a container's CPU quota.

    os.cpu_count() is the host's count: a worker in a 2-CPU container on a 64-core host would
    start 64 threads and spend its time switching between them.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit readable: the affinity count stands
    return max(1, cores)


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Torch threads per worker process: the cores shared out, at least one each.

    Separate single-thread processes beat one multi-thread process at this model size: on
    2 cores, two 1-thread processes did the same work 1.8x (deep_mlp) and 3.7x (cnn) faster than
    one 2-thread process (benchmarks/threads.py; a busy shared machine). More threads than
    cores per process only adds switching.
    """
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, jobs))
