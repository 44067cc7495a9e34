"""Helpers of the hostile-input suites: the CLI run in this process, and a libvirt host URI
whose socket only counts who connects to it."""

from __future__ import annotations

import io
import re
import socket
import sys
import threading
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

#: One error of a validation or plan message: "  - <address>: <field>: <message>".
ERROR_LINE = re.compile(r"^  - (?P<address>.+?): (?P<field>[A-Za-z_][\w.\[\]]*): (?P<message>\S.*)$")


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`virtplan ARGS` in this process: (exit code, stdout, stderr)."""
    from virtplan.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with (
        redirect_stdout(out),
        redirect_stderr(err),
        mock.patch.object(sys, "argv", ["virtplan", *args]),
        mock.patch.dict("os.environ", env or {}),
    ):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


class CountingHost:
    """A unix socket that accepts and counts connections (and hangs up at once): as a libvirt
    host URI, any attempt to reach the host is counted."""

    def __init__(self, folder: Path):
        self.path = folder / "libvirt-sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(64)
        self.count = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.path}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def error_lines(stderr: str) -> list[re.Match[str]]:
    """The "  - address: field: message" lines of an error message (None for other lines)."""
    return [m for m in (ERROR_LINE.match(line) for line in stderr.splitlines()[1:]) if m is not None]
