"""WebDataset shard sets: atomic shard files, a journal that lets a killed stage resume,
the manifest, and reads that are checked against the manifest.

A shard set is a folder of ``shard-%06d.tar`` files (``.npy`` payloads and a ``.cls`` label per
sample, nothing pickled) plus ``manifest.json``. A shard is written to ``<name>.partial`` and
renamed only once complete, so a half-written shard never carries a final name. Each finished
shard is appended to ``journal.jsonl``; a re-run with the same fingerprint keeps the shards the
journal vouches for and continues after them, any other re-run starts from an empty folder.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from webdataset.tariterators import base_plus_ext, tar_file_iterator
from webdataset.writer import TarWriter

from ..durable import append_line, replace_atomically, write_json_atomic, write_text_atomic
from .errors import DataError

SHARD_NAME = "shard-{:06d}.tar"
MANIFEST = "manifest.json"
SEAL = "manifest_sha256"        # the checksum of the rest of the manifest
JOURNAL = "journal.jsonl"


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def make_sample(key: str, label: int, arrays: dict[str, np.ndarray]) -> dict:
    sample = {"__key__": key, "cls": str(int(label)).encode()}
    sample.update({f"{name}.npy": encode_npy(array) for name, array in arrays.items()})
    return sample


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_shard(path: Path, samples: Iterable[dict]) -> dict:
    """Writes samples as a tar under a temporary name, fsyncs, renames; returns its record."""
    count = 0

    def write(stream) -> None:
        nonlocal count
        # A fixed mtime makes the bytes (and so the checksum) a function of the content.
        writer = TarWriter(stream, encoder=False, mtime=0.0)
        try:
            for sample in samples:
                writer.write(sample)
                count += 1
        finally:
            writer.close()
    replace_atomically(path, write)
    data = path.read_bytes()
    return {"name": path.name, "count": count, "size": len(data), "sha256": sha256_of(data)}


def group_files(entries) -> list[tuple[str, dict[str, bytes]]]:
    """Tar entries -> (key, {extension: bytes}); a sample's files are consecutive."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    for entry in entries:
        key, extension = base_plus_ext(entry["fname"])
        if not samples or samples[-1][0] != key:
            samples.append((key, {}))
        samples[-1][1][extension] = entry["data"]
    return samples


def read_shard(path: str | os.PathLike,
               record: dict) -> list[tuple[str, int, dict[str, np.ndarray]]]:
    """Reads one shard after checking its size and checksum against its manifest record.

    Returns (key, label, arrays) per sample, in the shard's order.
    """
    path = Path(path)
    redo = "re-run the stage that wrote it (`dvc repro`) to rebuild the shard set"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"shard {path} listed in the manifest is missing; {redo}") from None
    if len(data) != record["size"] or sha256_of(data) != record["sha256"]:
        raise DataError(f"shard {path} is truncated or changed: {len(data)} bytes with a "
                        f"different checksum from the manifest's ({record['size']} bytes); {redo}")
    try:
        samples = [(key, int(files["cls"]),
                    {name[:-4]: decode_npy(value) for name, value in files.items()
                     if name.endswith(".npy")})
                   for key, files in group_files(tar_file_iterator(io.BytesIO(data)))]
    except (tarfile.TarError, ValueError, KeyError, EOFError) as error:
        raise DataError(f"shard {path} cannot be read ({error}); {redo}") from None
    if len(samples) != record["count"]:
        raise DataError(f"shard {path} holds {len(samples)} samples, its manifest says "
                        f"{record['count']}; {redo}")
    return samples


def seal_manifest(manifest: dict) -> dict:
    """``manifest`` (as JSON reads it back) with the checksum of all the rest of it, which
    ``read_manifest`` checks: an edit by hand (a class count, a shard's record, the latent
    shape) is refused instead of misleading the stages that read it."""
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != SEAL}))
    return {**body, SEAL: sha256_of(json.dumps(body, sort_keys=True).encode())}


