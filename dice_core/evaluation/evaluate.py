"""The evaluation of a model against the reference: samples (ADM-format .npz and a grid PNG)
and ADM's metrics in the chosen feature network."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dice_core.config import EvaluateParams
from dice_core.data.encoders import decoder_for
from dice_core.devices import pick_device
from dice_core.durable import replace_atomically, write_text_atomic
from dice_core.errors import InputError
from dice_core.metrics import compute_metrics, extract_features, load_reference
from dice_core.metrics.report import NO_REFERENCE_ROWS
from dice_core.models import compile_model

from .classifier import load_classifier, predict
from .reference import feature_network, reference_identity
from .sampling import fixed_labels, image_grid, sample_images


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
        if config.compile:
            compile_model(model)
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
        replace_atomically(out_dir / "grid.png", lambda f: Image.fromarray(
            image_grid(images[:64])).save(f, format="PNG"))
        write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2))
        return metrics


def evaluate_model(model, latents_manifest: dict, config: EvaluateParams, seed: int,
                   out_dir: str | Path, progress: bool = False) -> dict:
    """One evaluation of ``model``; see ``Evaluator``."""
    return Evaluator(latents_manifest, config, seed)(model, out_dir, progress)
