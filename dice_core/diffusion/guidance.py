"""Classifier-free guidance (Ho & Salimans 2022) as a model wrapper, so that every sampler
(DDPM, DDIM, DPM-Solver) guides the same way without knowing it.

One convention, DiT's: the guided noise prediction is

    eps = eps_null + s * (eps_cond - eps_null)

so s = 1 is the conditional model itself (no guidance) and s = 0 the unconditional one.
DiMR's (and U-ViT's) released samplers write the same thing as
eps = eps_cond + s' * (eps_cond - eps_null), so their s' is s - 1 here: DiMR's 0.4 is 1.4.

The conditional and null-class passes run as one batch, cat([x, x]) with cat([y, null]), as
DiT's ``forward_with_cfg`` does; the null class is the label ``num_classes`` (the extra row of
``LabelEmbedder`` that label dropout trains). The wrapper draws no noise, so guided and
unguided sampling share every random draw.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dice_core.errors import InputError


class GuidedModel(nn.Module):
    """``model`` guided at ``scale`` on its first ``channels`` noise channels; the other noise
    channels and the learned variance are the conditional pass's."""

    def __init__(self, model, scale: float, channels: int | None, null_class: int):
        super().__init__()
        self.model, self.scale = model, scale
        self.channels, self.null_class = channels, null_class

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(y, self.null_class)
        cond, uncond = self.model(torch.cat([x, x]), torch.cat([t, t]),
                                  torch.cat([y, null])).chunk(2)
        guided_channels = self.channels or x.shape[1]
        eps_cond, eps_null = cond[:, :guided_channels], uncond[:, :guided_channels]
        eps = eps_null + self.scale * (eps_cond - eps_null)
        return torch.cat([eps, cond[:, guided_channels:]], dim=1)


def guided(model, scale: float, channels: int | None = None, null_class: int | None = None):
    """``model`` (any callable ``model(x, t, y)`` returning [eps, variance] channels) under
    classifier-free guidance at ``scale`` (DiT's s; see the module's docstring for DiMR's).

    ``channels`` None guides every latent channel; 3 guides the first three of four, as DiT's
    released sampler does "for exact reproducibility" of its published numbers. ``null_class``
    defaults to ``model.num_classes``. At scale 1 this returns ``model`` itself: no null pass,
    and samples bit-identical to unguided sampling.
    """
    check_scale(scale)
    check_channels(model, channels)
    if scale == 1:
        return model
    return GuidedModel(model, scale, channels, null_class_of(model, null_class))


def check_scale(scale: float) -> None:
    if not (math.isfinite(scale) and scale >= 0):
        raise InputError(f"the guidance scale must be a number >= 0 (1 = no guidance), got "
                         f"{scale!r}: pass 1 for plain conditional samples, more to guide")


def check_channels(model, channels: int | None) -> None:
    latent = getattr(model, "in_channels", None)
    if channels is not None and (channels < 1 or (latent and channels > latent)):
        raise InputError(f"guidance_channels is {channels}, but the model has {latent} latent "
                         f"channels: set it between 1 and {latent}, or null to guide them all")


def null_class_of(model, null_class: int | None) -> int:
    if null_class is not None:
        return null_class
    if getattr(model, "class_dropout_prob", None) == 0:
        raise InputError("this model was trained without label dropout (class_dropout_prob "
                         "0), so it has no null class to guide with: sample it at cfg 1")
    if not hasattr(model, "num_classes"):
        raise InputError(f"{type(model).__name__} has no num_classes: pass null_class, the "
                         "label of its null (unconditional) class")
    return model.num_classes
