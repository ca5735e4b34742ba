"""Frame VAE: a causal 3D convolutional VAE with one latent per video frame.

* Spatial downsampling by ``f = 2 ** (levels - 1)`` (8 by default), no temporal compression.
* Every temporal kernel looks only backwards: a :class:`CausalConv3d` pads the past with the
  first frame (whole clip) or with the frames it saw last (streaming cache), never the future.
* Group norms are per frame (statistics over channels and space only), so no layer mixes in
  future frames either. Every group holds at least 4 channels (:func:`_groups`): a one-channel
  group would remove each frame's mean colour. Hence streaming ``encode_step`` / ``decode_step`` with a
  :data:`TemporalCache` give exactly what the whole clip gives.
* Latents are normalised per channel with ``latent_mean`` / ``latent_std`` buffers stored with the
  weights; :meth:`FrameVAE.fit_latent_stats` fits them on data.
* Training loss: L1 and/or L2 reconstruction + ``beta * KL``. Perceptual and adversarial terms are
  not implemented (the issue makes them optional).

Layout: the public API uses ``(B, T, C, H, W)``; convolutions run on ``(B, C, T, H, W)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Streaming state of a VAE: each causal convolution stores its last ``k - 1`` input frames.
TemporalCache = dict


def _groups(channels: int, min_per_group: int = 4) -> int:
    """Groups of a :class:`FrameGroupNorm`: at most 8, each of at least ``min_per_group`` channels.

    A group of one channel normalises that channel's spatial mean away in every frame; before the
    output convolution that removes each frame's mean colour (the old 8-channel, 8-group norm made
    backgrounds come out in the wrong colour). With several channels per group the mean colour
    survives as the pattern across the group's channels.
    """
    for g in (8, 4, 2):
        if channels % g == 0 and channels // g >= min_per_group:
            return g
    return 1


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm applied to each frame separately (no statistics across time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape  # (B, C, T, H, W)
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class CausalConv3d(nn.Module):
    """3D convolution whose temporal kernel sees the current and the ``kt - 1`` previous frames.

    Args:
        cin, cout: channels.
        kernel: spatial kernel size.
        temporal_kernel: kt; 1 makes it a per-frame 2D convolution.
        stride: spatial stride.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, temporal_kernel: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.kt = temporal_kernel
        self.conv = nn.Conv3d(
            cin, cout, (temporal_kernel, kernel, kernel), stride=(1, stride, stride), padding=(0, kernel // 2, kernel // 2)
        )

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        if self.kt > 1:  # x: (B, C, T, H, W)
            past = cache.get(self) if cache is not None else None
            if past is None:  # start of a clip: the past is the first frame repeated
                past = x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1)
            x = torch.cat([past, x], dim=2)  # (B, C, kt - 1 + T, H, W)
            if cache is not None:
                cache[self] = x[:, :, -(self.kt - 1) :].detach().clone()
        return self.conv(x)


