"""A local HTTP server of in-memory files on 127.0.0.1, for download tests (nothing here
reaches the internet): it honours Range requests, can drop a response half-way once or
answer late, ignore Range like a server without it, and records each request's path and
Range header."""
from __future__ import annotations

import http.server
import threading
import time
from typing import Iterator

import pytest


class FileServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}                 # URL path -> body
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_once: set[str] = set()                   # paths whose next response stops half-way
        self.delay = 0.0                                  # seconds before each response
        self.honour_range = True                          # False: a whole 200 whatever the Range
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                time.sleep(server.delay)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                rng = rng if server.honour_range else None
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(body) > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in server.cut_once:
                    server.cut_once.discard(self.path)
                    self.wfile.write(body[start: start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    s = FileServer()
    yield s
    s.close()


def unreachable_url() -> str:
    """An address on 127.0.0.1 where nothing listens (a port just bound and released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/models/"
