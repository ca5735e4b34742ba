"""Per-frame MAR decoder with a diffusion head (MAR's DiffLoss, continuous tokens).

:class:`MARDecoder` is a small bidirectional transformer over the N visual tokens of frame t. Its
input per token is the backbone context ``z_t`` plus the token itself if it is already known, or a
learned mask token if not. Its output per token conditions :class:`DiffusionHead`, an MLP of adaLN
residual blocks (timestep + context conditioning) that denoises that token.

Training (:meth:`MARDecoder.loss`): a mask ratio from a truncated normal (min 0.7, mean 1.0, std
0.25, at most 1), random order; the diffusion loss only on masked tokens, ``diffusion_batch_mul``
timesteps per token.

Inference (:meth:`MARDecoder.sample`): K unmasking steps in a random order with MAR's cosine
schedule; the tokens unmasked at a step are denoised with D DDIM steps (respaced from the training
schedule), with classifier-free guidance against the null-condition context and a temperature.

Diffusion choices (ours, configurable in ``ModelArch``): 1000 training steps, cosine beta schedule
(Nichol & Dhariwal) or linear, v-prediction (default; stable at few sampling steps) or epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eartalk.core.engine.backbone import MLP, Attention
from eartalk.core.engine.presets import cosine_mask_len


# ---------------------------------------------------------------------------------------------
# Noise schedule
# ---------------------------------------------------------------------------------------------
def make_alphas_cumprod(steps: int, schedule: str) -> torch.Tensor:
    """``(steps,)`` cumulative products of ``1 - beta`` for a ``"cosine"`` or ``"linear"`` schedule."""
    if schedule == "cosine":
        s = 0.008
        x = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
        f = torch.cos((x + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    elif schedule == "linear":
        scale = 1000 / steps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    else:
        raise ValueError(f"unknown noise schedule {schedule!r}")
    return torch.cumprod(1 - betas, dim=0).float()


class Diffusion(nn.Module):
    """Gaussian diffusion on token vectors: training targets and DDIM sampling.

    Args:
        steps: training timesteps.
        schedule: ``"cosine"`` or ``"linear"``.
        prediction: ``"v"`` or ``"eps"``.
    """

    def __init__(self, steps: int = 1000, schedule: str = "cosine", prediction: str = "v") -> None:
        super().__init__()
        if prediction not in ("v", "eps"):
            raise ValueError(f"prediction must be 'v' or 'eps', got {prediction!r}")
        self.steps, self.prediction = steps, prediction
        self.register_buffer("alphas_cumprod", make_alphas_cumprod(steps, schedule), persistent=False)
        self._alphas_fp32 = self.alphas_cumprod.clone()

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        # Keep the schedule in float32 under ``.to(bfloat16)``: in bf16, 1 - alpha_bar rounds to 0 for t < 4.
        super()._apply(fn, recurse)
        self.alphas_cumprod = self._alphas_fp32.to(self.alphas_cumprod.device)
        return self

    def _a(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod[t][:, None]  # (M, 1)
        return a.sqrt(), (1 - a).sqrt()

    def noisy(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t`` of clean tokens ``(M, c)`` at timesteps ``(M,)``."""
        sa, sb = self._a(t)
        return (sa * x0 + sb * noise).to(x0.dtype)

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the head predicts: ``v = sqrt(a) eps - sqrt(1 - a) x0`` or ``eps``."""
        if self.prediction == "eps":
            return noise
        sa, sb = self._a(t)
        return (sa * noise - sb * x0).to(x0.dtype)

    def split(self, x: torch.Tensor, out: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, eps)`` implied by a model output at noisy ``x`` with ``alpha_bar = a``."""
        sa, sb = a.sqrt(), (1 - a).sqrt()
        if self.prediction == "eps":
            return (x - sb * out) / sa, out
        return sa * x - sb * out, sb * x + sa * out

    def respaced(self, num_steps: int) -> list[int]:
        """``num_steps`` training timesteps from T - 1 down to 0 (DDIM respacing)."""
        n = min(num_steps, self.steps)
        return torch.linspace(self.steps - 1, 0, n, dtype=torch.float64).round().long().tolist()  # float64: bf16-true sets the default dtype

    @torch.no_grad()
    def sample(
        self,
        model,
        shape: tuple[int, ...],
        num_steps: int,
        temperature: float = 1.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """DDIM sampling of tokens ``shape = (M, c)``.

        Args:
            model: ``model(x (M, c), t (M,)) -> output (M, c)`` (guidance already applied).
            num_steps: D.
            temperature: scales the initial noise and the per-step noise.
            eta: 0 = deterministic DDIM, 1 = ancestral.
        """
        x = torch.randn(shape, generator=generator, device=_gen_device(generator), dtype=torch.float32).to(device) * temperature
        times = self.respaced(num_steps)
        for i, t in enumerate(times):
            a = self.alphas_cumprod[t]
            a_prev = self.alphas_cumprod[times[i + 1]] if i + 1 < len(times) else torch.ones_like(a)
            out = model(x, torch.full((shape[0],), t, dtype=torch.long, device=x.device))
            x0, eps = self.split(x, out, a)
            sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).clamp_min(0).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
            if eta > 0 and i + 1 < len(times):
                x = x + sigma * temperature * torch.randn(shape, generator=generator, device=_gen_device(generator), dtype=torch.float32).to(device)
        return x


