"""Exponential moving average of model weights, through torch's own averaging utilities."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warmed_up_decay(decay: float, num_averaged: int) -> float:
    """min(decay, (1 + n) / (10 + n)): an EMA whose horizon grows with the run, so that a short
    run does not keep most of its zero-output initial weights (0.9999^300 = 97%)."""
    return min(decay, (1 + num_averaged) / (10 + num_averaged))


def _ema_update(decay: float, warmup: bool):
    """``ema = d * ema + (1 - d) * weights``, the live weights cast to the EMA's dtype first:
    mixed-precision training keeps fp16 or bf16 weights, and an average moving by 1e-4 per
    step needs float32 to move at all. Without warm-up this is torch's own EMA update."""
    @torch.no_grad()
    def update(ema_params, model_params, num_averaged):
        d = warmed_up_decay(decay, int(num_averaged)) if warmup else decay
        current = [p.to(e.dtype) for p, e in zip(model_params, ema_params)]
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, current, 1 - d)
        else:   # integer buffers, as torch's own update treats them
            for averaged, live in zip(ema_params, current):
                averaged.copy_(averaged * d + live * (1 - d))
    return update


def create_ema(model: nn.Module, decay: float, warmup: bool
               ) -> AveragedModel:
    """A frozen copy of ``model`` whose ``update_parameters(model)`` moves it towards the
    model as ``ema = decay * ema + (1 - decay) * weights`` (with ``warmup``, the decay of
    ``warmed_up_decay``). Its first update copies the weights (DiT starts its EMA the same
    way). Create it from the float32 model: it stays float32 whatever precision the model is
    later trained in."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    ema = AveragedModel(model, multi_avg_fn=_ema_update(decay, warmup), use_buffers=True)
    ema.requires_grad_(False)
    ema.eval()
    return ema
