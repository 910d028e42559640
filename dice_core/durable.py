"""Writes that survive a crash: appends that reach the disk, and files replaced whole.

A write that finds no room (a full disk, a quota, a file-size limit) raises DiskFull, which
names the file, and leaves nothing half-written under the file's name."""
from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from dice_core.errors import DiskFull

NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def no_room_reason(error: BaseException | None) -> str | None:
    """The system's words when ``error`` is a write that found no room, else None. torch and
    safetensors raise errors of their own for it, with the OSError as their context or the
    system's words in their text."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in NO_ROOM:
            return os.strerror(error.errno)
        reason = next((os.strerror(code) for code in NO_ROOM if os.strerror(code) in str(error)),
                      None)
        if reason is not None:
            return reason
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def reporting_full_disk(path: str | os.PathLike) -> Iterator[None]:
    """Raises a write in the block that found no room as DiskFull naming ``path``."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as error:
        reason = no_room_reason(error)
        if reason is None:
            raise
        raise DiskFull(path, reason) from error


def append_whole(stream: BinaryIO, data: bytes, path: str | os.PathLike,
                 sync: bool = False) -> None:
    """Append all of ``data`` to ``stream`` (unbuffered, opened to append to ``path``) and with
    ``sync`` fsync it; when there is no room, none of it (DiskFull), so that the next append
    does not run on from a part."""
    end = stream.seek(0, os.SEEK_END)
    try:
        with reporting_full_disk(path):
            view = memoryview(data)
            while view:           # a write may take a part at a time
                view = view[stream.write(view):]
            if sync:
                os.fsync(stream.fileno())
    except BaseException:
        stream.truncate(end)
        raise


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync, so that it is on disk when this returns."""
    with open(path, "ab", buffering=0) as stream:
        append_whole(stream, (line + "\n").encode("utf-8"), path, sync=True)


def replace_file(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Replace ``path`` with the file ``write`` makes at the path it is given (for writers
    that take a file name, such as safetensors): readers see the old file or the new one,
    never a part."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        with reporting_full_disk(path):
            write(partial)
            with open(partial, "rb+") as stream:
                os.fsync(stream.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def replace_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` with what ``write`` puts into the stream it is given."""
    def write_file(partial: Path) -> None:
        with open(partial, "wb") as stream:
            write(stream)
    replace_file(path, write_file)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    replace_atomically(path, lambda stream: stream.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike, payload: dict | list) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when there is no such file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file under a folder."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as stream:
            os.fsync(stream.fileno())
