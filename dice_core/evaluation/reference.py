"""Reference statistics of the real images, in the chosen feature network, and the identity
an evaluation checks them against."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dice_core.config import EvaluateParams
from dice_core.data import prepared_images, read_manifest
from dice_core.devices import pick_device
from dice_core.errors import InputError
from dice_core.metrics import (
    extract_features,
    load_effnet_lite0,
    load_fid_inception,
    load_reference,
    save_reference,
)
from dice_core.metrics.reference import ADM_ORIGIN, adm_batch_images


def feature_network(config: EvaluateParams):
    device = pick_device(config.device)
    if config.feature_network == "inception":
        return load_fid_inception(config.inception_weights, device)
    return load_effnet_lite0(device)


def reference_identity(latents_manifest: dict, network: str) -> dict:
    """What a reference must have been made for: the network, the image size, the data and
    the encoder whose decoded samples will be compared with it."""
    return {"network": network, "resolution": latents_manifest["resolution"],
            "source": latents_manifest["source"], "encoder": latents_manifest["encoder"]}


def build_reference(config: EvaluateParams, prepared_dir: str | Path,
                    latents_dir: str | Path) -> dict:
    """Features of the real (prepared) images, saved with the identity evaluations check."""
    images, _ = prepared_images(prepared_dir, config.reference_split)
    features = extract_features(feature_network(config), images, config.batch_size)
    meta = reference_identity(read_manifest(latents_dir), config.feature_network)
    save_reference(config.reference, features, meta)
    return {**meta, "count": len(images)}


def reference_from_batch(config: EvaluateParams) -> dict:
    """Our reference made once from the OpenAI ADM batch ``config.reference_batch``: its
    statistics as they are, with the Inception pool features of its ``arr_0`` images for
    precision/recall, and what it was made for (ImageNet at the images' resolution)."""
    if config.feature_network != "inception":
        raise InputError(f"the ADM reference batch {config.reference_batch} holds Inception "
                         "statistics: set evaluate.feature_network to inception "
                         "(--feature-network inception)")
    statistics, meta = load_reference(config.reference_batch, expected={})
    if meta.get("origin") != ADM_ORIGIN:
        raise InputError(f"{config.reference_batch} is not an ADM reference batch (mu, sigma, "
                         "mu_s, sigma_s and arr_0 images); point evaluate.reference_batch to one")
    images = adm_batch_images(config.reference_batch)
    pool = extract_features(feature_network(config), images, config.batch_size).pool
    save_reference(config.reference, replace(statistics, pool=pool), meta)
    return {**meta, "count": len(images)}
