"""Exponential moving average of model weights, through torch's own averaging utilities."""
from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

EMA_DECAY = 0.9999


def create_ema(model: nn.Module, decay: float = EMA_DECAY) -> AveragedModel:
    """A frozen copy of ``model`` whose ``update_parameters(model)`` moves it towards the
    model as ``ema = decay * ema + (1 - decay) * weights``. Its first update copies the weights
    (DiT starts its EMA the same way)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    ema.eval()
    return ema
