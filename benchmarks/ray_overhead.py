"""What Ray costs: the same short study run by `work --jobs 2` and by `work --ray --workers 2`.

Starts a one-node Ray head on loopback (2 CPUs, ended when done), then runs a small real study
(simple_mlp on 3,000 real training images, 12 trials of 2 epochs) twice into fresh SQLite
files, and prints each route's wall time, trials/s and the ratio:

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/ray_overhead.py [--trials 12]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import machine

SPEC = """
family = "simple_mlp"
epochs = 2
n_trials = {trials}
seed = 0
train_size = 3000
validation_size = 1000

[params]
hidden = {{ low = 32, high = 128, log = true }}
batch_size = [64, 128]
"""
# Ray keeps every address on loopback and asks for no token (as tests/test_ray.py's head).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def ray_head(folder: Path) -> Iterator[str]:
    port = _port()  # never 6379 (Redis)
    ray = str(Path(sys.executable).parent / "ray")
    flags = [f"--port={port}", "--num-cpus=2", f"--temp-dir={tempfile.mkdtemp(prefix='ray-')}"]
    flags += ["--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats"]
    flags += [f"--dashboard-port={_port()}", f"--ray-client-server-port={_port()}"]
    flags += [f"--dashboard-agent-listen-port={_port()}"]
    log = (folder / "head.log").open("wb")
    head = subprocess.Popen([ray, "start", "--head", "--block", *flags], stdout=log, stderr=log)
    try:
        while "Ray runtime started" not in (folder / "head.log").read_text(errors="replace"):
            if head.poll() is not None:
                raise SystemExit((folder / "head.log").read_text())
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        head.wait(timeout=60)


def run(folder: Path, name: str, trials: int, route: list[str]) -> tuple[float, int]:
    url = f"sqlite:///{folder / (name + '.db')}"
    env = {**os.environ, **RAY_ENV, "MNIST_HPO_STORAGE": url}
    env["MNIST_HPO_ARTIFACTS"] = str(folder / f"art-{name}")
    (folder / f"{name}.toml").write_text(SPEC.format(trials=trials))
    cli = [sys.executable, "-m", "mnist_hpo"]
    subprocess.run(
        [*cli, "create-study", str(folder / f"{name}.toml")],
        env=env,
        check=True,
        capture_output=True,
    )
    t0 = time.perf_counter()
    r = subprocess.run([*cli, "work", name, *route], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{route}: exit {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    done = r.stdout.count(" complete: ") + r.stdout.count(" pruned at epoch ")
    return seconds, done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    args = p.parse_args()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs = run(folder, "jobs", args.trials, ["--jobs", "2"])
        with ray_head(folder) as address:
            ray = run(folder, "ray", args.trials, ["--ray", address, "--workers", "2"])
    print(f"{'route':<24} {'wall s':>7} {'trials':>6} {'trials/s':>8}")
    for label, (seconds, done) in (("work --jobs 2", jobs), ("work --ray --workers 2", ray)):
        print(f"{label:<24} {seconds:>7.1f} {done:>6} {done / seconds:>8.3f}")
    print(
        f"Ray / --jobs, trials/s: {(ray[1] / ray[0]) / (jobs[1] / jobs[0]):.2f}x "
        f"(load average {os.getloadavg()[0]:.2f} after)"
    )


if __name__ == "__main__":
    main()
