"""Messages for status, Events, logs and the command line: one line, bounded."""

from __future__ import annotations

__all__ = ["MESSAGE_LIMIT", "one_line"]

MESSAGE_LIMIT = 240


def one_line(text: str | BaseException, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` (or an exception's message) with every run of white space, newlines included, one
    space, cut at ``limit`` characters with an ellipsis; an exception without a message gives its type."""
    line = " ".join(str(text).split())
    if not line and isinstance(text, BaseException):
        line = type(text).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"
