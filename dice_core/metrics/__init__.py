"""Sample-quality metrics as OpenAI's ADM evaluator defines them, in any feature network:
the FID Inception-v3 (FID, sFID, IS, precision/recall) or the offline EfficientNet-Lite0."""
from .adm import (
                  frechet_distance,
                  frechet_distance_to_features,
                  inception_score,
                  inception_score_from_probabilities,
                  precision_recall,
                  statistics,
                  trace_sqrt_product,
)
from .effnet import EfficientNetLite0, load_effnet_lite0
from .errors import FeatureNetworkError, MetricsError, ReferenceMismatchError, SampleError
from .extract import extract_features
from .feature_set import FeatureSet
from .inception import FID_WEIGHTS_FILE, FID_WEIGHTS_URL, FIDInceptionV3, load_fid_inception
from .network_io import NetworkFeatures
from .reference import load_reference, save_reference
from .report import cfg_suffix, compute_metrics, metric_names, scale_label
from .samples import check_samples

__all__ = [
    "EfficientNetLite0",
    "FIDInceptionV3",
    "FID_WEIGHTS_FILE",
    "FID_WEIGHTS_URL",
    "FeatureNetworkError",
    "FeatureSet",
    "MetricsError",
    "NetworkFeatures",
    "ReferenceMismatchError",
    "SampleError",
    "cfg_suffix",
    "check_samples",
    "compute_metrics",
    "extract_features",
    "frechet_distance",
    "frechet_distance_to_features",
    "inception_score",
    "inception_score_from_probabilities",
    "load_effnet_lite0",
    "load_fid_inception",
    "load_reference",
    "metric_names",
    "precision_recall",
    "save_reference",
    "scale_label",
    "statistics",
    "trace_sqrt_product",
]
