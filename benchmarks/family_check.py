"""What create-study's family check costs: per shipped spec, the check (the family's model
built and run on a zero batch for the search's smallest and largest configuration and each
[[enqueue]] block) against reading and validating the spec, which create-study already did.

Runs each alternately so machine load hits both alike, and prints medians and their ratio:

    .venv/bin/python benchmarks/family_check.py [--runs 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common import machine
from mnist_hpo.search.spec import check_configurations
from mnist_hpo.search.spec_files import read_spec, shipped_studies


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker's: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    print(f"{'spec':<24} {'parse ms':>9} {'check ms':>9} {'check/parse':>12}")
    for path in sorted(Path(shipped_studies()).glob("*.toml")):
        parse, check = [], []
        for _ in range(args.runs):
            parse.append(_seconds(lambda p=path: read_spec(p)))
            spec = read_spec(path)
            check.append(_seconds(lambda s=spec: check_configurations(s)))
        p, c = statistics.median(parse), statistics.median(check)
        print(f"{path.stem:<24} {1000 * p:>9.1f} {1000 * c:>9.1f} {c / p:>11.2f}x")


if __name__ == "__main__":
    main()
