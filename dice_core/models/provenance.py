"""What a weights file was trained on, and the check that it fits a preset and a latent data
set before it samples, is evaluated or is trained further."""
from __future__ import annotations

import json
import os
import sys

from torch import nn

from dice_core.errors import InputError

from .registry import builder_defaults
from .serialization import read_metadata, read_trained_on, read_weights


def autoencoder_identity(encoder: str, identity: str | None, scale_factor: float) -> str:
    """The autoencoder of a latent data set, as weights record it: an autoencoder trained here
    by its weights' checksum; a pretrained one (the SD-VAE, which is 0.18215) by its scale
    factor, the one thing a data set encoded by it records."""
    if encoder == "pixels":
        return "pixels"
    if identity:
        return f"trained here, weights sha256 {identity}"
    return f"pretrained, scale factor {scale_factor:g}"


def data_identity(manifest: dict) -> dict:
    """What weights trained on the latent shard set of ``manifest`` record: its source, image
    resolution, latent shape and autoencoder."""
    return {"source": manifest["source"]["name"], "resolution": manifest["resolution"],
            "latent_shape": list(manifest["latent_shape"]),
            "autoencoder": autoencoder_identity(manifest["encoder"],
                                                manifest.get("encoder_identity"),
                                                manifest["scale_factor"])}


def check_fits(path: str | os.PathLike, model_name: str, manifest: dict,
               data_dir: str | os.PathLike) -> None:
    """Refuses the weights at ``path`` unless they are preset ``model_name``'s, trained on the
    data of ``manifest`` (the latents in ``data_dir``). A file written before weights recorded
    their data is taken with a warning, and checked by its latent shape and classes alone."""
    preset, config = read_metadata(path)
    if preset != model_name:
        raise InputError(f"{path} holds weights of {preset}, not of {model_name}: pass --model "
                         f"{preset}, or a checkpoint of {model_name}")
    recorded, expected = read_trained_on(path), data_identity(manifest)
    if recorded is None:
        print(f"warning: {path} does not record the data it was trained on (it was written "
              f"before weights recorded it); assuming it fits {data_dir}", file=sys.stderr)
    elif recorded != expected:
        differences = "; ".join(f"{key} {recorded.get(key)!r} (the data's: {value!r})"
                                for key, value in expected.items() if recorded.get(key) != value)
        raise InputError(f"{path} was trained on other data than {data_dir}: {differences}. "
                         "Point train.data at the latents it was trained on, or train on these "
                         "(dvc repro train)")
    check_shape(path, {**builder_defaults(preset), **config}, manifest, data_dir)


def check_shape(path, config: dict, manifest: dict, data_dir) -> None:
    shape = (config["in_channels"], config["input_size"], config["input_size"])
    if shape != tuple(manifest["latent_shape"]):
        raise InputError(f"{path} was trained on latents of shape {shape}, but {data_dir} holds "
                         f"{tuple(manifest['latent_shape'])} ({manifest['encoder']}): retrain "
                         "on these latents (dvc repro train)")
    if config["num_classes"] != manifest["num_classes"]:
        raise InputError(f"{path} knows {config['num_classes']} classes, but {data_dir} holds "
                         f"{manifest['num_classes']}: retrain on these latents (dvc repro train)")


def start_from(model: nn.Module, path: str | os.PathLike, manifest: dict,
               data_dir: str | os.PathLike) -> None:
    """Loads the weights at ``path`` into ``model`` (made by build_model), the start of a
    fine-tuning run: refused unless they fit (``check_fits``) and were built with the same
    config."""
    check_fits(path, model.preset_name, manifest, data_dir)
    defaults = builder_defaults(model.preset_name)
    saved = json.loads(json.dumps({**defaults, **read_metadata(path)[1]}))
    built = json.loads(json.dumps({**defaults, **model.preset_config}))
    differences = [f"{key} {saved.get(key)!r} (this run's: {built.get(key)!r})"
                   for key in sorted(set(saved) | set(built)) if saved.get(key) != built.get(key)]
    if differences:
        raise InputError(f"{path} was built with other settings of {model.preset_name}: "
                         f"{'; '.join(differences)}. Set train.model_overrides (or the model's "
                         "train.per_model entry) to the weights' values")
    model.load_state_dict(read_weights(path))
