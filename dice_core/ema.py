"""Exponential moving average of model weights, through torch's own averaging utilities."""
from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

EMA_DECAY = 0.9999


def _in_ema_dtype(multi_avg_fn):
    """Casts the live weights to the EMA's dtype first: mixed-precision training keeps fp16 or
    bf16 weights, and an average moving by 1e-4 per step needs float32 to move at all."""
    def update(ema_params, model_params, num_averaged):
        multi_avg_fn(ema_params, [p.to(e.dtype) for p, e in zip(model_params, ema_params)],
                     num_averaged)
    return update


def create_ema(model: nn.Module, decay: float = EMA_DECAY) -> AveragedModel:
    """A frozen copy of ``model`` whose ``update_parameters(model)`` moves it towards the
    model as ``ema = decay * ema + (1 - decay) * weights``. Its first update copies the weights
    (DiT starts its EMA the same way). Create it from the float32 model: it stays float32
    whatever precision the model is later trained in."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    ema = AveragedModel(model, multi_avg_fn=_in_ema_dtype(get_ema_multi_avg_fn(decay)),
                        use_buffers=True)
    ema.requires_grad_(False)
    ema.eval()
    return ema
