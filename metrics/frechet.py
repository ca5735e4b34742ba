"""The Fréchet distance between Gaussians fitted to two feature sets (FID, FVD, E-FID, proxies).

``d² = |mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^(1/2))``, computed in float64 with
``scipy.linalg.sqrtm`` as the reference implementations (pytorch-fid, StyleGAN-V) do.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch
from torch import Tensor
from torchmetrics import Metric

#: Below this many samples the covariance of high-dimensional features is rank-deficient.
MIN_RELIABLE_SAMPLES = 400


def gaussian_stats(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of ``(N, D)`` features."""
    x = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64).

    A tiny diagonal offset is added when the product is singular, and the imaginary part that
    ``sqrtm`` returns from numerical error is dropped (as pytorch-fid does).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched Gaussian statistics: {mu1.shape}, {sigma1.shape} vs {mu2.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are expected with few samples; we warn ourselves
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def frechet_distance(features1: Tensor | np.ndarray, features2: Tensor | np.ndarray, *, what: str = "features") -> float:
    """Functional Fréchet distance between two ``(N, D)`` feature sets.

    Warns when either set has fewer than :data:`MIN_RELIABLE_SAMPLES` rows (rank-deficient covariance).
    """
    n = min(len(features1), len(features2))
    if n < MIN_RELIABLE_SAMPLES:
        warnings.warn(
            f"Fréchet distance over {what} from only {n} samples (< {MIN_RELIABLE_SAMPLES}): the covariance "
            "is rank-deficient and the value is biased upwards; compare only numbers computed with the same count",
            stacklevel=2,
        )
    return frechet_distance_from_stats(*gaussian_stats(features1), *gaussian_stats(features2))


class FrechetDistance(Metric):
    """Streaming Fréchet distance between "real" and "fake" feature sets.

    ``update(features, real)`` accumulates sums and outer products in float64; ``compute()``
    returns the distance. Subclasses (FVD, E-FID, proxies) only turn their inputs into features.

    Args:
        num_features: feature width ``D``.
        what: name of the features for warnings.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, num_features: int, what: str = "features", **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_features = int(num_features)
        self.what = what
        d = self.num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update_features(self, features: Tensor, real: bool) -> None:
        """Add ``(N, D)`` features to the real or fake set."""
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected features (N, {self.num_features}), got {tuple(features.shape)}")
        x = features.detach().to(torch.float64)  # (N, D)
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + x.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + x.T @ x)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + x.shape[0])

    def update(self, features: Tensor, real: bool) -> None:  # noqa: D102 - documented in update_features
        self.update_features(features, real)

    def _stats(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        n = int(getattr(self, f"{side}_count"))
        if n < 2:
            raise ValueError(f"{type(self).__name__}: need at least 2 {side} samples, got {n}")
        total = getattr(self, f"{side}_sum").cpu().numpy()
        outer = getattr(self, f"{side}_outer").cpu().numpy()
        mu = total / n
        sigma = (outer - n * np.outer(mu, mu)) / (n - 1)
        return mu, sigma

    def compute(self) -> Tensor:
        n = int(min(self.real_count, self.fake_count))
        if n < MIN_RELIABLE_SAMPLES:
            warnings.warn(
                f"{type(self).__name__}: Fréchet distance over {self.what} from only {n} samples "
                f"(< {MIN_RELIABLE_SAMPLES}): rank-deficient covariance, value biased upwards",
                stacklevel=2,
            )
        return torch.tensor(frechet_distance_from_stats(*self._stats("real"), *self._stats("fake")), dtype=torch.float64)
