"""The evaluation of a model against the reference: samples (ADM-format .npz and a grid PNG)
and ADM's metrics in the chosen feature network."""
from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import torch

from dice_core.config import EvaluateParams
from dice_core.data.encoders import decoder_for
from dice_core.devices import pick_device
from dice_core.durable import replace_atomically, write_text_atomic
from dice_core.errors import InputError
from dice_core.faults import fault_point
from dice_core.metrics import cfg_suffix, compute_metrics, load_reference, metric_names
from dice_core.metrics.report import NO_REFERENCE_ROWS
from dice_core.models import compile_model

from .classifier import load_classifier
from .reference import feature_network, reference_identity
from .sample_file import write_adm_samples
from .sample_stream import SampleStream
from .sampling import fixed_labels, sample_batches, save_grid


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
        """Samples ``model`` (the EMA weights) at each of ``cfg_scales`` and writes into
        ``out_dir``, for the first (headline) scale: ``samples.npz`` (``arr_0``: uint8 NHWC
        images, ``arr_1``: their classes, as OpenAI's evaluator reads them), ``features.npz``
        (each sample's features and predicted class, for the report's intervals),
        ``grid.png``; and ``metrics.json``: the headline scale's metrics, then each other
        scale's, from the same noise, with its suffix (``fd_effnet_cfg3``)."""
        config = self.config
        if config.compile:
            compile_model(model)
        labels = fixed_labels(config.samples, self.manifest["num_classes"]).numpy()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        headline, *others = config.cfg_scales
        grid, per_sample, metrics = self._evaluate(model, headline, labels, progress,
                                                   out_dir / "samples.npz")
        for scale in others:
            scores = self._evaluate(model, scale, labels, progress)[2]
            metrics |= {key + cfg_suffix(scale, headline): value
                        for key, value in scores.items() if key in self.scale_dependent}
        if self.classifier is not None:
            metrics["classifier_real_accuracy"] = self.classifier_meta["heldout_accuracy"]
        metrics.update(sampler=config.sampler, sampling_steps=config.steps, cfg_scale=headline,
                       cfg_scales=list(config.cfg_scales),
                       guidance_channels=config.guidance_channels)
        fault_point("evaluation")      # samples.npz written, its metrics not yet
        write_evaluation(out_dir, grid, per_sample, metrics)
        return metrics

    @property
    def scale_dependent(self) -> set[str]:
        """The metrics that an evaluation reports once per guidance scale."""
        return set(metric_names(self.config.feature_network).values()) | {"class_accuracy"}

    def _evaluate(self, model, scale: float, labels: np.ndarray, progress: bool,
                  samples_file: Path | None = None):
        """(the first samples, for the grid; per-sample features and predicted classes;
        metrics) at guidance ``scale``. The samples stream, a batch at a time, through the
        feature network and the classifier into ``samples_file`` (ADM's .npz), if given."""
        config = self.config
        stream = SampleStream(self.network, self.classifier, len(labels))
        batches = stream.watch(sample_batches(
            model, self.decoder, labels=torch.from_numpy(labels), seed=self.seed,
            latent_shape=tuple(self.manifest["latent_shape"]), sampler=config.sampler,
            steps=config.steps, batch_size=config.batch_size, progress=progress,
            cfg_scale=scale, guidance_channels=config.guidance_channels))
        if samples_file is None:
            deque(batches, maxlen=0)
        else:
            write_adm_samples(samples_file, labels, batches)
        features = stream.features.result()
        metrics = compute_metrics(self.reference, features, config.feature_network,
                                  fd_square_root=config.fd_square_root,
                                  pr_distances=config.pr_distances)
        per_sample = {"pool": features.pool, "logits": features.logits, "labels": labels,
                      "predicted": stream.predicted}
        if self.classifier is not None:
            metrics["class_accuracy"] = float((per_sample["predicted"] == labels).mean())
        return stream.grid_samples, per_sample, metrics


def write_evaluation(out_dir: Path, grid: np.ndarray, per_sample: dict, metrics: dict) -> None:
    """Beside ``samples.npz``: ``features.npz``, ``grid.png`` (of ``grid``), ``metrics.json``."""
    replace_atomically(out_dir / "features.npz", lambda f: np.savez(
        f, **{k: v for k, v in per_sample.items() if v is not None}))
    save_grid(out_dir / "grid.png", grid)
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2))


def evaluate_model(model, latents_manifest: dict, config: EvaluateParams, seed: int,
                   out_dir: str | Path, progress: bool = False) -> dict:
    """One evaluation of ``model``; see ``Evaluator``."""
    return Evaluator(latents_manifest, config, seed)(model, out_dir, progress)
