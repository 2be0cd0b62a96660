"""Shared fixtures: real MNIST and Fashion-MNIST, a throwaway PostgreSQL database, small specs."""

from __future__ import annotations

import http.server
import importlib
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI") == "true"


def _mnist_candidates() -> list[tuple[str, Path]]:
    """Where the tests look for MNIST, as the product does (ml/data.py): the tests' own
    variable, the user's MNIST_HPO_DATA, the product's cache, then the copy beside the checkout."""
    from mnist_hpo.settings import cache_home

    found = [
        (v, Path(os.environ[v]))
        for v in ("MNIST_HPO_TEST_DATA", "MNIST_HPO_DATA")
        if os.environ.get(v)
    ]
    cache = Path(os.environ["MNIST_HPO_CACHE"]) if os.environ.get("MNIST_HPO_CACHE") else None
    found.append(("the cache", (cache or cache_home()) / "mnist"))
    found.append(("../shared/data/mnist", ROOT.parent / "shared" / "data" / "mnist"))
    return found


def _mnist_dir() -> Path | None:
    for _, c in _mnist_candidates():
        # The folder itself, its mnist/ subfolder or torchvision's MNIST/raw/ (data.load_dir).
        for folder in (c, c / "mnist", c / "MNIST" / "raw"):
            if (folder / "train-images-idx3-ubyte.gz").is_file():
                return folder
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The four official MNIST files, found as mnist-hpo finds them (_mnist_candidates)."""
    found = _mnist_dir()
    if found is None:
        cache = dict(_mnist_candidates())["the cache"]
        msg = (
            f"real MNIST not found in MNIST_HPO_TEST_DATA, MNIST_HPO_DATA or the cache ({cache}):"
            " set one of the variables to a folder with the 4 IDX .gz files, or run `mnist-hpo "
            "data` once to download them into the cache"
        )
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return found


@pytest.fixture(scope="session")
def raw_mnist(mnist_dir: Path):  # type: ignore[no-untyped-def]
    from mnist_hpo.ml import data

    return data.load_dir(mnist_dir)


# Debian's dataset-fashion-mnist package (.ci/run installs it) puts the four files here.
FASHION_DEFAULT = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """The four Fashion-MNIST files (set MNIST_HPO_TEST_FASHION to their folder)."""
    found = Path(os.environ.get("MNIST_HPO_TEST_FASHION") or FASHION_DEFAULT)
    if not (found / "train-images-idx3-ubyte.gz").is_file():
        msg = (
            f"real Fashion-MNIST not found in {found}: `apt-get install dataset-fashion-mnist` "
            "or set MNIST_HPO_TEST_FASHION to a folder with its 4 IDX files"
        )
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return found


@pytest.fixture(scope="session")
def raw_fashion(fashion_dir: Path):  # type: ignore[no-untyped-def]
    from mnist_hpo.ml import data

    return data.load_dir(fashion_dir, "fashion-mnist")


class _Mirror(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator:  # type: ignore[type-arg]
    """start(folder, fail_first=0): a mirror of folder on 127.0.0.1; the first N GETs get 503."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(folder: Path, fail_first: int = 0) -> str:
        failures = {"left": fail_first}

        class Handler(_Mirror):
            def __init__(self, *a, **k):  # type: ignore[no-untyped-def]
                super().__init__(*a, directory=str(folder), **k)

            def do_GET(self) -> None:
                if failures["left"] > 0:
                    failures["left"] -= 1
                    self.send_error(503, "try later")
                    return
                super().do_GET()

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for s in servers:
        s.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `postgres` marker on every test that uses the server, however it gets there (the
    pg_url fixture, or storage_url's postgres case), so `-m 'not postgres'` runs without one."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        if "pg_url" in names or "pgbouncer" in names or "postgres" in params:
            item.add_marker(pytest.mark.postgres)


PG_ADMIN = os.environ.get("MNIST_HPO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_admin():  # type: ignore[no-untyped-def]
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}: {e}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"mnist_hpo_test_{uuid.uuid4().hex[:10]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with _pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs on a SQLite file and on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return str(request.getfixturevalue("pg_url"))


EXAMPLE_PLUGIN = ROOT / "examples" / "lenet5_family"


@pytest.fixture(scope="session")
def lenet5_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example plugin (examples/lenet5_family) installed into this environment for the rest
    of the session, then uninstalled; its entry point makes `lenet5` a family here and in every
    CLI process the tests start.

    pip installs it without build isolation or dependencies (setuptools is already here: torch
    requires it; nothing is downloaded), not editable (an editable install's .pth file is read
    only at interpreter start-up, so this process would not see it), and from a copy: pip builds
    in the source folder and would leave build/ and egg-info there.
    """
    from mnist_hpo.families import registry

    copy = tmp_path_factory.mktemp("plugin") / EXAMPLE_PLUGIN.name
    shutil.copytree(EXAMPLE_PLUGIN, copy)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    r = subprocess.run(
        [*pip, "install", "--no-build-isolation", "--no-deps", str(copy)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, f"cannot install the example plugin: {r.stderr}"
    importlib.invalidate_caches()
    registry.resolve.cache_clear()
    yield "lenet5"
    subprocess.run([*pip, "uninstall", "--yes", "lenet5-family"], check=True, capture_output=True)
    importlib.invalidate_caches()
    registry.resolve.cache_clear()


def write_spec(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(body, encoding="utf-8")
    return path


# A real but small study: 3,000 training and 1,000 validation images of real MNIST, 2 epochs.
SMALL_SPEC = """
family = "simple_mlp"
epochs = 2
n_trials = 4
seed = 0
train_size = 3000
validation_size = 1000

[params]
hidden = { low = 32, high = 128, log = true }
batch_size = [64, 128]
"""


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300):  # type: ignore[no-untyped-def]
    """Run the installed CLI in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "mnist_hpo", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


# A finished study with pruned and completed trials, for the report, dashboard and export tests:
# 6 trials of 3 epochs on 3,000 real training images; pruning may start after 2 trials.
FINISHED_SPEC = """
family = "simple_mlp"
epochs = 3
n_trials = 6
seed = 0
train_size = 3000
validation_size = 1000

[params]
hidden = { low = 32, high = 128, log = true }
batch_size = [64, 128]

[pruner_options]
n_startup_trials = 2
n_warmup_steps = 0
"""


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> tuple[str, str]:
    """(storage URL, study name) of a study run to the end by one worker on a SQLite file."""
    from mnist_hpo.fleet import worker
    from mnist_hpo.resilience import storage as storage_mod
    from mnist_hpo.search import study as study_mod
    from mnist_hpo.search.spec_files import load_spec

    folder = tmp_path_factory.mktemp("finished")
    url = f"sqlite:///{folder / 'studies.db'}"
    spec = load_spec(str(write_spec(folder, "finished", FINISHED_SPEC)))
    study_mod.create(storage_mod.open_storage(url), spec)
    options = worker.WorkOptions(data_dir=mnist_dir, wait=False, artifacts=str(folder / "art"))
    worker.run(url, "finished", options)
    return url, "finished"
