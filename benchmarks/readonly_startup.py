"""Start-up of the read-only commands (`status`, `list`, `studies`), this tree against another.

Each is a fresh process, as a user's command is. Runs the two trees alternately so machine load
hits both alike, and prints medians of the wall time and of the CPU time (user + system: on a
busy shared machine the wall time waits for a core, the CPU time much less so; on an idle one
they are about equal), their ratio, and whether torch was imported (it should not be in this
tree: reading a study needs none):

    git worktree add /tmp/base 35598f6          # the tree before the read-only commands lost torch
    .venv/bin/python benchmarks/readonly_startup.py --baseline-src /tmp/base/src [--runs 8]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parents[1] / "src"
COMMANDS = {"status": ["status", "p"], "list": ["list"], "studies": ["studies"]}
PROBE = """
import sys
from mnist_hpo.cli import app
sys.argv = ["mnist-hpo", *{args!r}]
try:
    app()
except SystemExit as e:
    assert e.code in (0, None), e.code
print("TORCH", int("torch" in sys.modules))
"""


def _study(folder: Path, src: Path) -> dict[str, str]:
    """A study of 1-epoch perceptron trials created by the tree at `src` (each tree reads its
    own format), and the environment its commands run in."""
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(src), "MNIST_HPO_STORAGE": f"sqlite:///{folder}/s.db"}
    spec = folder / "p.toml"
    spec.write_text('family = "perceptron"\nepochs = 1\nn_trials = 4\n')
    cmd = [sys.executable, "-m", "mnist_hpo", "create-study", str(spec)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=folder)
    return env


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _once(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, bool]:
    t0, cpu0 = time.perf_counter(), _cpu()
    r = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    if r.returncode != 0:
        raise SystemExit(f"{args} failed with {env['PYTHONPATH']}: {r.stderr[-800:]}")
    return seconds, cpu, r.stdout.strip().splitlines()[-1] == "TORCH 1"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline-src", type=Path, required=True, help="src/ of the other tree")
    p.add_argument("--runs", type=int, default=8)
    args = p.parse_args()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    trees = {"baseline": args.baseline_src.resolve(), "this tree": HERE}
    with tempfile.TemporaryDirectory() as tmp:
        envs = {
            label: _study(Path(tmp) / str(i), src) for i, (label, src) in enumerate(trees.items())
        }
        times: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}
        torch: dict[tuple[str, str], bool] = {}
        for _ in range(args.runs):
            for name, argv in COMMANDS.items():
                for label in trees:
                    seconds, cpu, imported = _once(argv, envs[label], Path(tmp))
                    times.setdefault((name, label), []).append(seconds)
                    cpus.setdefault((name, label), []).append(cpu)
                    torch[(name, label)] = imported
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"{'command':<9} {'tree':<10} {'wall median':>11} {'min':>5} {'CPU median':>10}  torch")
    for key, ts in times.items():
        name, label = key
        print(
            f"{name:<9} {label:<10} {statistics.median(ts):>9.2f} s {min(ts):>5.2f} "
            f"{statistics.median(cpus[key]):>8.2f} s  {'yes' if torch[key] else 'no'}"
        )
    for name in COMMANDS:
        wall = [statistics.median(times[(name, t)]) for t in ("this tree", "baseline")]
        cpu = [statistics.median(cpus[(name, t)]) for t in ("this tree", "baseline")]
        print(
            f"{name}: this tree / baseline {wall[0] / wall[1]:.2f}x wall, "
            f"{cpu[0] / cpu[1]:.2f}x CPU"
        )


if __name__ == "__main__":
    main()
