"""The torch device a setting names: ``auto`` is the GPU when there is one, else the CPU."""
from __future__ import annotations

import torch


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
