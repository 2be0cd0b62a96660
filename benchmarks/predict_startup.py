"""Start-up of `mnist-hpo predict` (a fresh process classifying one PNG), this tree against another.

Runs the two alternately so machine load hits both alike, and prints medians, their ratio, and
how many modules each imported (Optuna and SQLAlchemy should be absent from this one):

    git worktree add /tmp/base ae2b5a1          # the tree before resilience/ and model_file.py
    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/predict_startup.py \\
        --baseline-src /tmp/base/src [--runs 8]
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import machine

HERE = Path(__file__).resolve().parents[1] / "src"
PROBE = """
import sys
from mnist_hpo.cli import app
sys.argv = ["mnist-hpo", "predict", {model!r}, {png!r}]
try:
    app()
except SystemExit as e:
    assert e.code in (0, None), e.code
print("MODULES", len(sys.modules), int("optuna" in sys.modules), int("sqlalchemy" in sys.modules))
"""


def _model(folder: Path, data: Path, src: Path) -> tuple[Path, Path]:
    """A one-epoch perceptron study exported by the tree at `src` (each tree reads its own
    files), and one real test digit as a PNG."""
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(src)}
    env |= {"MNIST_HPO_STORAGE": f"sqlite:///{folder / 's.db'}"}
    env |= {"MNIST_HPO_ARTIFACTS": str(folder / "art"), "MNIST_HPO_DATA": str(data)}
    spec = folder / "p.toml"
    spec.write_text(
        'family = "perceptron"\nepochs = 1\nn_trials = 1\ntrain_size = 2000\n'
        "validation_size = 500\n"
    )
    model = folder / "m.safetensors"
    for args in (
        ["create-study", str(spec)],
        ["work", "p"],
        ["export-best", "p", "-o", str(model)],
    ):
        cmd = [sys.executable, "-m", "mnist_hpo", *args]
        subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=folder)
    raw = gzip.decompress((data / "t10k-images-idx3-ubyte.gz").read_bytes())[16 : 16 + 784]
    png = folder / "d.png"
    Image.fromarray(np.frombuffer(raw, np.uint8).reshape(28, 28)).save(png)
    return model, png


def _once(src: Path, model: Path, png: Path, cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = PROBE.format(model=str(model), png=str(png))
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"predict failed with {src}: {r.stderr[:800]}")
    return seconds, r.stdout.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline-src", type=Path, required=True, help="src/ of the other tree")
    p.add_argument("--runs", type=int, default=8)
    args = p.parse_args()
    data = Path(os.environ["MNIST_HPO_DATA"])
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"baseline": args.baseline_src, "this tree": HERE}
        files = {
            label: _model(Path(tmp) / str(i), data, src)
            for i, (label, src) in enumerate(trees.items())
        }
        times: dict[str, list[float]] = {label: [] for label in trees}
        seen: dict[str, str] = {}
        for _ in range(args.runs):
            for label, src in trees.items():
                model, png = files[label]
                seconds, modules = _once(src, model, png, Path(tmp))
                times[label].append(seconds)
                seen[label] = modules
    for label, ts in times.items():
        _, n, optuna, sqlalchemy = seen[label].split()
        yes = {"1": "yes", "0": "no"}
        print(
            f"{label:<10} median {statistics.median(ts):.2f} s (min {min(ts):.2f}, max "
            f"{max(ts):.2f}, {len(ts)} runs); {n} modules, optuna {yes[optuna]}, "
            f"sqlalchemy {yes[sqlalchemy]}"
        )
    ratio = statistics.median(times["this tree"]) / statistics.median(times["baseline"])
    print(f"this tree / baseline: {ratio:.2f}x")


if __name__ == "__main__":
    main()
