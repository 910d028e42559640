"""All metrics of one sample set against a reference, named after the feature network.

Only Inception results carry the names ADM's are known by (``fid``, ``sfid``,
``inception_score``, ``precision``, ``recall``); another network's are suffixed with its name
(``fd_effnet``, ``sfd_effnet``, ``is_effnet``, ``precision_effnet``, ``recall_effnet``) so that no
one mistakes them for FID.

Two of ADM's conventions are the default for Inception only, whose numbers are compared with
papers': the Fréchet distance through scipy's d x d square root with its eps retry, and float16
precision/recall distances. Other networks' take the exact trace and float32 distances. The
metrics name the ones they used (``fd_square_root``, ``pr_distances``).
"""
from __future__ import annotations

import torch

from .adm import frechet_distance_to_features, inception_score, precision_recall
from .errors import MetricsError
from .feature_set import FeatureSet

INCEPTION = "inception"
ADM_CONVENTIONS = {"fd_square_root": "adm", "pr_distances": "float16"}
EXACT_CONVENTIONS = {"fd_square_root": "exact", "pr_distances": "float32"}
NO_REFERENCE_ROWS = ("not computed: the reference keeps statistics but no pool features of "
                     "its images; for an ADM reference batch, take them from its arr_0 once "
                     "with `dice reference --reference-batch FILE`")


def metric_names(network_name: str) -> dict[str, str]:
    if network_name == INCEPTION:
        return {"fd": "fid", "sfd": "sfid", "is": "inception_score",
                "precision": "precision", "recall": "recall"}
    return {"fd": f"fd_{network_name}", "sfd": f"sfd_{network_name}",
            "is": f"is_{network_name}", "precision": f"precision_{network_name}",
            "recall": f"recall_{network_name}"}


def cfg_suffix(scale: float, headline: float) -> str:
    """What a metric's name carries at classifier-free guidance scale ``scale``: nothing at
    the evaluation's headline scale (its first), else ``_cfg<scale>`` (``fd_effnet_cfg3``,
    ``class_accuracy_cfg1.5``)."""
    return "" if scale == headline else f"_cfg{scale_label(scale)}"


def scale_label(scale: float) -> str:
    """A guidance scale as names and tables write it: 3.0 -> "3", 1.5 -> "1.5"."""
    return str(float(scale)).removesuffix(".0")


def conventions(network_name: str, fd_square_root: str | None = None,
                pr_distances: str | None = None) -> dict[str, str]:
    """The square-root route and precision/recall distances: the ones given, else the
    network's defaults (ADM's for Inception)."""
    chosen = dict(ADM_CONVENTIONS if network_name == INCEPTION else EXACT_CONVENTIONS)
    given = {"fd_square_root": fd_square_root, "pr_distances": pr_distances}
    return {**chosen, **{key: value for key, value in given.items() if value is not None}}


def compute_metrics(real: FeatureSet, fake: FeatureSet, network_name: str, k: int = 3,
                    device: str | torch.device = "cpu", fd_square_root: str | None = None,
                    pr_distances: str | None = None) -> dict[str, float | int | str]:
    """Frechet distance always; spatial FD when both sides have spatial features; the
    classifier score when ``fake`` has logits; precision/recall when ``real`` keeps pool rows,
    else ``precision_recall_skipped`` says why. The conventions as ``conventions`` gives them."""
    if fake.pool is None:
        raise MetricsError("the sample feature set has no pool features")
    names = metric_names(network_name)
    chosen = conventions(network_name, fd_square_root, pr_distances)
    results: dict[str, float | int | str] = {"feature_network": network_name,
                                             "num_samples": len(fake.pool), **chosen}
    results[names["fd"]] = frechet_distance_to_features(*real.pool_statistics(), fake.pool,
                                                        chosen["fd_square_root"])
    if real.has_spatial and fake.spatial is not None:
        results[names["sfd"]] = frechet_distance_to_features(
            *real.spatial_statistics(), fake.spatial, chosen["fd_square_root"])
    if fake.logits is not None:
        results[names["is"]] = inception_score(fake.logits)
    if real.pool is None:
        results["precision_recall_skipped"] = NO_REFERENCE_ROWS
    else:
        precision, recall = precision_recall(real.pool, fake.pool, k=k, device=device,
                                             distances=chosen["pr_distances"])
        results[names["precision"]], results[names["recall"]] = precision, recall
    return results
