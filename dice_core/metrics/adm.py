"""The metric math of OpenAI's ADM evaluator (guided-diffusion ``evaluations/evaluator.py``),
for any feature network, in float64 NumPy (precision/recall in float32 PyTorch).

Where this code departs from ADM's, it is for the cases where ADM's fails or is slow:
- ADM raises on an imaginary part of ``sqrtm(sigma1 @ sigma2)`` above 1e-3, which a covariance of
  fewer samples than dimensions can give (500 samples, 2048 dims). Here that case is computed
  exactly from the eigenvalues of a symmetric matrix instead.
- Against samples fewer than the dimensions, ``frechet_distance_to_features`` gets the same
  value in the samples' space (no d x d square root at all).
- ADM's pairwise distances are float16 first (float32 when those overflow); here float32 always.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from scipy.special import rel_entr, softmax

from .errors import MetricsError

IMAGINARY_TOLERANCE = 1e-3  # ADM's atol on the imaginary diagonal of the square root


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are samples, N - 1 normalised), as ADM's FIDStatistics."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise MetricsError(f"statistics need at least 2 feature rows, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2); a real float."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise MetricsError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
                 - 2 * trace_sqrt_product(sigma1, sigma2, eps))


def frechet_distance_to_features(mu: np.ndarray, sigma: np.ndarray,
                                 features: np.ndarray) -> float:
    """``frechet_distance(mu, sigma, *statistics(features))``.

    Below as many samples as dimensions (500 in 2048) it is computed in the samples' space:
    with X the centred features (n rows), sigma1 sigma2 has the nonzero eigenvalues of the
    n x n symmetric PSD matrix X sigma1 X^T / (n - 1), so tr sqrt(sigma1 sigma2) comes exact
    and cheap, with no square root of a singular d x d product.
    """
    features = np.asarray(features, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    n = len(features)
    if n < 2 or features.ndim != 2 or features.shape[1] != len(sigma):
        raise MetricsError(f"need >= 2 features of dimension {len(sigma)}, got {features.shape}")
    if n >= features.shape[1]:
        return frechet_distance(mu, sigma, *statistics(features))
    mean = features.mean(axis=0)
    centred = features - mean
    small = centred @ sigma @ centred.T / (n - 1)
    tr_covmean = np.sqrt(np.clip(linalg.eigvalsh((small + small.T) / 2), 0, None)).sum()
    diff = np.asarray(mu, dtype=np.float64) - mean
    return float(diff @ diff + np.trace(sigma) + (centred ** 2).sum() / (n - 1) - 2 * tr_covmean)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """tr sqrt(sigma1 sigma2) as ADM: ``sqrtm`` of the product, retried with ``eps`` on the
    diagonals when not finite, a small imaginary part dropped. Where ADM would raise, the
    symmetric route below."""
    covmean = _sqrtm(sigma1 @ sigma2)
    if covmean is None or not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if (covmean is None or not np.isfinite(covmean).all()
            or np.abs(np.diagonal(covmean).imag).max() > IMAGINARY_TOLERANCE):
        return trace_sqrt_product_symmetric(sigma1, sigma2)
    return float(np.trace(covmean).real)


def trace_sqrt_product_symmetric(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(sigma1 sigma2) = sum of sqrt eigenvalues of the PSD sqrt(sigma1) sigma2 sqrt(sigma1):
    symmetric eigenproblems only, so nothing imaginary and nothing to fail."""
    values, vectors = linalg.eigh(sigma1)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = root @ sigma2 @ root
    return float(np.sqrt(np.clip(linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())


def _sqrtm(matrix: np.ndarray) -> np.ndarray | None:
    try:
        return np.asarray(linalg.sqrtm(matrix), dtype=np.complex128)
    except (linalg.LinAlgError, ValueError):
        return None


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """ADM's Inception Score of the softmax of ``logits`` (for Inception: pool_3 @ W, no bias)."""
    return inception_score_from_probabilities(
        softmax(np.asarray(logits, dtype=np.float64), axis=1), split_size)


def inception_score_from_probabilities(probs: np.ndarray, split_size: int = 5000) -> float:
    """Mean over consecutive splits of ``split_size`` of exp(mean_x KL(p(y|x) || p(y)))."""
    probs = np.asarray(probs, dtype=np.float64)
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start:start + split_size]
        # rel_entr counts 0 log 0 as 0, where ADM's p (log p - log q) would give NaN
        kl = rel_entr(part, part.mean(axis=0, keepdims=True)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))


def precision_recall(real_features: np.ndarray, fake_features: np.ndarray, k: int = 3,
                     batch_size: int = 2000, device: str | torch.device = "cpu",
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) as ADM's ManifoldEstimator.

    Each set's manifold is the union of balls around its points with the squared distance to
    the k-th nearest neighbour as radius (the point itself counting as the 0-th). Precision:
    the fraction of fake points inside the real manifold; recall: of real points inside the
    fake one. Distances are computed ``batch_size`` rows at a time (10k x 10k fits in memory).
    ``real_radii`` (from ``kth_neighbour_radii(real_features, k)``) spares recomputing the
    real manifold when many fake sets are compared with one reference.
    """
    real = torch.as_tensor(np.asarray(real_features), dtype=torch.float32, device=device)
    fake = torch.as_tensor(np.asarray(fake_features), dtype=torch.float32, device=device)
    if real_radii is None:
        real_radii = kth_neighbour_radii(real, k, batch_size)
    fake_radii = kth_neighbour_radii(fake, k, batch_size)
    fake_in_real = torch.zeros(len(fake), dtype=torch.bool, device=device)
    real_in_fake = torch.zeros(len(real), dtype=torch.bool, device=device)
    for start in range(0, len(real), batch_size):
        rows = slice(start, start + batch_size)
        distances = squared_distances(real[rows], fake)
        real_in_fake[rows] = (distances <= fake_radii[None, :]).any(dim=1)
        fake_in_real |= (distances <= real_radii[rows, None]).any(dim=0)
    return fake_in_real.double().mean().item(), real_in_fake.double().mean().item()


def squared_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, clamped at 0 as ADM's distance block."""
    norms_u = (u * u).sum(dim=1, keepdim=True)
    norms_v = (v * v).sum(dim=1)[None, :]
    return (norms_u - 2 * u @ v.T + norms_v).clamp_min(0)


def kth_neighbour_radii(features: np.ndarray | torch.Tensor, k: int = 3,
                        batch_size: int = 2000) -> torch.Tensor:
    """Squared distance of every point to its k-th nearest neighbour in its own set."""
    features = torch.as_tensor(features, dtype=torch.float32)
    if len(features) <= k:
        raise MetricsError(f"precision/recall with k={k} need more than {k} samples per set, "
                           f"got {len(features)}")
    radii = torch.empty(len(features), dtype=features.dtype, device=features.device)
    for start in range(0, len(features), batch_size):
        distances = squared_distances(features[start:start + batch_size], features)
        radii[start:start + batch_size] = distances.kthvalue(k + 1, dim=1).values
    return radii
