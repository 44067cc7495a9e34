"""Writing shell commands: quoting, here-documents, comments, file names for the documents written.

Every value reaches a command quoted by construction: arguments through `q` (shlex.quote),
documents through `heredoc`, whose end marker is derived from the document's own content
(so no content can end it early), text through `comment` (one line, control characters
escaped, so no newline in a name or reason can start a command).
"""

from __future__ import annotations

import hashlib
import re
import shlex

SENSITIVE = "(sensitive)"

q = shlex.quote


def file_name(*parts: str) -> str:
    """A file name made of `parts`, safe in any shell and folder."""
    return "-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", p) for p in parts)


def heredoc(path: str, content: str) -> str:
    """A command that writes `content` to `path` byte for byte: a quoted here-document whose end
    marker is a hash of the content (a line equal to it would have to contain its own hash);
    content that does not end with a newline (a here-document would add one) is written
    with printf and one quoted argument instead."""
    if not content.endswith("\n"):
        return f"printf '%s' {q(content)} > {q(path)}"
    marker = "EOF_" + hashlib.sha256(content.encode()).hexdigest()[:16]
    lines = set(content.split("\n")) | set(content.splitlines())
    while marker in lines:  # pragma: no cover - a sha256 fixpoint
        marker += "_"
    return f"cat > {q(path)} <<'{marker}'\n{content}{marker}"


_COMMENT_BREAKERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def comment(text: str) -> str:
    """`text` as one shell comment line ("# ..."): newlines and other control characters
    escaped, so nothing in it can end the comment."""
    safe = _COMMENT_BREAKERS.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
    return f"# {safe}"
