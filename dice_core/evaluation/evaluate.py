"""Reference statistics of the real images, and the evaluation of a model against them:
samples (ADM-format .npz and a grid PNG) and ADM's metrics in the chosen feature network."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from dice_core.config import EvaluateParams
from dice_core.data import read_manifest, read_shard
from dice_core.data.encoders import decoder_for
from dice_core.devices import pick_device
from dice_core.durable import replace_atomically, write_text_atomic
from dice_core.errors import InputError
from dice_core.metrics import (compute_metrics, extract_features, load_effnet_lite0,
                               load_fid_inception, load_reference, save_reference)
from dice_core.metrics.reference import ADM_ORIGIN, adm_batch_images
from dice_core.metrics.report import NO_REFERENCE_ROWS

from .classifier import load_classifier, predict
from .sampling import fixed_labels, image_grid, sample_images


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


def prepared_images(prepared_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All prepared images of ``split`` (uint8 NHWC) and their labels."""
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    samples = [(arrays["image"], label) for record in manifest["shards"]
               if record["split"] == split
               for _, label, arrays in read_shard(prepared_dir / record["name"], record)]
    if not samples:
        raise InputError(f"{prepared_dir} has no '{split}' images; check prepare.splits")
    return np.stack([s[0] for s in samples]), np.array([s[1] for s in samples], np.int64)


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


class Evaluator:
    """Everything an evaluation needs besides the model, loaded once (the reference, checked
    against the data; the decoder; the feature network; the class-accuracy model, if any), so
    that training can evaluate every ``eval_every`` steps without loading them again."""

    def __init__(self, latents_manifest: dict, config: EvaluateParams, seed: int):
        self.manifest, self.config, self.seed = latents_manifest, config, seed
        self.reference, _ = load_reference(
            config.reference, reference_identity(latents_manifest, config.feature_network))
        if self.reference.pool is None:
            print(f"warning: precision and recall against {config.reference} are "
                  f"{NO_REFERENCE_ROWS}")
        self.decoder = decoder_for(latents_manifest, config.device)
        self.network = feature_network(config)
        self.classifier = None
        if config.classifier and Path(config.classifier).is_file():
            self.classifier, self.classifier_meta = load_classifier(
                config.classifier, pick_device(config.device))
            if self.classifier_meta["num_classes"] != latents_manifest["num_classes"]:
                raise InputError(
                    f"the classifier {config.classifier} knows "
                    f"{self.classifier_meta['num_classes']} classes, the data "
                    f"{latents_manifest['num_classes']}; retrain it (dvc repro classifier)")

    def __call__(self, model, out_dir: str | Path, progress: bool = False) -> dict:
        """Samples ``model`` (the EMA weights) and writes into ``out_dir``: ``samples.npz``
        (``arr_0``: uint8 NHWC images, ``arr_1``: their classes, as OpenAI's evaluator
        reads them), ``features.npz`` (each sample's features and predicted class, for the
        report's intervals), ``grid.png`` and ``metrics.json``."""
        config, num_classes = self.config, self.manifest["num_classes"]
        images = sample_images(model, self.decoder, count=config.samples,
                               num_classes=num_classes, seed=self.seed,
                               latent_shape=tuple(self.manifest["latent_shape"]),
                               sampler=config.sampler, steps=config.steps,
                               batch_size=config.batch_size, progress=progress)
        labels = fixed_labels(config.samples, num_classes).numpy()
        features = extract_features(self.network, images, config.batch_size)
        metrics = compute_metrics(self.reference, features, config.feature_network,
                                  fd_square_root=config.fd_square_root,
                                  pr_distances=config.pr_distances)
        per_sample = {"pool": features.pool, "logits": features.logits, "labels": labels}
        if self.classifier is not None:
            per_sample["predicted"] = predict(self.classifier, images)
            metrics["class_accuracy"] = float((per_sample["predicted"] == labels).mean())
            metrics["classifier_real_accuracy"] = self.classifier_meta["heldout_accuracy"]
        metrics.update(sampler=config.sampler, sampling_steps=config.steps)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        replace_atomically(out_dir / "samples.npz",
                           lambda f: np.savez(f, arr_0=images, arr_1=labels))
        replace_atomically(out_dir / "features.npz", lambda f: np.savez(
            f, **{k: v for k, v in per_sample.items() if v is not None}))
        Image.fromarray(image_grid(images[:64])).save(out_dir / "grid.png")
        write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2))
        return metrics


def evaluate_model(model, latents_manifest: dict, config: EvaluateParams, seed: int,
                   out_dir: str | Path, progress: bool = False) -> dict:
    """One evaluation of ``model``; see ``Evaluator``."""
    return Evaluator(latents_manifest, config, seed)(model, out_dir, progress)