def read_manifest(folder: str | os.PathLike, check_files: bool = True) -> dict:
    """Loads ``manifest.json`` and checks that every shard it lists exists with its size, and
    that the manifest is as the stage wrote it."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: {folder} is not a finished shard set; run the stage "
                        "that writes it (`dvc repro`) first")
    try:
        manifest = json.loads(path.read_text())
        shards = manifest["shards"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path} is not a valid manifest ({error}); re-run the stage that "
                        "wrote it") from None
    if check_files:
        for record in shards:
            shard = folder / record["name"]
            size = shard.stat().st_size if shard.is_file() else None
            if size != record["size"]:
                found = "missing" if size is None else f"{size} bytes"
                raise DataError(f"{path} does not match its shards: {record['name']} is {found}, "
                                f"the manifest says {record['size']} bytes; re-run the stage "
                                "that wrote it (`dvc repro`)")
    if manifest.get(SEAL) != seal_manifest(manifest)[SEAL]:
        stage = "encode" if "encoder" in manifest else "prepare"
        raise DataError(f"{path} is not as `dvc repro {stage}` wrote it (edited since, or written "
                        "by an older version of this pipeline): its checksum does not match its "
                        f"content, so it may misdescribe its shards. Run `dvc repro {stage}` to "
                        "write the shard set again.")
    return manifest


def summarize(records: list[dict]) -> dict:
    """Counts per split and per class, and the skipped inputs, over shard records."""
    splits: dict[str, dict] = {}
    for record in records:
        split = splits.setdefault(record["split"], {"count": 0, "classes": Counter(),
                                                    "skipped": []})
        split["count"] += record["count"]
        split["classes"].update({int(k): v for k, v in record["classes"].items()})
        split["skipped"].extend(record.get("skipped", []))
    return {name: {"count": s["count"],
                   "classes": {str(k): s["classes"][k] for k in sorted(s["classes"])},
                   "skipped": len(s["skipped"]), "skipped_examples": s["skipped"][:20]}
            for name, s in splits.items()}


class ShardSetBuilder:
    """Builds a shard set in ``folder`` shard by shard, resuming a killed run.

    ``fingerprint`` is everything the shards' content depends on (parameters, the input's
    identity); a journal written under another fingerprint is discarded with its shards.
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: dict):
        self.folder = Path(folder)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob("*.partial"):
            leftover.unlink()
        self.records = self._recover()

    @property
    def journal(self) -> Path:
        return self.folder / JOURNAL

    def _recover(self) -> list[dict]:
        lines = self.journal.read_text().splitlines() if self.journal.is_file() else []
        header = json.loads(lines[0]) if lines else None
        if header != {"fingerprint": self.fingerprint}:
            self._clear()
            return []
        records = []
        for index, line in enumerate(lines[1:]):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a journal line cut short by the kill: that shard is redone
            shard = self.folder / record["name"]
            if (record["name"] != SHARD_NAME.format(index) or not shard.is_file()
                    or sha256_of(shard.read_bytes()) != record["sha256"]):
                break
            records.append(record)
        self._rewrite_journal(records)
        for stale in self.folder.glob("shard-*.tar"):
            if int(stale.stem.split("-")[1]) >= len(records):
                stale.unlink()
        return records

    def _clear(self) -> None:
        for pattern in ("shard-*.tar", MANIFEST, JOURNAL):
            for path in self.folder.glob(pattern):
                path.unlink()
        self._rewrite_journal([])

    def _rewrite_journal(self, records: list[dict]) -> None:
        lines = [json.dumps({"fingerprint": self.fingerprint}, sort_keys=True)]
        lines += [json.dumps(record, sort_keys=True) for record in records]
        write_text_atomic(self.journal, "\n".join(lines) + "\n")

    def is_done(self, index: int) -> bool:
        return index < len(self.records)

    def add(self, index: int, samples: Iterable[dict], **extra) -> dict:
        """Writes shard ``index`` (the next one) and records it; ``extra`` joins its record."""
        if index != len(self.records):
            raise RuntimeError(f"shard {index} written out of order (next is {len(self.records)})")
        record = {**write_shard(self.folder / SHARD_NAME.format(index), samples), **extra}
        record = json.loads(json.dumps(record))  # as it will read back: string keys
        append_line(self.journal, json.dumps(record, sort_keys=True))
        self.records.append(record)
        return record

    def finish(self, **fields) -> dict:
        """Writes the manifest (the records, their per-split summary and ``fields``)."""
        params_hash = sha256_of(json.dumps(self.fingerprint, sort_keys=True).encode())
        manifest = {**fields, "fingerprint": self.fingerprint, "params_hash": params_hash,
                    "splits": summarize(self.records), "shards": self.records}
        manifest = seal_manifest(manifest)
        write_json_atomic(self.folder / MANIFEST, manifest)
        return manifest
