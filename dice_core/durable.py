"""Writes that survive a crash: appends that reach the disk, and files replaced whole."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync, so that it is on disk when this returns."""
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(line + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def replace_file(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Replace ``path`` with the file ``write`` makes at the path it is given (for writers
    that take a file name, such as safetensors): readers see the old file or the new one,
    never a part."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    with open(partial, "rb+") as stream:
        os.fsync(stream.fileno())
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
