"""optuna-dashboard on a study storage, with the artifact store attached, served by threads.

optuna-dashboard has no authentication and its API can delete studies, so the default bind
address is 127.0.0.1; anything else should sit behind an authenticating proxy. Its own
`run_server` uses bottle's single-threaded server, which a browser's parallel API calls queue
behind, so this serves its WSGI app with a threading server instead (as its CLI does).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard

from mnist_hpo.errors import HpoError
from mnist_hpo.resilience.storage import open_storage
from mnist_hpo.search.checkpoints import open_store


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open polling connection must not block shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """The dashboard polls its API every few seconds; an access log would drown the output."""


@dataclass
class Dashboard:
    """A bound dashboard server: `serve_forever()` until interrupted, then `close()`."""

    server: WSGIServer
    host: str
    port: int
    studies: list[str]  # study names in the storage when it started
    artifact_location: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/dashboard"

    @property
    def local_only(self) -> bool:
        return is_loopback(self.host)

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.5)

    def close(self) -> None:
        self.server.server_close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_dashboard(
    storage_url: str, *, artifacts_at: str, host: str = "127.0.0.1", port: int = 8080
) -> Dashboard:
    """Open the storage (creating Optuna's tables in a new database) and bind the server.

    optuna-dashboard does not create tables itself and fails on an empty database, so the
    storage goes through open_storage, which does.
    """
    # A threaded server answers several browser requests at once: more than a worker's 2.
    storage = open_storage(storage_url, connections=8)
    store = open_store(artifacts_at)
    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    try:
        server = make_server(
            host, port, app, server_class=_ThreadedServer, handler_class=_QuietHandler
        )
    except (OSError, OverflowError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise HpoError(
            f"cannot listen on {host}:{port} ({reason}); pick another --port or --host"
        ) from None
    bound_port = server.server_address[1]
    return Dashboard(
        server=server,
        host=host,
        port=int(bound_port),
        studies=optuna.get_all_study_names(storage=storage),
        artifact_location=artifacts_at,
    )
