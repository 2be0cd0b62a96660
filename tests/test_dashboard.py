"""mnist-hpo dashboard: serves fresh SQLite and PostgreSQL databases, renders in Chromium.

The command itself, stopped by SIGTERM, runs in tests/test_deploy.py as compose runs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ROOT, SMALL_SPEC, write_spec
from mnist_hpo.errors import HpoError
from mnist_hpo.outputs import dashboard
from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec_files import load_spec

ARTIFACTS = ROOT / "test-artifacts"  # screenshots kept for people to look at (git-ignored)


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read()


Serve = Callable[[dashboard.Dashboard], dashboard.Dashboard]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start a Dashboard in a background thread; stopped after the test."""
    started: list[dashboard.Dashboard] = []

    def start(d: dashboard.Dashboard) -> dashboard.Dashboard:
        threading.Thread(target=d.serve_forever, daemon=True).start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.server.shutdown()
        d.close()


def test_serves_a_fresh_database(storage_url: str, tmp_path: Path, serve: Serve) -> None:
    # optuna-dashboard alone fails on a database without Optuna's tables; ours creates them.
    d = serve(
        dashboard.open_dashboard(storage_url, port=0, artifacts_at=str(tmp_path / "artifacts"))
    )
    assert d.studies == [] and d.local_only
    status, body = _get(f"http://127.0.0.1:{d.port}/api/studies")
    assert status == 200 and json.loads(body) == {"study_summaries": []}
    # A study created afterwards shows up: the server reads the storage, not a snapshot.
    spec = load_spec(str(write_spec(tmp_path, "small", SMALL_SPEC)))
    study_mod.create(storage_mod.open_storage(storage_url), spec)
    summaries = json.loads(_get(f"http://127.0.0.1:{d.port}/api/studies")[1])["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["small"]
    assert _get(d.url)[0] == 200


def test_a_busy_port_is_one_clear_error(tmp_path: Path, serve: Serve) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = serve(dashboard.open_dashboard(url, port=0, artifacts_at=str(tmp_path / "a")))
    with pytest.raises(HpoError, match=f"cannot listen on 127.0.0.1:{first.port} .*another --port"):
        dashboard.open_dashboard(url, port=first.port, artifacts_at=str(tmp_path / "a"))


def test_loopback_detection() -> None:
    assert dashboard.is_loopback("127.0.0.1") and dashboard.is_loopback("localhost")
    assert dashboard.is_loopback("::1")
    assert not dashboard.is_loopback("0.0.0.0") and not dashboard.is_loopback("10.1.2.3")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    pytest.skip(
        "headless browser test: Debian's `chromium` is not installed (apt-get install chromium)"
    )


def _browse(chromium: str, url: str, profile: Path, *action: str) -> str:
    flags = [
        "--headless",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "--hide-scrollbars",
        # Virtual time runs only while no request is pending, so the single-page app has
        # fetched its data and plotly has drawn before the DOM is read, however busy the CPU.
        "--virtual-time-budget=20000",
    ]
    r = subprocess.run(
        [chromium, *flags, *action, url], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


# The dashboard computes importances on 3 completed trials; Optuna warns that is rough.
@pytest.mark.filterwarnings("ignore:Some regimes for parameter")
@pytest.mark.slow
def test_browser_renders_the_study_its_trials_and_plots(
    finished_study: tuple[str, str], tmp_path: Path, serve: Serve
) -> None:
    chromium = _chromium()
    url, name = finished_study
    storage = storage_mod.open_storage(url)
    study, _ = study_mod.load(storage, name)
    study_id = storage.get_study_id_from_name(name)
    d = serve(dashboard.open_dashboard(url, port=0, artifacts_at=str(tmp_path / "a")))
    page = f"{d.url}/studies/{study_id}"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-study.png"
    shot.unlink(missing_ok=True)
    dom = _browse(chromium, page, tmp_path / "p1", "--dump-dom", f"--screenshot={shot}")
    assert f"{name} (id={study_id})" in dom  # the study's page, by name
    assert dom.count("js-plotly-plot") >= 2 and "main-svg" in dom  # plots drawn (SVG)
    assert "History" in dom and "Hyperparameter Importance" in dom
    assert shot.stat().st_size > 20_000  # a rendered page: a blank one is about 6 KB

    trials_dom = _browse(chromium, f"{page}/trials", tmp_path / "p2", "--dump-dom")
    for t in study.trials:
        assert f"Trial {t.number}" in trials_dom
    assert "test_accuracy" in trials_dom  # the recorded user attributes are listed
