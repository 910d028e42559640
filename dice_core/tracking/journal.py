"""The tracker's durable queue: records not yet accepted by MLflow, in the order they were made."""
from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from dice_core.durable import append_line, fsync_tree, reporting_full_disk, write_text_atomic

PENDING_FILE = "pending.jsonl"
PENDING_ARTIFACTS = "pending_artifacts"


class Journal:
    """JSON records in ``state_dir/pending.jsonl``, one a line, on disk before ``append`` returns.

    Files to upload live in ``state_dir/pending_artifacts/<id>/`` until sent, so the caller may
    overwrite or delete its own copy at once. A line cut short by a crash is skipped on load.
    """

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / PENDING_FILE
        self.artifacts_dir = Path(state_dir) / PENDING_ARTIFACTS
        self.records = self._load()

    def _load(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def append(self, record: dict) -> None:
        append_line(self.path, json.dumps(record))
        self.records.append(record)

    def store_file(self, name: str, write: Callable[[Path], None]) -> str:
        """Let ``write`` create ``name`` (a file or a folder) in a fresh folder of the journal's;
        returns the key that ``local_path`` turns back into its path."""
        key = f"{uuid.uuid4().hex}/{name}"
        path = self.local_path(key)
        path.parent.mkdir(parents=True)
        try:
            with reporting_full_disk(path):
                write(path)
                fsync_tree(path)
        except BaseException:
            shutil.rmtree(path.parent, ignore_errors=True)
            raise
        return key

    def local_path(self, key: str) -> Path:
        return self.artifacts_dir / key

    def drop_first(self, count: int) -> None:
        """Forget the first ``count`` records (sent, or refused for good) and their files."""
        if count == 0:
            return
        done, self.records = self.records[:count], self.records[count:]
        write_text_atomic(self.path, "".join(json.dumps(record) + "\n" for record in self.records))
        for record in done:
            if "local" in record:
                shutil.rmtree(self.local_path(record["local"]).parent, ignore_errors=True)
