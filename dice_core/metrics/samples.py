"""Refuse sample sets that no feature network should see."""
from __future__ import annotations

import numpy as np

from .errors import SampleError

CHUNK = 256  # samples checked at a time: a float copy of 50k images would not fit in memory


def check_samples(images: np.ndarray) -> None:
    """Images must be a NumPy array (N, H, W, C), C 1 or 3, uint8 or float in [0, 255], finite."""
    if not isinstance(images, np.ndarray):
        raise SampleError(f"samples must be a NumPy array, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise SampleError(f"samples must be (N, H, W, C) with N > 0 and C 1 or 3, got shape "
                          f"{images.shape}")
    if images.dtype == np.uint8:
        return
    if not np.issubdtype(images.dtype, np.floating):
        raise SampleError(f"samples must be uint8 or float in [0, 255], got dtype {images.dtype}")
    bad = sum(int((~np.isfinite(images[start:start + CHUNK])).any(axis=(1, 2, 3)).sum())
              for start in range(0, len(images), CHUNK))
    if bad:
        raise SampleError(f"{bad} of {len(images)} samples contain NaN or infinite values "
                          "(diverged sampling?); no metric is computed on them")
