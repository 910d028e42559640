"""All metrics of one sample set against a reference, named after the feature network.

Only Inception results carry the names ADM's are known by (``fid``, ``sfid``,
``inception_score``, ``precision``, ``recall``); another network's are suffixed with its name
(``fd_effnet``, ``sfd_effnet``, ``is_effnet``, ``precision_effnet``, ``recall_effnet``) so that no
one mistakes them for FID.
"""
from __future__ import annotations

import torch

from .adm import frechet_distance_to_features, inception_score, precision_recall
from .errors import MetricsError
from .feature_set import FeatureSet

INCEPTION = "inception"


def metric_names(network_name: str) -> dict[str, str]:
    if network_name == INCEPTION:
        return {"fd": "fid", "sfd": "sfid", "is": "inception_score",
                "precision": "precision", "recall": "recall"}
    return {"fd": f"fd_{network_name}", "sfd": f"sfd_{network_name}",
            "is": f"is_{network_name}", "precision": f"precision_{network_name}",
            "recall": f"recall_{network_name}"}


def compute_metrics(real: FeatureSet, fake: FeatureSet, network_name: str, k: int = 3,
                    device: str | torch.device = "cpu") -> dict[str, float | int | str]:
    """Frechet distance always; spatial FD when both sides have spatial features; the
    classifier score when ``fake`` has logits; precision/recall when ``real`` keeps pool rows."""
    if fake.pool is None:
        raise MetricsError("the sample feature set has no pool features")
    names = metric_names(network_name)
    results: dict[str, float | int | str] = {"feature_network": network_name,
                                             "num_samples": len(fake.pool)}
    results[names["fd"]] = frechet_distance_to_features(*real.pool_statistics(), fake.pool)
    if real.has_spatial and fake.spatial is not None:
        results[names["sfd"]] = frechet_distance_to_features(*real.spatial_statistics(),
                                                             fake.spatial)
    if fake.logits is not None:
        results[names["is"]] = inception_score(fake.logits)
    if real.pool is not None:
        precision, recall = precision_recall(real.pool, fake.pool, k=k, device=device)
        results[names["precision"]], results[names["recall"]] = precision, recall
    return results

