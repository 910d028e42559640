"""The weights a command samples from: ``--checkpoint FILE``, or the EMA weights of the latest
checkpoint of the model's run; refused unless they are the preset's and fit the training data
(train.data), before anything is loaded."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from dice_core.config import FIRST_TRAINING_SEED, Params, run_name
from dice_core.data import read_latent_manifest
from dice_core.devices import pick_device
from dice_core.errors import InputError
from dice_core.models.provenance import check_fits
from dice_core.models.serialization import load_model
from dice_core.training import ema_weights_path


def weights_path(checkpoint: str | None, model_name: str, training_seed: int, runs: str) -> Path:
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise InputError(f"--checkpoint {checkpoint}: no such file")
        return Path(checkpoint)
    run_dir = Path(runs) / run_name(model_name, training_seed)
    weights = ema_weights_path(run_dir)
    if weights is None or not weights.is_file():
        raise InputError(f"no EMA weights for {model_name} (training seed {training_seed}) in "
                         f"{run_dir}: train it first (dice train --model {model_name} "
                         f"--training-seed {training_seed}) or pass --checkpoint FILE")
    return weights


def checked_weights(checkpoint: str | None, model_name: str, params: Params,
                    training_seed: int = FIRST_TRAINING_SEED) -> tuple[Path, dict]:
    """(the weights file, the manifest of the latents of train.data, which they fit)."""
    manifest = read_latent_manifest(params.train.data)
    weights = weights_path(checkpoint, model_name, training_seed, params.train.output)
    check_fits(weights, model_name, manifest, params.train.data)
    return weights, manifest


def load_sampler(weights: Path, device: str) -> nn.Module:
    """The model of ``weights`` in eval mode on ``device``."""
    return load_model(weights, pick_device(device)).eval()
