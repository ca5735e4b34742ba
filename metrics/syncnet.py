"""Sync-C / Sync-D: a port of SyncNet (joonson/syncnet_python) and its reference scoring.

Architecture: an audio tower over ``(N, 1, 13, 20)`` MFCC windows (13 coefficients x 20 MFCC
frames = 0.2 s) and a lip tower over ``(N, 3, 5, 224, 224)`` video windows (5 frames, BGR, values
0-255), each ending in two fully connected layers to 1024-d embeddings. Parameter names follow
the upstream module (``netcnnaud``, ``netfcaud``, ``netcnnlip``, ``netfclip``) so that
``syncnet_v2.model`` loads as is.

Scoring (``SyncNetInstance.evaluate`` upstream): embeddings for every 5-frame window, audio
embeddings zero-padded by ``vshift`` at both ends, for each shift the pairwise distance averaged
over frames; ``Sync-D = min``, ``Sync-C = median - min``, ``offset = vshift - argmin``. With this
convention the offset is negative when the audio comes late (it is the audio shift that undoes it).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from eartalk.metrics.weights import resolve_weights

VSHIFT = 15
WINDOW_FRAMES = 5
MFCC_PER_FRAME = 4  # 100 MFCC frames/s over 25 video frames/s
MFCC_WINDOW = 20


# ---------------------------------------------------------------------------------------------
# MFCC with python_speech_features' defaults
# ---------------------------------------------------------------------------------------------
def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(num_filters: int = 26, nfft: int = 512, sample_rate: int = 16000,
                   low_hz: float = 0.0, high_hz: float | None = None) -> np.ndarray:
    """Triangular filters ``(num_filters, nfft // 2 + 1)`` on FFT bins rounded down, as python_speech_features."""
    high_hz = sample_rate / 2 if high_hz is None else high_hz
    mel_points = np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), num_filters + 2)
    bins = np.floor((nfft + 1) * _mel_to_hz(mel_points) / sample_rate).astype(int)
    bank = np.zeros((num_filters, nfft // 2 + 1))
    for j in range(num_filters):
        left, centre, right = bins[j], bins[j + 1], bins[j + 2]
        for i in range(left, centre):
            bank[j, i] = (i - left) / (centre - left)
        for i in range(centre, right):
            bank[j, i] = (right - i) / (right - centre)
    return bank


def mfcc(signal: np.ndarray | Tensor, sample_rate: int = 16000, num_ceps: int = 13) -> np.ndarray:
    """MFCC ``(num_frames, 13)`` matching ``python_speech_features.mfcc`` defaults.

    25 ms rectangular windows every 10 ms (100 frames/s), pre-emphasis 0.97, 512-point FFT power
    spectrum, 26 mel filters 0-8 kHz, log, orthonormal DCT-II, sinusoidal lifter 22, and the first
    coefficient replaced by the log frame energy. SyncNet feeds int16-scaled audio, so pass
    ``float_audio * 32768`` to reproduce its numbers.
    """
    sig = np.asarray(signal.detach().cpu() if isinstance(signal, Tensor) else signal, dtype=np.float64).reshape(-1)
    sig = np.append(sig[:1], sig[1:] - 0.97 * sig[:-1])
    frame_len = int(math.floor(0.025 * sample_rate + 0.5))
    step = int(math.floor(0.01 * sample_rate + 0.5))
    n = 1 if len(sig) <= frame_len else 1 + int(math.ceil((len(sig) - frame_len) / step))
    padded = np.concatenate([sig, np.zeros((n - 1) * step + frame_len - len(sig))])
    index = np.arange(frame_len)[None, :] + step * np.arange(n)[:, None]
    frames = padded[index]  # (n, frame_len)
    nfft = 512
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft  # (n, 257)
    eps = np.finfo(float).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    feat = power @ mel_filterbank(26, nfft, sample_rate).T
    feat = np.log(np.where(feat == 0, eps, feat))
    # orthonormal DCT-II over the 26 log energies
    k = np.arange(26)
    basis = np.cos(np.pi * np.arange(num_ceps)[:, None] * (2 * k[None, :] + 1) / (2 * 26))
    scale = np.full(num_ceps, math.sqrt(2.0 / 26))
    scale[0] = math.sqrt(1.0 / 26)
    ceps = (feat @ basis.T) * scale  # (n, num_ceps)
    lifter = 1 + 11.0 * np.sin(np.pi * np.arange(num_ceps) / 22)
    ceps = ceps * lifter
    ceps[:, 0] = np.log(energy)
    return ceps


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------
def _bn_relu(channels: int, dims: int) -> list[nn.Module]:
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    return [bn(channels), nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """SyncNet audio and lip towers (syncnet_python's ``S``), embeddings of width ``embed_dim``."""

    def __init__(self, embed_dim: int = 1024) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, 1, 1), *_bn_relu(64, 2), nn.MaxPool2d(1, 1),
            nn.Conv2d(64, 192, 3, 1, 1), *_bn_relu(192, 2), nn.MaxPool2d(3, (1, 2)),
            nn.Conv2d(192, 384, 3, 1, 1), *_bn_relu(384, 2),
            nn.Conv2d(384, 256, 3, 1, 1), *_bn_relu(256, 2),
            nn.Conv2d(256, 256, 3, 1, 1), *_bn_relu(256, 2), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 512, (5, 4), 1, 0), *_bn_relu(512, 2),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), *_bn_relu(512, 1), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), *_bn_relu(512, 1), nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2), 0), *_bn_relu(96, 3), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), *_bn_relu(256, 3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), *_bn_relu(256, 3),
            nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), *_bn_relu(256, 3),
            nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), *_bn_relu(256, 3), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6), 1, 0), *_bn_relu(512, 3),
        )

    def forward_aud(self, mfcc_windows: Tensor) -> Tensor:
        """``(N, 1, 13, 20)`` MFCC windows -> ``(N, embed_dim)``."""
        mid = self.netcnnaud(mfcc_windows)  # (N, 512, 1, 1)
        return self.netfcaud(mid.flatten(1))

    def forward_lip(self, clips: Tensor) -> Tensor:
        """``(N, 3, 5, 224, 224)`` BGR windows in 0-255 -> ``(N, embed_dim)``."""
        mid = self.netcnnlip(clips)  # (N, 512, 1, 1, 1)
        return self.netfclip(mid.flatten(1))


