"""Offline proxies on MediaPipe output. Fidelity ``"proxy"``: never reported under a paper metric's name.

* :func:`lipsync_curve` / ``lipsync_proxy``: how well mouth motion follows the audio, and at which
  lag. Audio features are 6 log-mel bands (80-7600 Hz, 80 ms windows centred on each video frame)
  and their temporal derivative; mouth features are the inner-lip opening and width (normalised by
  the distance between the outer eye corners), the jawOpen / mouthFunnel / mouthPucker
  blendshapes, and the derivatives of all five. A ridge regressor maps audio features to mouth
  features; the curve is, for every lag ``L``, the correlation between the mouth features at
  frame ``t`` and the prediction from the audio at frame ``t + L`` (mean over the mouth features).
  ``value`` = the peak, ``lag_frames`` = its lag (positive when the audio comes late),
  ``confidence`` = peak minus the median over lags.
  The regressor is fitted on in-sync clips (``evaluate`` fits it on the reference set) and then
  applied unchanged at every lag, so no lag is favoured by the fit. Without such clips, each lag
  gets its own regressor scored by contiguous 5-fold cross-validation on the clip itself (held-out
  predictions only), which is noisier.
* :func:`blendshape_fid`: Fréchet distance between the 52-d blendshape sets (expression-FID proxy).
* :func:`geometry_similarity`: identity similarity over landmark geometry (identity proxy).
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
from torch import Tensor

from eartalk.core.types import FaceTrack
from eartalk.metrics.frechet import frechet_distance
from eartalk.metrics.syncnet import mel_filterbank

MAX_LAG = 15
N_MELS = 6
MOUTH_BLENDSHAPES = ("jawOpen", "mouthFunnel", "mouthPucker")
_DEFAULT_BLENDSHAPE_INDEX = {"jawOpen": 25, "mouthFunnel": 32, "mouthPucker": 38}


def _standardise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0, keepdims=True)
    return x / (x.std(0, keepdims=True) + 1e-8)


def _fill_gaps(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN rows (edges take the nearest valid row)."""
    out = x.copy()
    t = np.arange(len(x))
    for j in range(x.shape[1]):
        ok = np.isfinite(x[:, j])
        if ok.sum() == 0:
            out[:, j] = 0.0
        elif not ok.all():
            out[:, j] = np.interp(t, t[ok], x[ok, j])
    return out


def audio_features(audio: Tensor | np.ndarray, num_frames: int, sample_rate: int = 16000, n_mels: int = N_MELS) -> np.ndarray:
    """``(T, 2 * n_mels)`` log-mel bands and their derivative, one row per 25 fps video frame."""
    sig = np.asarray(audio.detach().cpu() if isinstance(audio, Tensor) else audio, dtype=np.float64).reshape(-1)
    hop = sample_rate // 25
    win, nfft = 2 * hop, 2048
    # window of frame t is centred on the middle of the frame, (t + 0.5) * hop
    start = np.arange(num_frames) * hop + hop // 2 - win // 2
    padded = np.concatenate([np.zeros(win), sig, np.zeros(win + num_frames * hop)])
    frames = padded[start[:, None] + win + np.arange(win)[None, :]] * np.hanning(win)[None, :]  # (T, win)
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2
    bank = mel_filterbank(n_mels, nfft, sample_rate, 80.0, 7600.0)
    logmel = np.log(power @ bank.T + 1e-5)  # (T, n_mels)
    return np.concatenate([logmel, np.gradient(logmel, axis=0)], axis=1) if num_frames > 1 else np.concatenate([logmel, 0 * logmel], 1)


def lip_opening(track: FaceTrack) -> np.ndarray:
    """``(T,)`` inner-lip gap over the eye distance per frame (NaN where no face was found)."""
    p = track.landmarks[:, :, :2].double().numpy()  # (T, 478, 2)
    return np.linalg.norm(p[:, 13] - p[:, 14], axis=1) / np.linalg.norm(p[:, 33] - p[:, 263], axis=1)


