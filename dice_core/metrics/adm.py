"""The metric math of OpenAI's ADM evaluator (guided-diffusion ``evaluations/evaluator.py``),
for any feature network, in float64 NumPy (precision/recall in PyTorch).

Where this code departs from ADM's, it is for the cases where ADM's fails or is slow:
- ADM raises on an imaginary part of ``sqrtm(sigma1 @ sigma2)`` above 1e-3, which a covariance of
  fewer samples than dimensions can give (500 samples, 2048 dims). Here that case is computed
  exactly from the eigenvalues of a symmetric matrix instead.
- Against samples fewer than the dimensions, ``frechet_distance_to_features`` offers the same
  value computed in the samples' space (``square_root="exact"``: no d x d square root at all, and
  so never ADM's eps retry, which depends on whether scipy's ``sqrtm`` finds the singular
  product's root finite); ``"adm"`` takes ADM's route.
- Precision/recall distances are float32 by default; ``distances="float16"`` is ADM's (float16,
  float32 for a block where float16 overflows).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from scipy.special import rel_entr, softmax

from .errors import MetricsError

IMAGINARY_TOLERANCE = 1e-3  # ADM's atol on the imaginary diagonal of the square root
FD_SQUARE_ROOTS = ("adm", "exact")
PR_DISTANCES = ("float16", "float32")
ADM_BLOCK = 10_000       # ADM's ManifoldEstimator computes distances 10k rows by 10k columns
FLOAT32_ROWS = 2_000     # rows at a time in float32 (the columns all at once)


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


def frechet_distance_to_features(mu: np.ndarray, sigma: np.ndarray, features: np.ndarray,
                                 square_root: str = "adm") -> float:
    """``frechet_distance(mu, sigma, *statistics(features))``, by one of two routes.

    ``"adm"``: that call, as ADM's evaluator computes it: scipy's ``sqrtm`` of the d x d product,
    retried with eps on the diagonals where it is not finite. It costs a d x d square root
    (about a minute at 2048 dimensions on two cores).
    ``"exact"``: below as many samples as dimensions (500 in 2048) the same distance computed in
    the samples' space: with X the centred features (n rows), sigma1 sigma2 has the nonzero
    eigenvalues of the n x n symmetric PSD matrix X sigma1 X^T / (n - 1), so tr sqrt(sigma1
    sigma2) comes exact and cheap. It equals ADM's wherever ADM's first square root is finite,
    and never takes the eps retry.
    """
    if square_root not in FD_SQUARE_ROOTS:
        raise MetricsError(f"unknown square root route {square_root!r}: choose one of "
                           f"{list(FD_SQUARE_ROOTS)}")
    features = np.asarray(features, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    n = len(features)
    if n < 2 or features.ndim != 2 or features.shape[1] != len(sigma):
        raise MetricsError(f"need >= 2 features of dimension {len(sigma)}, got {features.shape}")
    if square_root == "adm" or n >= features.shape[1]:
        return frechet_distance(mu, sigma, *statistics(features))
    mean = features.mean(axis=0)
    centred = features - mean
    return frechet_distance_in_sample_space(mu, np.trace(sigma), mean,
                                            centred @ sigma @ centred.T / (n - 1),
                                            (centred ** 2).sum() / (n - 1))


def frechet_distance_in_sample_space(mu: np.ndarray, trace_sigma: float, mean: np.ndarray,
                                     small: np.ndarray, trace_own: float) -> float:
    """The exact route's last step: ``small`` is X sigma X^T / (n - 1) of the n centred
    samples X, ``mean`` their mean, ``trace_own`` the trace of their covariance."""
    tr_covmean = np.sqrt(np.clip(linalg.eigvalsh((small + small.T) / 2), 0, None)).sum()
    diff = np.asarray(mu, dtype=np.float64) - mean
    return float(diff @ diff + trace_sigma + trace_own - 2 * tr_covmean)


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
                     batch_size: int | None = None, device: str | torch.device = "cpu",
                     real_radii: torch.Tensor | None = None,
                     distances: str = "float32") -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) as ADM's ManifoldEstimator.

    Each set's manifold is the union of balls around its points with the squared distance to
    the k-th nearest neighbour as radius (the point itself counting as the 0-th). Precision:
    the fraction of fake points inside the real manifold; recall: of real points inside the
    fake one. ``distances`` and ``batch_size`` as in ``distance_rows``. ``real_radii`` (from
    ``kth_neighbour_radii(real_features, k, ...)`` with the same ``distances``) spares
    recomputing the real manifold when many fake sets are compared with one reference.
    """
    real = torch.as_tensor(np.asarray(real_features), dtype=torch.float32, device=device)
    fake = torch.as_tensor(np.asarray(fake_features), dtype=torch.float32, device=device)
    if real_radii is None:
        real_radii = kth_neighbour_radii(real, k, batch_size, distances)
    fake_radii = kth_neighbour_radii(fake, k, batch_size, distances)
    fake_in_real = torch.zeros(len(fake), dtype=torch.bool, device=device)
    real_in_fake = torch.zeros(len(real), dtype=torch.bool, device=device)
    for rows, block in distance_rows(real, fake, distances, batch_size):
        real_in_fake[rows] = (block <= fake_radii[None, :]).any(dim=1)
        fake_in_real |= (block <= real_radii[rows, None]).any(dim=0)
    return fake_in_real.double().mean().item(), real_in_fake.double().mean().item()


