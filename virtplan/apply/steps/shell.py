"""Writing shell commands: quoting, here-documents, file names for the documents written."""

from __future__ import annotations

import re
import shlex

SENSITIVE = "(sensitive)"

q = shlex.quote


def file_name(*parts: str) -> str:
    """A file name made of `parts`, safe in any shell and folder."""
    return "-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", p) for p in parts)


def heredoc(path: str, content: str) -> str:
    """A command that writes `content` to `path` verbatim (quoted here-document)."""
    marker = "EOF"
    while marker in content.splitlines():
        marker += "_"
    body = content if content.endswith("\n") else content + "\n"
    return f"cat > {q(path)} <<'{marker}'\n{body}{marker}"