def _gen_device(generator: torch.Generator | None) -> torch.device | str:
    """Where random numbers are drawn: the generator's device (a CUDA generator draws on the GPU, no CPU round trip)."""
    return generator.device if generator is not None else "cpu"


# ---------------------------------------------------------------------------------------------
# Diffusion head
# ---------------------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(M, dim)`` of integer timesteps ``(M,)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, dim % 2))


class ResBlockMLP(nn.Module):
    """adaLN residual MLP block of the diffusion head (zero-initialised gate)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)  # (M, W) each
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class DiffusionHead(nn.Module):
    """MLP denoiser of one token: ``(x_t (M, c), t (M,), cond (M, Dc)) -> (M, c)``."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int, time_dim: int = 256) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_in = nn.Linear(cond_dim, width)
        self.x_in = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(ResBlockMLP(width) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, token_dim)
        for layer in (self.ada_out[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, self.time_embed(t) + self.cond_in(cond))

    def time_embed(self, t: torch.Tensor) -> torch.Tensor:
        """``(M, W)`` embedding of timesteps ``(M,)``."""
        return self.time_mlp(timestep_embedding(t, self.time_dim).to(self.time_mlp[0].weight.dtype))

    def denoise(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Output for noisy tokens ``(M, c)`` given the summed conditioning ``c`` ``(M or 1, W)``."""
        h = self.x_in(x.to(self.x_in.weight.dtype))
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.out(self.norm_out(h) * (1 + scale) + shift)


# ---------------------------------------------------------------------------------------------
# MAR decoder
# ---------------------------------------------------------------------------------------------
class DecoderBlock(nn.Module):
    """Pre-norm bidirectional transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), None)
        return x + self.mlp(self.norm2(x))


def truncated_normal(
    shape: tuple[int, ...], mean: float, std: float, low: float, high: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Samples of ``N(mean, std)`` truncated to ``[low, high]`` (inverse-CDF method)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    lo, hi = normal.cdf(torch.tensor((low - mean) / std, dtype=torch.float32)), normal.cdf(torch.tensor((high - mean) / std, dtype=torch.float32))
    u = lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=torch.float32)  # float32 under any default dtype
    return (mean + std * torch.special.ndtri(u)).clamp(low, high)


