"""A local stand-in for S3, enough of it for boto3 and Optuna's Boto3ArtifactStore: PutObject,
GetObject, DeleteObject on one in-memory bucket, path-style, no signature check. Its `refuse`
switch answers every request 403 AccessDenied (a revoked key, a bucket policy), and `close`
takes it off the network (an unreachable endpoint), so the client's own errors are real."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from urllib.parse import unquote, urlsplit

DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)
NO_KEY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
    b"<Message>The specified key does not exist.</Message></Error>"
)


class FakeS3:
    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}
        self.refuse = False
        self.lock = threading.Lock()
        self.connections: list[socket.socket] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Off the network: no listener, and boto3's kept-alive connections dropped."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        s3 = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and 100-continue, as boto3 expects

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with s3.lock:
                    s3.connections.append(self.connection)

            def _key(self) -> str | None:
                path = unquote(urlsplit(self.path).path).lstrip("/")
                bucket, _, key = path.partition("/")
                return key if bucket == s3.bucket and key else None

            def _answer(self, status: int, body: bytes = b"", **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(body)

            def _refused(self) -> bool:
                if s3.refuse:
                    self._answer(403, DENIED, Content_Type="application/xml")
                return s3.refuse

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self._refused():
                    return
                key = self._key()
                if key is None:
                    self._answer(400)
                    return
                if "aws-chunked" in self.headers.get("Content-Encoding", ""):
                    body = _unchunk(body)
                with s3.lock:
                    s3.objects[key] = body
                self._answer(200, ETag='"0"')

            def do_GET(self) -> None:
                if self._refused():
                    return
                with s3.lock:
                    body = s3.objects.get(self._key() or "")
                if body is None:
                    self._answer(404, NO_KEY, Content_Type="application/xml")
                else:
                    self._answer(200, body, Content_Type="application/octet-stream")

            def do_DELETE(self) -> None:
                if self._refused():
                    return
                with s3.lock:
                    s3.objects.pop(self._key() or "", None)
                self._answer(204)

        return Handler


def _unchunk(body: bytes) -> bytes:
    """The payload of an aws-chunked body (`<hex size>[;...]\\r\\n<data>\\r\\n` ... `0\\r\\n`
    and trailers), as boto3 sends uploads with a trailing checksum."""
    out, rest = b"", body
    while rest:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out