def mouth_features(track: FaceTrack) -> np.ndarray:
    """``(T, 10)`` mouth features (5 values + derivatives); NaN frames interpolated."""
    p = track.landmarks[:, :, :2].double().numpy()  # (T, 478, 2)
    eyes = np.linalg.norm(p[:, 33] - p[:, 263], axis=1)
    opening = lip_opening(track)
    width = np.linalg.norm(p[:, 78] - p[:, 308], axis=1) / eyes
    names = list(track.blendshape_names)
    cols = [names.index(n) if n in names else _DEFAULT_BLENDSHAPE_INDEX[n] for n in MOUTH_BLENDSHAPES]
    shapes = track.blendshapes[:, cols].double().numpy()
    base = _fill_gaps(np.concatenate([opening[:, None], width[:, None], shapes], axis=1))
    return np.concatenate([base, np.gradient(base, axis=0)], axis=1) if len(base) > 1 else np.concatenate([base, 0 * base], 1)


@attrs.define
class LipSyncRegressor:
    """Ridge map from standardised audio features to standardised mouth features.

    Attributes:
        weights: ``(audio_dim, mouth_dim)`` coefficients.
        alpha: ridge strength relative to the number of frames.
        num_frames: frames it was fitted on.
    """

    weights: np.ndarray
    alpha: float = 0.1
    num_frames: int = 0

    @classmethod
    def fit(cls, pairs: list[tuple[np.ndarray, np.ndarray]], alpha: float = 0.1) -> LipSyncRegressor:
        """Fit on in-sync ``(audio_features (T, A), mouth_features (T, M))`` pairs at lag 0."""
        if not pairs:
            raise ValueError("LipSyncRegressor.fit needs at least one clip")
        x = np.concatenate([_standardise(a) for a, _ in pairs])
        y = np.concatenate([_standardise(m) for _, m in pairs])
        weights = np.linalg.solve(x.T @ x + alpha * len(x) * np.eye(x.shape[1]), x.T @ y)
        return cls(weights, alpha, len(x))

    def predict(self, audio_feats: np.ndarray) -> np.ndarray:
        return _standardise(audio_feats) @ self.weights


def _corr_columns(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(0)
    b = b - b.mean(0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0)) + 1e-12
    return float(((a * b).sum(0) / denom).mean())


def _cv_score(a: np.ndarray, m: np.ndarray, alpha: float, folds: int) -> float:
    n = len(m)
    pred = np.zeros_like(m)
    edges = np.linspace(0, n, folds + 1).astype(int)
    for k in range(folds):
        test = np.zeros(n, bool)
        test[edges[k]:edges[k + 1]] = True
        x, y = a[~test], m[~test]
        w = np.linalg.solve(x.T @ x + alpha * len(x) * np.eye(x.shape[1]), x.T @ y)
        pred[test] = a[test] @ w
    return _corr_columns(pred, m)


def lipsync_curve(audio_feats: np.ndarray, mouth_feats: np.ndarray, regressor: LipSyncRegressor | None = None,
                  max_lag: int = MAX_LAG, alpha: float = 0.1, folds: int = 5) -> np.ndarray:
    """Correlation per lag ``(2 * max_lag + 1,)``; index ``max_lag + L`` pairs mouth ``t`` with audio ``t + L``."""
    n = min(len(audio_feats), len(mouth_feats))
    if n < 2 * max_lag + 10:
        raise ValueError(f"lip-sync proxy needs at least {2 * max_lag + 10} frames, got {n}")
    audio_feats, mouth_feats = audio_feats[:n], mouth_feats[:n]
    predicted = regressor.predict(audio_feats) if regressor is not None else None
    curve = np.zeros(2 * max_lag + 1)
    for i, lag in enumerate(range(-max_lag, max_lag + 1)):
        t0, t1 = max(0, -lag), min(n, n - lag)
        mouth = _standardise(mouth_feats[t0:t1])
        if predicted is not None:
            curve[i] = _corr_columns(predicted[t0 + lag:t1 + lag], mouth)
        else:
            curve[i] = _cv_score(_standardise(audio_feats[t0 + lag:t1 + lag]), mouth, alpha, folds)
    return curve


