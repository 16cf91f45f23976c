"""Reading the files the configuration names (the config file, secret files): small regular
files only, read whole up to a bound, never waiting. A FIFO, a device or a directory put in
a secret file's place would otherwise block the reader forever (at a reload, the process),
and a huge file would take its memory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["MAX_FILE_BYTES", "FileRefused", "read_small_file"]

MAX_FILE_BYTES = 1024 * 1024  # a secret or a config file is a few kilobytes

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class FileRefused(Exception):
    """A file that is there but not one to read: its ``reason`` says why, in words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_small_file(path: str | Path, limit: int = MAX_FILE_BYTES) -> tuple[str, int]:
    """The UTF-8 text of the regular file at ``path`` (symlinks followed) and its mode.

    Raises ``OSError`` (cannot be opened), ``FileRefused`` (not a regular file, or over
    ``limit`` bytes) or ``UnicodeDecodeError``. Opened non-blocking: a FIFO does not wait
    for a writer, and is refused by what it is."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(descriptor)  # the file opened, not the name: no race with a swap
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"is {_kind(info.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(descriptor, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileRefused(f"is larger than {limit} bytes, too large for a secret or config")
    finally:
        os.close(descriptor)
    return b"".join(chunks).decode("utf-8"), info.st_mode
