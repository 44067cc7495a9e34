"""A local HTTP server for images, as cloud image mirrors serve them: GET with `Range`
(206 Partial Content) and HEAD, in a thread of the test process. It records every request
and can cut the next download short (a dropped connection), so tests can interrupt a
download and watch it resume. No internet is needed or used.

    with ImageServer({"/debian.qcow2": path}) as server:
        url = server.url("/debian.qcow2")
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Request:
    method: str
    path: str
    range: str | None  # the Range header, as sent
    sent: int  # body bytes sent (-1: the client hung up before the end)


class ImageServer:
    """Serves `files` (URL path -> local file) on 127.0.0.1 at a free port."""

    def __init__(self, files: dict[str, Path], ranges: bool = True):
        self.files = dict(files)
        self.ranges = ranges  # False: ignore Range headers (always 200 with the whole file)
        self.requests: list[Request] = []
        self.cut_after: int | None = None  # drop the connection after this many body bytes (next GET only)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                record = Request(self.command, self.path, self.headers.get("Range"), 0)
                server.requests.append(record)
                local = server.files.get(self.path)
                if local is None:
                    self.send_error(404)
                    return
                data = local.read_bytes()
                start, end, status = 0, len(data) - 1, 200
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", record.range or "")
                if match and server.ranges:
                    start = int(match.group(1))
                    end = min(int(match.group(2)), len(data) - 1) if match.group(2) else len(data) - 1
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes" if server.ranges else "none")
                self.send_header("Content-Length", str(end - start + 1))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                chunk = data[start : end + 1]
                cut, server.cut_after = server.cut_after, None
                if cut is not None and cut < len(chunk):
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    record.sent = cut
                    self.close_connection = True
                    self.connection.shutdown(2)  # the connection drops mid-download
                    return
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):  # the client read what it needed
                    record.sent = -1
                    self.close_connection = True
                    return
                record.sent = len(chunk)

        return Handler