def lipsync_summary(curve: np.ndarray) -> dict[str, float]:
    """``value`` (peak), ``lag_frames`` (its lag), ``confidence`` (peak - median), ``at_zero``."""
    max_lag = (len(curve) - 1) // 2
    best = int(np.argmax(curve))
    return {
        "value": float(curve[best]),
        "lag_frames": best - max_lag,
        "confidence": float(curve[best] - np.median(curve)),
        "at_zero": float(curve[max_lag]),
    }


def lipsync_proxy(audio: Tensor, track: FaceTrack, regressor: LipSyncRegressor | None = None,
                  max_lag: int = MAX_LAG) -> dict[str, float]:
    """Functional lip-sync proxy of one clip (25 fps track, 16 kHz audio aligned with frame 0)."""
    n = track.num_frames
    return lipsync_summary(lipsync_curve(audio_features(audio, n), mouth_features(track), regressor, max_lag))


def regressor_from_clips(clips: list[tuple[Tensor, FaceTrack]], alpha: float = 0.1) -> LipSyncRegressor:
    """Fit a :class:`LipSyncRegressor` on in-sync ``(audio, track)`` clips."""
    pairs = [(audio_features(a, t.num_frames), mouth_features(t)) for a, t in clips]
    return LipSyncRegressor.fit(pairs, alpha)


# ---------------------------------------------------------------------------------------------
# expression FID proxy and identity proxy
# ---------------------------------------------------------------------------------------------
def blendshape_fid(generated: list[FaceTrack], reference: list[FaceTrack]) -> float:
    """Fréchet distance between the blendshape vectors (``(N, 52)``) of all frames with a face."""

    def stack(tracks: list[FaceTrack]) -> Tensor:
        rows = [t.blendshapes[t.present] for t in tracks]
        return torch.cat(rows).double() if rows else torch.zeros(0, 52, dtype=torch.float64)

    return frechet_distance(stack(generated), stack(reference), what="MediaPipe blendshapes")


#: Rigid-ish points for the identity proxy: eye corners, brows, nose, cheeks, chin, jaw.
GEOMETRY_POINTS = (33, 133, 362, 263, 70, 105, 334, 300, 168, 6, 1, 2, 98, 327, 234, 454, 152, 172, 397, 10)


def geometry_descriptor(track: FaceTrack) -> Tensor:
    """``(T, P*(P-1)/2)`` pairwise distances of :data:`GEOMETRY_POINTS` in MediaPipe's 3D landmark
    space (x, y and relative depth), divided by their mean: invariant to translation, scale and
    in-plane rotation."""
    pts = track.landmarks[:, list(GEOMETRY_POINTS)].double()  # (T, P, 3)
    d = torch.cdist(pts, pts)  # (T, P, P)
    iu = torch.triu_indices(len(GEOMETRY_POINTS), len(GEOMETRY_POINTS), 1)
    flat = d[:, iu[0], iu[1]]
    return flat / flat.mean(1, keepdim=True)


def geometry_similarity(generated: FaceTrack, reference: FaceTrack) -> float:
    """``1 - mean |d_gen - d_ref| / mean d_ref`` over frames, against the reference's median geometry
    (1 = identical face proportions)."""
    ref = geometry_descriptor(reference)[reference.present]
    gen = geometry_descriptor(generated)[generated.present]
    if ref.shape[0] == 0 or gen.shape[0] == 0:
        raise ValueError("identity proxy: no face in the generated or reference video")
    target = ref.median(0).values
    rel = (gen - target).abs().mean(1) / target.mean()
    return float(1.0 - rel.mean())