def load_syncnet(path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[SyncNet, Path]:
    """Load ``syncnet_v2.model`` (a state dict with upstream names) resolved by the weights resolver."""
    file = resolve_weights("syncnet", path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("__S__.").removeprefix("module."): v for k, v in state.items()}
    model = SyncNet()
    model.load_state_dict(state)
    return model.eval().to(device), file


# ---------------------------------------------------------------------------------------------
# the reference scoring
# ---------------------------------------------------------------------------------------------
def sync_curve(video_emb: Tensor, audio_emb: Tensor, vshift: int = VSHIFT) -> Tensor:
    """Mean distance per shift ``(2 * vshift + 1,)``.

    Video window ``i`` is compared with audio windows ``i - vshift .. i + vshift`` (zero
    embeddings beyond the ends, as upstream pads them), and distances are averaged over ``i``.
    """
    if video_emb.shape != audio_emb.shape or video_emb.dim() != 2:
        raise ValueError(f"embeddings must both be (N, D), got {tuple(video_emb.shape)} and {tuple(audio_emb.shape)}")
    n = video_emb.shape[0]
    padded = F.pad(audio_emb, (0, 0, vshift, vshift))  # (N + 2 vshift, D)
    windows = padded.unfold(0, 2 * vshift + 1, 1)[:n]  # (N, D, 2 vshift + 1)
    dists = torch.linalg.vector_norm(video_emb[:, :, None] - windows + 1e-6, dim=1)  # (N, 2 vshift + 1)
    return dists.mean(0)


def sync_scores(video_emb: Tensor, audio_emb: Tensor, vshift: int = VSHIFT) -> dict[str, float]:
    """``{"sync_c", "sync_d", "offset"}`` from per-window embeddings (functional twin of :class:`SyncScore`)."""
    curve = sync_curve(video_emb.float(), audio_emb.float(), vshift)
    min_value, min_index = torch.min(curve, 0)
    return {
        "sync_d": float(min_value),
        "sync_c": float(torch.median(curve) - min_value),
        "offset": int(vshift - int(min_index)),
    }


def syncnet_inputs(frames: Tensor, audio: Tensor, sample_rate: int = 16000) -> tuple[Tensor, Tensor]:
    """Windows the network sees: ``(N, 3, 5, 224, 224)`` BGR 0-255 and ``(N, 1, 13, 20)`` MFCC.

    Args:
        frames: ``(T, 3, H, W)`` uint8 RGB at 25 fps (whole frames or face crops).
        audio: ``(S,)`` float mono in [-1, 1] at 16 kHz.
    """
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (T, 3, H, W), got {tuple(frames.shape)}")
    video = frames.float()
    if video.shape[-2:] != (224, 224):
        video = F.interpolate(video, size=(224, 224), mode="bilinear", align_corners=False)
    video = video.flip(1)  # RGB -> BGR  (T, 3, 224, 224)
    ceps = torch.from_numpy(mfcc(audio.float() * 32768.0, sample_rate)).float().T  # (13, M)
    length = min(video.shape[0], audio.shape[-1] // (sample_rate // 25))
    n = length - WINDOW_FRAMES
    if n < 1:
        raise ValueError(f"need more than {WINDOW_FRAMES} frames of video and audio, got {length}")
    clip = video.permute(1, 0, 2, 3)  # (3, T, 224, 224)
    lips = torch.stack([clip[:, i:i + WINDOW_FRAMES] for i in range(n)])  # (N, 3, 5, 224, 224)
    ceps = F.pad(ceps, (0, max(0, MFCC_PER_FRAME * n + MFCC_WINDOW - ceps.shape[1])))
    auds = torch.stack([ceps[None, :, MFCC_PER_FRAME * i:MFCC_PER_FRAME * i + MFCC_WINDOW] for i in range(n)])
    return lips, auds  # (N, 3, 5, 224, 224), (N, 1, 13, 20)


@torch.no_grad()
def syncnet_embeddings(model: SyncNet, frames: Tensor, audio: Tensor, batch_size: int = 20) -> tuple[Tensor, Tensor]:
    """Per-window video and audio embeddings ``(N, 1024)`` each."""
    lips, auds = syncnet_inputs(frames, audio)
    device = next(model.parameters()).device
    video_emb, audio_emb = [], []
    for i in range(0, lips.shape[0], batch_size):
        video_emb.append(model.forward_lip(lips[i:i + batch_size].to(device)).cpu())
        audio_emb.append(model.forward_aud(auds[i:i + batch_size].to(device)).cpu())
    return torch.cat(video_emb), torch.cat(audio_emb)


class SyncScore(Metric):
    """Mean Sync-C, Sync-D and offset over videos (torchmetrics ``Metric``).

    ``update(frames, audio)`` takes one video at a time (``(T, 3, H, W)`` uint8 RGB at 25 fps,
    and ``(S,)`` audio at 16 kHz), already cropped when scoring in face mode.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, model: SyncNet, vshift: int = VSHIFT, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model.eval()
        self.vshift = vshift
        self.add_state("sync_c", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sync_d", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("offset", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, frames: Tensor, audio: Tensor) -> None:
        video_emb, audio_emb = syncnet_embeddings(self.model, frames, audio)
        scores = sync_scores(video_emb, audio_emb, self.vshift)
        self.sync_c += scores["sync_c"]
        self.sync_d += scores["sync_d"]
        self.offset += scores["offset"]
        self.count += 1

    def compute(self) -> dict[str, Tensor]:
        if int(self.count) == 0:
            raise ValueError("SyncScore: no video was scored")
        n = self.count.double()
        return {"sync_c": self.sync_c / n, "sync_d": self.sync_d / n, "offset": self.offset / n}