class ResBlock3d(nn.Module):
    """Pre-norm residual block of two causal convolutions."""

    def __init__(self, cin: int, cout: int, temporal_kernel: int) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(_groups(cin), cin)
        self.conv1 = CausalConv3d(cin, cout, 3, temporal_kernel)
        self.norm2 = FrameGroupNorm(_groups(cout), cout)
        self.conv2 = CausalConv3d(cout, cout, 3, temporal_kernel)
        self.skip = CausalConv3d(cin, cout, 1, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return (x if self.skip is None else self.skip(x)) + h


class Upsample(nn.Module):
    """Nearest 2x spatial upsampling followed by a per-frame convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, 1)

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")  # (B, C, T, 2H, 2W)
        return self.conv(x, cache)


def _space_to_depth(x: torch.Tensor, s: int) -> torch.Tensor:
    """``(B, C, T, H, W)`` -> ``(B, C*s*s, T, H/s, W/s)``, each frame on its own (pixel unshuffle)."""
    if s == 1:
        return x
    b, c, t, h, w = x.shape
    y = F.pixel_unshuffle(x.transpose(1, 2).reshape(b * t, c, h, w), s)  # (B*T, C*s*s, H/s, W/s)
    return y.reshape(b, t, c * s * s, h // s, w // s).transpose(1, 2)


def _depth_to_space(x: torch.Tensor, s: int) -> torch.Tensor:
    """Inverse of :func:`_space_to_depth`."""
    if s == 1:
        return x
    b, c, t, h, w = x.shape
    y = F.pixel_shuffle(x.transpose(1, 2).reshape(b * t, c, h, w), s)
    return y.reshape(b, t, c // (s * s), h * s, w * s).transpose(1, 2)


class Encoder(nn.Module):
    """Frames ``(B, 3, T, R, R)`` -> posterior parameters ``(B, 2C, T, R/f, R/f)``.

    ``stem`` > 1 first folds each ``stem x stem`` pixel patch into channels (pixel unshuffle), so
    no convolution runs at full resolution (on CPU the full-resolution layers of a thin network
    cost most of the time and learn slowest).
    """

    def __init__(self, channels: tuple[int, ...], res_blocks: int, latent_channels: int, kt: int, stem: int = 1) -> None:
        super().__init__()
        self.stem = stem
        self.conv_in = CausalConv3d(3 * stem * stem, channels[0], 3, kt)
        self.layers = nn.ModuleList()
        prev = channels[0]
        for i, ch in enumerate(channels):
            for _ in range(res_blocks):
                self.layers.append(ResBlock3d(prev, ch, kt))
                prev = ch
            if i < len(channels) - 1:
                self.layers.append(CausalConv3d(ch, ch, 3, 1, stride=2))
        self.mid = ResBlock3d(prev, prev, kt)
        self.norm_out = FrameGroupNorm(_groups(prev), prev)
        self.conv_out = CausalConv3d(prev, 2 * latent_channels, 3, 1)

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        h = self.conv_in(_space_to_depth(x, self.stem), cache)
        for layer in self.layers:
            h = layer(h, cache)
        h = self.mid(h, cache)
        return self.conv_out(F.silu(self.norm_out(h)), cache)


class Decoder(nn.Module):
    """Latents ``(B, C, T, R/f, R/f)`` -> frames ``(B, 3, T, R, R)`` (``stem``: pixel shuffle at the end)."""

    def __init__(self, channels: tuple[int, ...], res_blocks: int, latent_channels: int, kt: int, stem: int = 1) -> None:
        super().__init__()
        self.stem = stem
        top = channels[-1]
        self.conv_in = CausalConv3d(latent_channels, top, 3, kt)
        self.mid = ResBlock3d(top, top, kt)
        self.layers = nn.ModuleList()
        prev = top
        for i in reversed(range(len(channels))):
            for _ in range(res_blocks):
                self.layers.append(ResBlock3d(prev, channels[i], kt))
                prev = channels[i]
            if i > 0:
                self.layers.append(Upsample(prev))
        self.norm_out = FrameGroupNorm(_groups(prev), prev)
        self.conv_out = CausalConv3d(prev, 3 * stem * stem, 3, 1)

    def forward(self, z: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        h = self.mid(self.conv_in(z, cache), cache)
        for layer in self.layers:
            h = layer(h, cache)
        return _depth_to_space(self.conv_out(F.silu(self.norm_out(h)), cache), self.stem)


class FrameVAE(nn.Module):
    """Causal 3D-convolutional VAE, one latent ``(C, R/f, R/f)`` per frame.

    Args:
        channels: feature widths per level (``len - 1`` stride-2 levels).
        latent_channels: C.
        res_blocks: residual blocks per level.
        temporal_kernel: temporal kernel of the causal convolutions.
        kl_weight: beta of :meth:`loss`.
        recon: ``"l1"``, ``"l2"`` or ``"l1+l2"``.
        stem: pixel-unshuffle factor before the first convolution (1 = none); the spatial factor
            is ``stem * 2 ** (len(channels) - 1)``.
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (8, 16, 32, 32),
        latent_channels: int = 8,
        res_blocks: int = 1,
        temporal_kernel: int = 2,
        kl_weight: float = 1e-6,
        recon: str = "l1",
        stem: int = 1,
    ) -> None:
        super().__init__()
        if stem < 1:
            raise ValueError(f"FrameVAE stem must be >= 1, got {stem}")
        self.latent_channels = latent_channels
        self.downsample = stem * 2 ** (len(channels) - 1)
        self.kl_weight = kl_weight
        self.recon = recon
        self.encoder = Encoder(tuple(channels), res_blocks, latent_channels, temporal_kernel, stem)
        self.decoder = Decoder(tuple(channels), res_blocks, latent_channels, temporal_kernel, stem)
        # Latent normalisation, stored with the weights: z_norm = (z - mean) / std.
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))

    @classmethod
    def from_arch(cls, arch: Any) -> FrameVAE:
        """The frame VAE described by a :class:`~eartalk.core.engine.presets.ModelArch`."""
        return cls(
            arch.vae_channels,
            arch.latent_channels,
            arch.vae_res_blocks,
            arch.vae_temporal_kernel,
            arch.vae_kl_weight,
            arch.vae_recon,
            arch.vae_stem,
        )

    # -- normalisation ---------------------------------------------------------------------------
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents ``(..., C, h, w)`` -> normalised."""
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``(..., C, h, w)`` -> raw."""
        return z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    @torch.no_grad()
    def fit_latent_stats(self, clips: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Set ``latent_mean`` / ``latent_std`` to the per-channel statistics of the posterior means.

        Args:
            clips: iterable of frame batches ``(B, T, 3, R, R)`` in [-1, 1].

        Returns:
            The fitted ``(mean, std)``, each ``(C,)``.
        """
        total = torch.zeros(self.latent_channels, dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        count = 0
        for frames in clips:
            mean, _ = self.posterior(frames.to(self.latent_mean.device))  # (B, T, C, h, w)
            z = mean.double().transpose(0, 2).reshape(self.latent_channels, -1)  # (C, B*T*h*w)
            total += z.sum(1).cpu()
            total_sq += (z * z).sum(1).cpu()
            count += z.shape[1]
        if count == 0:
            raise ValueError("fit_latent_stats needs at least one clip")
        mu = total / count
        std = (total_sq / count - mu * mu).clamp_min(1e-12).sqrt()
        self.latent_mean.copy_(mu.float())
        self.latent_std.copy_(std.float().clamp_min(1e-4))
        return self.latent_mean.clone(), self.latent_std.clone()

    # -- whole clips -----------------------------------------------------------------------------
    def posterior(self, frames: torch.Tensor, cache: TemporalCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw posterior ``(mean, logvar)``, each ``(B, T, C, h, w)``, of frames ``(B, T, 3, R, R)``."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"FrameVAE expects frames (B, T, 3, R, R), got {tuple(frames.shape)}")
        if frames.shape[-1] % self.downsample or frames.shape[-2] % self.downsample:
            raise ValueError(f"frame size {tuple(frames.shape[-2:])} is not divisible by the VAE factor {self.downsample}")
        moments = self.encoder(frames.transpose(1, 2), cache)  # (B, 2C, T, h, w)
        mean, logvar = moments.transpose(1, 2).chunk(2, dim=2)  # (B, T, C, h, w) each
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, frames: torch.Tensor, sample: bool = False, cache: TemporalCache | None = None) -> torch.Tensor:
        """Normalised latents ``(B, T, C, h, w)`` of frames ``(B, T, 3, R, R)`` in [-1, 1].

        Args:
            frames: the clip (or, with ``cache``, its next chunk).
            sample: draw from the posterior instead of taking its mean.
            cache: a :data:`TemporalCache` to continue a stream (None = a new clip).
        """
        mean, logvar = self.posterior(frames, cache)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        return self.normalize(z)

    def decode(self, latents: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        """Frames ``(B, T, 3, R, R)`` from normalised latents ``(B, T, C, h, w)``."""
        return self._decode_raw(self.denormalize(latents), cache)

    def _decode_raw(self, z: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        return self.decoder(z.transpose(1, 2), cache).transpose(1, 2)  # (B, T, 3, R, R)

    # -- streaming -------------------------------------------------------------------------------
    @staticmethod
    def new_cache() -> TemporalCache:
        """An empty streaming cache (one per stream and direction)."""
        return {}

    def encode_step(self, frame: torch.Tensor, cache: TemporalCache) -> torch.Tensor:
        """Normalised latent ``(B, C, h, w)`` of the next frame ``(B, 3, R, R)`` of a stream."""
        return self.encode(frame[:, None], cache=cache)[:, 0]

    def decode_step(self, latent: torch.Tensor, cache: TemporalCache) -> torch.Tensor:
        """Next frame ``(B, 3, R, R)`` of a stream from its normalised latent ``(B, C, h, w)``."""
        return self.decode(latent[:, None], cache=cache)[:, 0]

    # -- training --------------------------------------------------------------------------------
    def loss(self, frames: torch.Tensor, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Reconstruction + ``kl_weight * KL`` of a clip ``(B, T, 3, R, R)`` in [-1, 1].

        Args:
            frames: the clip.
            weight: optional per-pixel weights ``(B, T, 1, R, R)`` of the reconstruction terms
                (e.g. :func:`focus_weights`); the weighted mean is divided by the mean weight, so
                uniform weights give the plain loss.

        Returns:
            ``{"loss", "recon", "kl"}`` scalars (KL averaged per latent element).
        """
        mean, logvar = self.posterior(frames)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        recon = self._decode_raw(z)  # (B, T, 3, R, R)

        def average(err: torch.Tensor) -> torch.Tensor:
            return err.mean() if weight is None else (err * weight).mean() / weight.mean()

        terms = []
        if "l1" in self.recon:
            terms.append(average((recon - frames).abs()))
        if "l2" in self.recon:
            terms.append(average((recon - frames).square()))
        rec = sum(terms)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return {"loss": rec + self.kl_weight * kl, "recon": rec, "kl": kl}


def focus_weights(points: torch.Tensor, resolution: int, sigma: float, weight: float) -> torch.Tensor:
    """Per-pixel loss weights ``1 + weight * max_k exp(-d_k^2 / 2 sigma^2)`` around image points.

    Args:
        points: ``(B, T, K, 2)`` x, y in [0, 1] of the image (e.g. the eyes and mouth corners of
            the synthetic renderer's ``keypoints``).
        resolution: R, the frame side in pixels.
        sigma: Gaussian width as a fraction of the frame side.
        weight: extra weight at a point (0: uniform weights).

    Returns:
        ``(B, T, 1, R, R)`` weights (1 far from every point, ``1 + weight`` on one).
    """
    centres = (torch.arange(resolution, dtype=points.dtype, device=points.device) + 0.5) / resolution
    dx = centres[None, None, None, None, :] - points[..., 0, None, None]  # (B, T, K, 1, R)
    dy = centres[None, None, None, :, None] - points[..., 1, None, None]  # (B, T, K, R, 1)
    bumps = torch.exp(-(dx.square() + dy.square()) / (2.0 * sigma * sigma))  # (B, T, K, R, R)
    return 1.0 + weight * bumps.amax(dim=2, keepdim=True)
