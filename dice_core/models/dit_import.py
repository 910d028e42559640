"""DiT's released checkpoints (facebookresearch/DiT's DiT-XL-2-256x256.pt and -512x512.pt, or
a checkpoint of its train.py) as weights of this project's DiT presets.

The two models have the same tensors under the same names except where DiT uses timm's
modules (PatchEmbed's ``proj``, Mlp's ``fc1``/``fc2``); ``dit_name`` is that mapping, written
once. Every tensor's shape is checked, and the first that does not fit is named. DiT trained on
ImageNet latents of the SD-VAE (scale factor 0.18215, 8x downsampling), with 1000 classes and
the null class, and learned variance: the imported weights record that data.

DiMR's released models are not importable: they predict 4 channels with a fixed variance
under another noise schedule (Stable Diffusion's scaled-linear betas), which would need a
diffusion of their own.
"""
from __future__ import annotations

import math
import os
import pickle
import re

import torch
from torch import nn

from dice_core.errors import InputError

from .provenance import autoencoder_identity
from .registry import build_model, get_preset, list_models, resolved_config

IMAGENET_CLASSES = 1000
SD_VAE_CHANNELS, SD_VAE_DOWNSAMPLING, SD_VAE_SCALE_FACTOR = 4, 8, 0.18215

# our names -> DiT's, where they differ; anchored, so that t_embedder.mlp.0 stays as it is
DIT_NAMES = ((re.compile(r"^x_embedder\."), "x_embedder.proj."),
             (re.compile(r"^(blocks\.\d+\.mlp\.)0\."), r"\g<1>fc1."),
             (re.compile(r"^(blocks\.\d+\.mlp\.)2\."), r"\g<1>fc2."))


def dit_name(ours: str) -> str:
    """DiT's name of our tensor ``ours``."""
    for pattern, replacement in DIT_NAMES:
        ours = pattern.sub(replacement, ours)
    return ours


def read_dit_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a DiT checkpoint: a plain state dict, or the one under ``ema`` (what DiT
    samples with) or ``model``. Read as tensors and plain containers only (no code runs)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise InputError(f"{path} is not a readable PyTorch checkpoint of tensors: "
                         f"{str(error).splitlines()[0]}") from None
    if isinstance(checkpoint, dict):
        checkpoint = next((checkpoint[key] for key in ("ema", "model")
                           if isinstance(checkpoint.get(key), dict)), checkpoint)
    if not isinstance(checkpoint, dict) or "pos_embed" not in checkpoint:
        raise InputError(f"{path} is not a DiT checkpoint: it has no pos_embed (a state dict, "
                         "or one under 'ema' or 'model', of DiT's models.py)")
    return checkpoint


def import_dit(path: str | os.PathLike, preset: str) -> nn.Module:
    """The DiT checkpoint at ``path`` as preset ``preset``'s model, on the CPU, its latent size
    read from ``pos_embed``, recording ImageNet at that resolution through the SD-VAE."""
    if get_preset(preset).family != "dit":
        raise InputError(f"{preset} is a {get_preset(preset).family} model: DiT's checkpoints "
                         f"import as a DiT preset ({', '.join(list_models('dit'))})")
    weights = read_dit_checkpoint(path)
    size = latent_size(path, weights["pos_embed"], resolved_config(preset)["patch_size"])
    model = build_model(preset, in_channels=SD_VAE_CHANNELS, input_size=size,
                        num_classes=IMAGENET_CLASSES)
    model.load_state_dict(fitted_tensors(path, weights, model, preset))
    model.trained_on = {"source": "imagenet", "resolution": size * SD_VAE_DOWNSAMPLING,
                        "latent_shape": [SD_VAE_CHANNELS, size, size],
                        "autoencoder": autoencoder_identity("vae", None, SD_VAE_SCALE_FACTOR)}
    return model


def latent_size(path, pos_embed: torch.Tensor, patch_size: int) -> int:
    tokens = pos_embed.shape[-2] if pos_embed.ndim == 3 else 0
    side = math.isqrt(tokens)
    if side * side != tokens or side == 0:
        raise InputError(f"{path}: pos_embed has shape {tuple(pos_embed.shape)}, not "
                         "(1, tokens, width) of a square grid of DiT's tokens")
    return side * patch_size


def fitted_tensors(path, weights: dict[str, torch.Tensor], model: nn.Module,
                   preset: str) -> dict[str, torch.Tensor]:
    """Our name -> the file's tensor, every tensor's shape checked, in the file's order."""
    expected = {dit_name(name): (name, tensor.shape) for name, tensor in model.state_dict().items()}
    fitted = {}
    for name, tensor in weights.items():
        if name not in expected:
            raise InputError(f"{path}: {name} has no place in {preset}"
                             f"{looks_like(weights, preset)}")
        ours, shape = expected[name]
        if tensor.shape != shape:
            raise InputError(f"{path}: {name} has shape {tuple(tensor.shape)}, {preset} "
                             f"expects {tuple(shape)}{looks_like(weights, preset)}")
        fitted[ours] = tensor
    missing = [name for name in expected if name not in weights]
    if missing:
        raise InputError(f"{path} has no {missing[0]}, which {preset} needs "
                         f"({len(missing)} missing){looks_like(weights, preset)}")
    return fitted


def looks_like(weights: dict[str, torch.Tensor], preset: str) -> str:
    """' (the file looks like <name>)' for the other DiT preset of the file's width, depth and
    patch size, if there is one; else ''."""
    patch = weights.get("x_embedder.proj.weight")
    if patch is None or patch.ndim != 4:
        return ""
    depth = len({name.split(".")[1] for name in weights if name.startswith("blocks.")})
    found = (patch.shape[0], depth, patch.shape[-1])
    matches = [name for name in list_models("dit")
               if tuple(resolved_config(name)[key] for key in ("hidden_size", "depth",
                                                                "patch_size")) == found]
    return f" (the file looks like {matches[0]})" if matches and preset not in matches else ""
