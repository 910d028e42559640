"""torch.compile for a model that DeepSpeed, the EMA and the samplers keep using as it is."""
from __future__ import annotations

import torch
from torch import nn


def compile_model(model: nn.Module) -> nn.Module:
    """Compiles ``model``'s forward passes in place (``forward``, and DICE's multi-stage
    ``forward_stages``): the module, its parameters and its state-dict keys stay the same, so
    DeepSpeed, checkpoints and the EMA see the model they know. Compiling happens at the
    first call; a second ``compile_model`` of the same model does nothing."""
    if getattr(model, "is_compiled", False):
        return model
    model.forward = torch.compile(model.forward)
    if hasattr(model, "forward_stages"):
        model.forward_stages = torch.compile(model.forward_stages)
    model.is_compiled = True
    return model
