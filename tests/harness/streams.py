"""Byte streams between two asyncio connections (standard library only: server processes import it)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

PIPE_CHUNK = 1 << 16


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, abort: Callable[[], None]) -> None:
    """Copy one direction; pass EOF on as a half-close; on an error, `abort()` (both sides)."""
    try:
        while data := await reader.read(PIPE_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.transport.is_closing():
            writer.write_eof()
    except OSError:
        abort()