def combine_guidance(outs: Sequence[torch.Tensor], scales: Sequence[float]) -> torch.Tensor:
    """Classifier-free guidance over branches ``outs = (b_K, ..., b_0, u)`` with scales
    ``(g, s_1..s_K)``: ``u + g (b_0 - u) + sum_k s_k (b_k - b_{k-1})`` (``K = 0``: plain CFG)."""
    *branches, u = outs
    branches = branches[::-1]  # b_0 .. b_K
    out = u + scales[0] * (branches[0] - u)
    for k in range(1, len(branches)):
        out = out + scales[k] * (branches[k] - branches[k - 1])
    return out


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(values * weights) / sum(weights)`` (same shapes; 0 weights everywhere give 0)."""
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


class MARDecoder(nn.Module):
    """Masked autoregressive decoder of one frame's tokens, with a diffusion head.

    Args:
        token_dim: width c of a visual token.
        context_dim: width of the backbone context z_t.
        num_tokens, grid: N and the side of the token grid.
        width, heads, depth, mlp_ratio: the bidirectional transformer.
        head_width, head_depth: the diffusion MLP.
        diffusion_steps, noise_schedule, prediction: the diffusion process.
        diffusion_batch_mul: timesteps per masked token and training step.
        mask_ratio_min, mask_ratio_mean, mask_ratio_std: the truncated-normal mask ratio.
        timestep_bias: training timesteps are ``floor(T * u ** (1 / bias))`` with u uniform: 1 is
            uniform, 2 a density rising linearly with the noise level (a share 1 - 0.75 ** bias of
            them above 3/4 of T, where the frame's coarse structure is decided).
        mean_weight: 0 (off) or the weight of the *mean path*: a regression head reads every
            token's mean ``mu(z)`` straight from the backbone context (MSE to the target, all
            tokens), and the diffusion head generates the residual ``target - mu`` (``mu`` without
            gradient there); a sample is ``mu + residual``, guided with the same scales.
    """

    def __init__(
        self,
        token_dim: int,
        context_dim: int,
        num_tokens: int,
        grid: int,
        width: int,
        heads: int,
        depth: int,
        mlp_ratio: float = 4.0,
        head_width: int = 64,
        head_depth: int = 2,
        diffusion_steps: int = 1000,
        noise_schedule: str = "cosine",
        prediction: str = "v",
        diffusion_batch_mul: int = 4,
        mask_ratio_min: float = 0.7,
        mask_ratio_mean: float = 1.0,
        mask_ratio_std: float = 0.25,
        timestep_bias: float = 1.0,
        mean_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if timestep_bias <= 0:
            raise ValueError(f"timestep_bias must be > 0, got {timestep_bias}")
        if not mean_weight >= 0:  # also NaN
            raise ValueError(f"mean_weight must be >= 0 (0 = no mean path), got {mean_weight}")
        self.timestep_bias = timestep_bias
        self.mean_weight = float(mean_weight)
        self.token_dim, self.num_tokens, self.grid, self.width = token_dim, num_tokens, grid, width
        self.diffusion_batch_mul = diffusion_batch_mul
        self.mask_ratio = (mask_ratio_min, mask_ratio_mean, mask_ratio_std)
        self.z_in = nn.Linear(context_dim, width)
        self.token_in = nn.Linear(token_dim, width)
        self.mask_token = nn.Parameter(torch.randn(width) * 0.02)
        self.row_embed = nn.Parameter(torch.randn(grid, width) * 0.02)
        self.col_embed = nn.Parameter(torch.randn(grid, width) * 0.02)
        self.blocks = nn.ModuleList(DecoderBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.head = DiffusionHead(token_dim, width, head_width, head_depth)
        self.diffusion = Diffusion(diffusion_steps, noise_schedule, prediction)
        self.mean = None
        if self.mean_weight > 0:
            self.mean = nn.Sequential(nn.Linear(context_dim, context_dim), nn.GELU(),
                                      nn.Linear(context_dim, token_dim))
            nn.init.zeros_(self.mean[-1].weight)  # starts at mu = 0 (the reference, with the delta target)
            nn.init.zeros_(self.mean[-1].bias)

    def mean_of(self, z: torch.Tensor) -> torch.Tensor | None:
        """The mean path's ``mu(z)`` ``(..., N, c)`` of contexts ``(..., N, Dz)`` (None when off)."""
        return None if self.mean is None else self.mean(z)

    def split_mean(self, z: torch.Tensor, tokens: torch.Tensor,
                   weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual the diffusion head learns, and the mean path's weighted MSE (0 when off)."""
        mu = self.mean_of(z)
        if mu is None:
            return tokens, tokens.new_zeros(())
        err = (mu - tokens).square()  # (B, N, c)
        if weight is None:
            mse = err.mean()
        else:
            w = weight.to(err.dtype)
            mse = weighted_mean(err, (w[..., None] if w.dim() == 2 else w).expand_as(err))
        return tokens - mu.detach(), mse

    def context(self, z: torch.Tensor, tokens: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Per-token conditions ``(B, N, width)`` of the diffusion head.

        Args:
            z: ``(B, N, Dz)`` backbone context of the frame.
            tokens: ``(B, N, c)`` token values (only read where ``known``).
            known: ``(B, N)`` bool.
        """
        pos = (self.row_embed[:, None] + self.col_embed[None]).reshape(self.num_tokens, self.width)
        tok = torch.where(known[..., None], self.token_in(tokens), self.mask_token)  # (B, N, W)
        x = self.z_in(z) + tok + pos
        for blk in self.blocks:
            x = blk(x)
        return self.norm_out(x)

    def random_masks(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Training masks ``(B, N)`` bool (True = masked = to predict) with truncated-normal ratios."""
        low, mean, std = self.mask_ratio
        ratio = truncated_normal((batch,), mean, std, low, 1.0, generator)  # (B,)
        count = (ratio * self.num_tokens).ceil().clamp(1, self.num_tokens).long()  # (B,)
        rank = torch.rand(batch, self.num_tokens, generator=generator, dtype=torch.float32).argsort(1).argsort(1)  # random order
        return (rank < count[:, None]).to(device)

    def loss(self, z: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator | None = None,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """Diffusion loss on the masked tokens.

        Args:
            z: ``(B, N, Dz)`` contexts.
            tokens: ``(B, N, c)`` target tokens (normalised latents, patchified).
            weight: optional ``(B, N)`` per-token or ``(B, N, c)`` per-element weights (e.g. the
                eyes and mouth weighted up); the loss is then the weighted mean over the masked
                tokens' elements (uniform = plain).

        Returns:
            Scalar mean loss over masked tokens and diffusion samples (plus ``mean_weight`` times
            the mean path's MSE over all tokens, when on).
        """
        return self.loss_terms(z, tokens, generator, weight)["loss"]

    def loss_terms(self, z: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator | None = None,
                   weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """:meth:`loss` (``loss``) and its two terms: ``diffusion`` (of the residual with the mean
        path) and ``mean_mse`` (the mean path's weighted MSE; 0 when off)."""
        tokens, mean_mse = self.split_mean(z, tokens, weight)
        mask, cond, target, t, noise = self._noised(z, tokens, generator)
        out = self.head(self.diffusion.noisy(target, t, noise), t, cond)
        goal = self.diffusion.target(target, t, noise)
        if weight is None:
            diffusion = F.mse_loss(out, goal)
        else:
            w = weight.to(out.dtype)[mask]  # (M,) or (M, c)
            w = (w[:, None] if w.dim() == 1 else w).expand(-1, out.shape[-1]).repeat(self.diffusion_batch_mul, 1)  # (M * mul, c)
            diffusion = weighted_mean((out - goal).square(), w)
        return {"loss": diffusion + self.mean_weight * mean_mse, "diffusion": diffusion, "mean_mse": mean_mse}

    def distill_loss(self, z: torch.Tensor, teacher: MARDecoder, z_teacher: torch.Tensor, tokens: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared gap between this decoder's denoiser output and ``teacher``'s on the same
        masked tokens, timesteps and noise (function-space distillation; no gradient to the teacher).

        Args:
            z: ``(B, N, Dz)`` this model's contexts.
            teacher: the decoder to match (same sizes).
            z_teacher: ``(B, N, Dz)`` the teacher's contexts of the same frames.
            tokens: ``(B, N, c)`` target tokens (the known ones enter both contexts).

        With the mean path (both decoders must have it or neither) the known tokens and the noised
        targets are residuals around the teacher's mean, and the gap of the two means is added.
        """
        if (self.mean is None) != (teacher.mean is None):
            raise ValueError("distill_loss: the student and the teacher must both have the mean path or neither (mean_weight)")
        gap = tokens.new_zeros(())
        if self.mean is not None:
            with torch.no_grad():
                mu_t = teacher.mean_of(z_teacher)
            gap = F.mse_loss(self.mean_of(z), mu_t)
            tokens = tokens - mu_t
        mask, cond, target, t, noise = self._noised(z, tokens, generator)
        noisy = self.diffusion.noisy(target, t, noise)
        with torch.no_grad():
            cond_t = teacher.context(z_teacher, tokens, ~mask)[mask].repeat(self.diffusion_batch_mul, 1)
            goal = teacher.head(noisy, t, cond_t)
        return F.mse_loss(self.head(noisy, t, cond), goal) + gap

    def timesteps(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(count,)`` training timesteps: uniform, or biased toward high noise (``timestep_bias``)."""
        steps = self.diffusion.steps
        if self.timestep_bias == 1.0:
            return torch.randint(0, steps, (count,), generator=generator)
        u = torch.rand(count, generator=generator, dtype=torch.float64)
        return (steps * u ** (1.0 / self.timestep_bias)).long().clamp_(0, steps - 1)

    def _noised(self, z: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        """One training draw: masks ``(B, N)``, the masked tokens' head conditions ``(M', W)``, their
        targets ``(M', c)``, timesteps ``(M',)`` and noise (``M' = M * diffusion_batch_mul``)."""
        mask = self.random_masks(z.shape[0], generator, z.device)  # (B, N)
        cond = self.context(z, tokens, ~mask)[mask]  # (M, W)
        mul = self.diffusion_batch_mul
        target, cond = tokens[mask].repeat(mul, 1), cond.repeat(mul, 1)  # (M * mul, ...)
        t = self.timesteps(target.shape[0], generator).to(z.device)
        noise = torch.randn(target.shape, generator=generator, dtype=torch.float32).to(z.device, z.dtype)
        return mask, cond, target, t, noise

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        z_null: torch.Tensor | None = None,
        steps: int = 4,
        denoise_steps: int = 8,
        cfg: float = 1.0,
        cfg_schedule: str = "constant",
        temperature: float = 1.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        separate: Sequence[float] = (),
    ) -> torch.Tensor:
        """Generate the tokens of one frame.

        Args:
            z: ``(B, N, Dz)`` conditional context (every control given).
            z_null: ``(G * B, N, Dz)`` the other guidance branches (None, or ``cfg == 1`` and no
                ``separate``: no guidance): the null-condition context (``G = 1``) or, with
                ``separate`` scales ``s_1..s_K``, the contexts ``b_{K-1}, ..., b_0, u`` (``G = K + 1``;
                ``z`` is ``b_K``): see :attr:`SamplingConfig.cfg_separate`.
            steps: K unmasking steps (cosine schedule, random order).
            denoise_steps: D DDIM steps per token.
            cfg, cfg_schedule: guidance scale, constant or growing linearly with known tokens
                (the ``separate`` scales follow the same schedule).
            temperature, eta: diffusion sampler noise.
            generator: random generator (order and noise).
            separate: guidance scales of the separately guided controls, in their order.

        Returns:
            ``(B, N, c)`` tokens (with the mean path: the guided mean plus the sampled residual;
            the mean is guided with the final step's scales).
        """
        b, n, device = z.shape[0], self.num_tokens, z.device
        separate = [float(x) for x in separate]
        guided = z_null is not None and (cfg != 1.0 or any(x != 1.0 for x in separate))
        reps = 2 + len(separate) if guided else 1
        if guided and z_null.shape[0] != (reps - 1) * b:
            raise ValueError(f"MARDecoder.sample: {len(separate)} separate scale(s) need {reps - 1} x {b} rows in z_null, "
                             f"got {z_null.shape[0]}")
        steps = max(1, min(steps, n))
        tokens = torch.zeros(b, n, self.token_dim, device=device, dtype=z.dtype)
        order = torch.rand(b, n, generator=generator, device=_gen_device(generator), dtype=torch.float32).argsort(dim=1).to(device)  # (B, N)
        zz = torch.cat([z, z_null]) if guided else z  # (B or 2B, N, Dz)
        known_count = 0
        for k in range(steps):
            known = torch.zeros(b, n, dtype=torch.bool, device=device)
            known.scatter_(1, order[:, :known_count], True)
            masked_next = 0 if k == steps - 1 else max(1, min(n - known_count - 1, cosine_mask_len(n, k, steps)))
            idx = order[:, known_count : n - masked_next]  # (B, m) tokens decided at this step
            m = idx.shape[1]
            ctx = self.context(zz, tokens.repeat(reps, 1, 1), known.repeat(reps, 1))  # (reps * B, N, W)
            ctx = torch.gather(ctx, 1, idx.repeat(reps, 1)[..., None].expand(-1, -1, ctx.shape[-1]))  # (reps*B, m, W)
            cond = self.head.cond_in(ctx.reshape(reps * b * m, -1))  # (reps*B*m, Wh), once per token
            frac = 1.0 if cfg_schedule == "constant" else (n - masked_next) / n
            scales = [1.0 + (x - 1.0) * frac for x in (cfg, *separate)]  # g, s_1..s_K at this step

            def model(x: torch.Tensor, t: torch.Tensor, cond=cond, scales=scales) -> torch.Tensor:
                c = cond + self.head.time_embed(t[:1])  # every token shares the timestep
                if not guided:
                    return self.head.denoise(x, c)
                outs = self.head.denoise(x.repeat(reps, 1), c).chunk(reps)  # b_K, ..., b_0, u
                return combine_guidance(outs, scales)

            new = self.diffusion.sample(model, (b * m, self.token_dim), denoise_steps, temperature, eta, generator, device)
            tokens.scatter_(1, idx[..., None].expand(-1, -1, self.token_dim), new.view(b, m, -1).to(tokens.dtype))
            known_count = n - masked_next
        mu = self.mean_of(zz)
        if mu is None:
            return tokens
        if guided:
            mu = combine_guidance(mu.chunk(reps), scales)
        return tokens + mu.to(tokens.dtype)
