"""One training process per run folder.

The lock is an ``flock`` on ``<run folder>/.lock``, which holds the PID of its holder. The
kernel releases it when that process ends, however it ends, so a run killed with SIGKILL leaves
no stale lock: the next run takes it over. With Ray, rank 0 holds it for the whole run (the run
folder is on storage every worker sees).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dice_core.errors import InputError

LOCK_FILE = ".lock"


class RunFolderInUse(InputError):
    pass


class RunFolderLock:
    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.path = Path(run_dir) / LOCK_FILE
        self.enabled = enabled
        self._handle = None

    def __enter__(self) -> RunFolderLock:
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderInUse(
                f"{self.path.parent} is in use by another training process (PID {holder}): "
                "two would write the same checkpoints and MLflow run. Wait for it to finish, or "
                "stop it; this run then resumes from its checkpoints.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
