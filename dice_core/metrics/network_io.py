"""What every feature network takes and gives.

A network takes images as uint8, or float in [0, 255], NHWC with 1 (grey) or 3 channels, and
returns ``NetworkFeatures``: the pooled features (Frechet distance, precision/recall), the
class logits (the classifier score) and a flattened mid-level spatial map (spatial FD).
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class NetworkFeatures(NamedTuple):
    pool: torch.Tensor     # (N, D)
    logits: torch.Tensor   # (N, classes)
    spatial: torch.Tensor  # (N, S)


def to_rgb_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 or float NHWC in [0, 255], grey or RGB -> float32 NCHW RGB, still in [0, 255]."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected NHWC images with 1 or 3 channels, got shape {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1 ``ResizeBilinear`` (align_corners=False, no half-pixel centres), which
    ADM's Inception graph applies to its input: output pixel i samples input i * in/out.
    PyTorch's bilinear mode samples (i + 0.5) * in/out - 0.5 instead, half a pixel apart."""
    def axis(in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, dtype=torch.float32, device=x.device) * (in_size / size)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=in_size - 1)
        return lo, hi, src - lo
    y_lo, y_hi, dy = axis(x.shape[2])
    x_lo, x_hi, dx = axis(x.shape[3])
    top = x[:, :, y_lo]
    bottom = x[:, :, y_hi]
    rows = top + (bottom - top) * dy.view(1, 1, -1, 1)
    left = rows[..., x_lo]
    right = rows[..., x_hi]
    return left + (right - left) * dx


def channels_last_flat(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W*C) in TensorFlow's NHWC order, so spatial statistics line up
    with ones computed by ADM's TensorFlow evaluator."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