def kth_neighbour_radii(features: np.ndarray | torch.Tensor, k: int = 3,
                        batch_size: int | None = None,
                        distances: str = "float32") -> torch.Tensor:
    """Squared distance of every point to its k-th nearest neighbour in its own set."""
    features = torch.as_tensor(features, dtype=torch.float32)
    if len(features) <= k:
        raise MetricsError(f"precision/recall with k={k} need more than {k} samples per set, "
                           f"got {len(features)}")
    radii = torch.empty(len(features), dtype=features.dtype, device=features.device)
    for rows, block in distance_rows(features, features, distances, batch_size):
        radii[rows] = block.kthvalue(k + 1, dim=1).values
    return radii


def distance_rows(u: torch.Tensor, v: torch.Tensor, distances: str = "float32",
                  batch_size: int | None = None):
    """(rows, squared distances of ``u[rows]`` to every row of ``v``), ``batch_size`` rows at a
    time, as float32 tensors.

    ``"float32"``: computed in float32, 2000 rows at a time unless told. ``"float16"``: ADM's
    DistanceBlock, blocks of ``batch_size`` rows by ``batch_size`` columns (ADM's 10k by 10k
    unless told) computed in float16 and, for a block where any of them is not finite (float16
    overflows above 65504), again in float32; where no block overflows the blocks do not matter.
    """
    if distances not in PR_DISTANCES:
        raise MetricsError(f"unknown precision/recall distances {distances!r}: choose one of "
                           f"{list(PR_DISTANCES)}")
    batch_size = batch_size or (ADM_BLOCK if distances == "float16" else FLOAT32_ROWS)
    for start in range(0, len(u), batch_size):
        rows = slice(start, start + batch_size)
        if distances == "float32":
            yield rows, squared_distances(u[rows], v)
        else:
            yield rows, torch.cat([adm_distance_block(u[rows], v[column:column + batch_size])
                                   for column in range(0, len(v), batch_size)], dim=1)


def adm_distance_block(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ADM's DistanceBlock: the float16 distances as float32, or the float32 distances when
    any float16 one is not finite."""
    block = squared_distances(u, v, torch.float16)
    return block.float() if torch.isfinite(block).all() else squared_distances(u, v)


def squared_distances(u: torch.Tensor, v: torch.Tensor,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pairwise squared Euclidean distances |u|^2 - 2 u.v + |v|^2 clamped at 0, as ADM's
    ``_batch_pairwise_distances`` in ``dtype``: inputs and every result rounded to ``dtype``,
    sums of products accumulated in float32 (as a GPU's float16 matmul and reductions), so
    that the value does not depend on the device's float16 arithmetic."""
    u, v = u.to(dtype), v.to(dtype)
    norms_u = (u * u).float().sum(dim=1, keepdim=True).to(dtype)
    norms_v = (v * v).float().sum(dim=1).to(dtype)[None, :]
    products = (u.float() @ v.float().T).to(dtype)
    return (norms_u - 2 * products + norms_v).clamp_min(0)
