"""Samples of the machine and of this process, named as MLflow metrics under ``system/``."""
from __future__ import annotations

import psutil
import torch

GIB = 1024 ** 3


class SystemSampler:
    def __init__(self):
        self._process = psutil.Process()
        # psutil measures CPU use between two calls: this first call only starts the interval.
        psutil.cpu_percent(interval=None)

    def sample(self) -> dict[str, float]:
        memory = psutil.virtual_memory()
        values = {
            "system/cpu_percent": psutil.cpu_percent(interval=None),
            "system/process_rss_gib": self._process.memory_info().rss / GIB,
            "system/memory_used_gib": (memory.total - memory.available) / GIB,
            "system/memory_percent": memory.percent,
        }
        if torch.cuda.is_available():
            values["system/gpu_memory_allocated_gib"] = torch.cuda.memory_allocated() / GIB
            values["system/gpu_memory_reserved_gib"] = torch.cuda.memory_reserved() / GIB
        return values
