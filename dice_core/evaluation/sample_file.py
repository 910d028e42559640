"""Sample sets in the format of OpenAI's ADM evaluator: an .npz of ``arr_0`` (uint8 NHWC images)
and ``arr_1`` (their classes), written as the batches come, so that a set of 50,000 never sits in
memory, and byte for byte the same for the same samples (no time stamps)."""
from __future__ import annotations

import itertools
import os
import zipfile
from collections.abc import Iterable
from typing import BinaryIO

import numpy as np

from dice_core.durable import replace_atomically

FIXED_TIME = (1980, 1, 1, 0, 0, 0)    # the zip format's earliest: no time of writing


def write_adm_samples(path: str | os.PathLike, labels: np.ndarray,
                      batches: Iterable[np.ndarray]) -> None:
    """Replaces ``path`` with the images of ``batches`` (uint8 NHWC, ``len(labels)`` in all) and
    ``labels``, drawing each batch only when the one before is written."""
    replace_atomically(path, lambda stream: write_npz(stream, labels, batches))


def write_npz(stream: BinaryIO, labels: np.ndarray, batches: Iterable[np.ndarray]) -> None:
    batches = iter(batches)
    first = next(batches, None)
    if first is None or first.dtype != np.uint8 or first.ndim != 4:
        raise ValueError(f"samples must be uint8 NHWC batches, got {first!r:.80}")
    shape, written = (len(labels), *first.shape[1:]), 0
    with zipfile.ZipFile(stream, "w", allowZip64=True) as archive:
        with open_array(archive, "arr_0", first.dtype, shape) as entry:
            for batch in itertools.chain([first], batches):
                if batch.dtype != first.dtype or batch.shape[1:] != first.shape[1:]:
                    raise ValueError(f"a batch of {batch.dtype} {batch.shape} among "
                                     f"{first.dtype} {first.shape}")
                entry.write(np.ascontiguousarray(batch).tobytes())
                written += len(batch)
        if written != len(labels):
            raise ValueError(f"{written} samples for {len(labels)} labels")
        with open_array(archive, "arr_1", labels.dtype, labels.shape) as entry:
            entry.write(np.ascontiguousarray(labels).tobytes())


def open_array(archive: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple) -> BinaryIO:
    """An .npy entry of ``archive`` with its header written: the array's bytes follow."""
    entry = archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_TIME), "w",
                         force_zip64=True)
    np.lib.format.write_array_header_1_0(entry, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": shape})
    return entry
