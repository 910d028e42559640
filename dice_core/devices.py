"""The torch device a setting names (``auto`` is the GPU when there is one, else the CPU), and
how the process's CPU memory is kept for reuse."""
from __future__ import annotations

import ctypes
import platform

import torch

# mallopt(3) parameters of glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def reuse_freed_cpu_memory() -> bool:
    """Makes glibc's malloc keep freed memory for the next allocation; True where it could.

    glibc serves each block of 32 MiB or more (a dice-t activation at batch 128) with a fresh
    mmap and unmaps it when freed, so every step faults each such tensor's pages in again
    (eight steps of dice-t at 32x32x1, batch 128, on a 2-core CPU: 7.5-9.0 s a step without
    this, 4.7-5.2 s with it; tests/test_devices.py counts the faults). With mmap off and the
    heap trimmed only once 1 GiB lies free at its top, the pages stay mapped. The cost is
    memory: the process keeps its heap between steps, and fragmentation makes that heap larger
    than the old peak (3.84 GiB against 3.01 GiB peak RSS for that step). It applies to the whole
    process, so entry points call it, not libraries; elsewhere than glibc it does nothing.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))
