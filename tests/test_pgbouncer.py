"""Workers behind a real PgBouncer in transaction mode: exact budget, no errors.

Transaction pooling gives a client a server connection for one transaction at a time, so
nothing may outlive a transaction: the study lock is transaction-scoped (resilience/lock.py)
and, with `?pgbouncer=true`, psycopg 3 prepares no statements (PgBouncer 1.18 answers a
reused prepared statement with `prepared statement "_pg3_0" does not exist`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from conftest import IN_CI
from test_crash import MANY_TRIALS, Worker, _assert_nothing_lost, _create, _env, _trials

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
POOL = 4  # server connections PgBouncer keeps: fewer than the workers' client connections


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pgbouncer(pg_url: str) -> Iterator[str]:
    """A PgBouncer on 127.0.0.1 in transaction mode in front of the test database."""
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(exe).is_file():
        msg = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    url = make_url(pg_url)
    port = _free_port()
    # PgBouncer refuses to run as root; as root it is started as the postgres user, who must
    # read its files: a world-readable folder of its own, not pytest's private tmp_path.
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    folder.chmod(0o755)
    (folder / "users.txt").write_text(f'"{url.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={url.host} port={url.port or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "users.txt"}
pool_mode = transaction
default_pool_size = {POOL}
max_client_conn = 100
logfile = {folder / "pgbouncer.log"}
pidfile = {folder / "pgbouncer.pid"}
"""
    )
    as_root = ["-u", "postgres"] if os.geteuid() == 0 else []
    if as_root:  # it writes its log and pid file there
        for f in (folder, *folder.iterdir()):
            shutil.chown(f, "postgres")
    proc = subprocess.Popen([exe, *as_root, str(folder / "pgbouncer.ini")])
    try:
        for _ in range(100):
            assert proc.poll() is None, (folder / "pgbouncer.log").read_text(errors="replace")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        via = url.set(host="127.0.0.1", port=port).update_query_dict({"pgbouncer": "true"})
        yield via.render_as_string(hide_password=False)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def test_four_workers_behind_pgbouncer_in_transaction_mode(
    tmp_path: Path, mnist_dir: Path, pg_url: str, pgbouncer: str
) -> None:
    body = MANY_TRIALS.replace("n_trials = 8", "n_trials = 16")
    _create(pgbouncer, tmp_path, body)
    w = Worker(_env(tmp_path, pgbouncer, mnist_dir), "crash", "--jobs", "4")
    assert w.finish(timeout=600) == 0, w.output
    for bad in ("Traceback", "prepared statement", "storage unavailable", "error:"):
        assert bad not in w.output, w.output
    assert "trials: 16/16 of the budget used" in w.output, w.output
    _assert_nothing_lost(_trials(pg_url), budget=16, extra=0)
