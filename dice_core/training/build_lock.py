"""Build locks that a killed run left behind, cleared before an engine starts.

torch builds a C++ extension (DeepSpeed's CPU op, at the first engine start) under a lock,
``<TORCH_EXTENSIONS_DIR>/<op>/lock``, a plain file made by exclusive create and removed when the
build ends; every other process waits until it is gone. A run killed during the build leaves
it, and each later start would wait on it forever, silently. The lock names no process, but
the process that builds keeps it open until it removes it, and ninja and the compiler run with
their working directory in the build folder: a lock that no live process has open, with no
other file in its folder open and no working directory there, is stale.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

POLL_SECONDS = 1.0


def clear_stale_build_locks(root: Path | None = None, poll_seconds: float = POLL_SECONDS) -> None:
    """Remove each stale lock under the extensions root (reported), and wait, saying so, while
    a live build holds one."""
    if not Path("/proc/self").is_dir():       # no /proc to tell a live build by: torch waits
        return
    for lock in build_locks(root or extensions_root()):
        wait_or_clear(lock, poll_seconds)


def extensions_root() -> Path:
    from torch.utils.cpp_extension import get_default_build_root
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def build_locks(root: Path) -> list[Path]:
    """``root/<op>/lock``, and ``root/<python>_<device>/<op>/lock`` in torch's default root."""
    return sorted([*root.glob("*/lock"), *root.glob("*/*/lock")])


def wait_or_clear(lock: Path, poll_seconds: float) -> None:
    """Wait while a live process builds in the lock's folder; remove the lock once two looks,
    ``poll_seconds`` apart, found none (torch closes it a moment before it removes it)."""
    announced = False
    unheld = None
    while (seen := identity(lock)) is not None:
        holders = processes_in(lock.parent)
        if not holders and unheld == seen:
            remove_stale(lock, seen)
            return
        if holders and not announced:
            print(f"waiting for the build in {lock.parent} to end: its lock {lock} is held by "
                  f"{', '.join(f'PID {pid} ({name})' for pid, name in holders.items())}; "
                  "DeepSpeed's CPU op takes about 1.5 min to build on 2 cores",
                  file=sys.stderr, flush=True)
            announced = True
        unheld = None if holders else seen
        time.sleep(poll_seconds)


def identity(path: Path) -> tuple[int, int] | None:
    """Inode and change time: another lock made after this one was removed differs."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_ctime_ns


def remove_stale(lock: Path, seen: tuple[int, int]) -> None:
    if identity(lock) != seen:        # another process cleared it and took a new lock meanwhile
        return
    lock.unlink(missing_ok=True)
    print(f"warning: removed the stale build lock {lock}: no live process builds in "
          f"{lock.parent} (a run killed while building left it); the build starts again",
          file=sys.stderr, flush=True)


def processes_in(folder: Path) -> dict[int, str]:
    """PID -> command name of each live process with a file under ``folder`` open or its
    working directory there (processes of other users, whose links /proc hides, are not
    seen)."""
    folder = str(folder.resolve())
    found = {}
    for process in Path("/proc").iterdir():
        if process.name.isdigit() and any(target == folder or target.startswith(folder + "/")
                                           for target in link_targets(process)):
            found[int(process.name)] = command_name(process)
    return found


def link_targets(process: Path) -> list[str]:
    """Where the process's working directory and open files are."""
    try:
        links = [process / "cwd", *(process / "fd").iterdir()]
    except OSError:                     # gone, or another user's
        return []
    targets = []
    for link in links:
        try:
            targets.append(os.readlink(link))
        except OSError:                 # closed or gone meanwhile
            continue
    return targets


def command_name(process: Path) -> str:
    try:
        return (process / "comm").read_text().strip()
    except OSError:
        return "gone"
