"""A model's weights, the preset that built it and the data it was trained on, in one
safetensors file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dice_core.durable import replace_file
from dice_core.errors import InputError

from .registry import build_model


def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the weights with the preset name, its resolved config and, when the model has
    one, its ``trained_on`` (the data's identity: see provenance.py) as metadata.

    The file appears under its final name only once complete (written aside, then renamed).
    """
    preset = getattr(model, "preset_name", None)
    if preset is None:
        raise ValueError("save_model needs a model made by build_model (it records the preset)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous().cpu()
               for name, tensor in model.state_dict().items()}
    metadata = {"preset": preset, "config": json.dumps(model.preset_config, sort_keys=True)}
    if getattr(model, "trained_on", None) is not None:
        metadata["data"] = json.dumps(model.trained_on, sort_keys=True)
    replace_file(path, lambda partial: save_file(tensors, str(partial), metadata=metadata))


def _file_metadata(path: str | os.PathLike) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError as error:
        raise InputError(f"{path} is not a readable safetensors file ({error}): it is damaged "
                         "or something else; train again or pass another file") from None
    if "preset" not in metadata or "config" not in metadata:
        raise InputError(f"{path} was not written by save_model: it names no preset/config")
    return metadata


def read_metadata(path: str | os.PathLike) -> tuple[str, dict]:
    metadata = _file_metadata(path)
    return metadata["preset"], json.loads(metadata["config"])


def read_trained_on(path: str | os.PathLike) -> dict | None:
    """The identity of the data the weights were trained on; None in files written before
    it was recorded."""
    data = _file_metadata(path).get("data")
    return None if data is None else json.loads(data)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the preset recorded in the file and load its weights."""
    preset, config = read_metadata(path)
    model = build_model(preset, **config)
    model.load_state_dict(read_weights(path))
    model.trained_on = read_trained_on(path)
    return model.to(device)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as error:
        raise InputError(f"{path} is damaged ({error}): train again or pass another file"
                         ) from None
