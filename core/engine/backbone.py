"""GPT-style frame transformer with Sink Frame Window Attention (SFA) and the adaLN sink.

Sequence layout (one block per frame)::

    block 0 (sink):  [ N reference-latent tokens ]
    block t >= 1:    [ K condition slots of frame t | N latent tokens of frame t - 1 ]

(For t = 1 the previous frame is the reference.) The outputs at the N visual positions of block t
are the context ``z_t`` from which the MAR decoder generates frame t.

Attention rule: a query in block t sees a key in block s iff ``s == 0 or t - W < s <= t``;
everything inside a block sees everything (bidirectional audio-visual attention). The mask acts in
every layer, as in a sliding-window LM: with depth L a block's output can depend on inputs up to
``L * (W - 1)`` blocks back through the keys/values of its window (this is what the kv-cache stores),
never on anything later and never on anything further back.

Positions:
    * inside a frame: learned 2D (row + column) embeddings of the N visual tokens, identical in
      every block; condition slots carry the stack's per-plugin type embedding; a learned role
      embedding tells sink / slot / visual tokens apart;
    * frame position: a rotary embedding of the cyclic frame index ``t mod P`` on a share of each
      head's dims, with integer harmonics of ``2 pi / P`` so ``R(t mod P) = R(t)`` exactly. Scores
      between frame blocks then depend only on ``t - s`` (< W < P, no aliasing), never on t itself.
      The sink has its own, position-free place: its rotary channels are zero, so its scores do
      not depend on t either. Together: with the same sink and the same cached window, the output
      of frame t does not depend on t (a model trained on T-frame clips runs for hours).

adaLN sink: an identity vector pooled from the reference latents modulates every block through
adaLN-Zero (shift, scale and gate of attention and MLP; the modulation layers are zero-initialised,
so every block starts as the identity).

Streaming: :class:`KVCache` holds the sink's keys/values and a ring of W block slots per layer;
:meth:`Backbone.step` runs one block against it (constant cost and memory per frame).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from eartalk.core.engine.attention import SFALayout
from eartalk.core.engine.presets import harmonics


def block_mask(q_blocks: torch.Tensor, k_blocks: torch.Tensor, window: int, sink: bool = True) -> torch.Tensor:
    """SFA + FCA attention rule as a boolean matrix (True = may attend).

    Args:
        q_blocks: ``(Sq,)`` block index of every query token (0 = sink).
        k_blocks: ``(Sk,)`` block index of every key token.
        window: W.
        sink: frame blocks see the sink (False: the "no attention sink" ablation; the sink's own
            tokens still see each other).

    Returns:
        ``(Sq, Sk)`` bool: ``s == 0 or t - W < s <= t`` (without the sink: ``s == t == 0`` or
        ``0 < s and t - W < s <= t``).
    """
    t = q_blocks[:, None]
    s = k_blocks[None, :]
    sink_ok = (s == 0) & ((t == 0) | sink)
    return sink_ok | ((s > 0) & (s > t - window) & (s <= t))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample ``(B, D)`` or per-position ``(B, S, D)`` shift/scale."""
    if shift.dim() == 2:
        shift, scale = shift[:, None], scale[:, None]
    return x * (1 + scale) + shift


class FrameRotary(nn.Module):
    """Rotary embedding of the cyclic frame index on the first ``rot_dims`` dims of each head.

    Args:
        head_dim: attention head width.
        fraction: share of the head rotated (rounded down to an even number of dims).
        period: P; angles are ``2 pi * k * (t mod P) / P`` for integer harmonics k.
    """

    def __init__(self, head_dim: int, fraction: float, period: int) -> None:
        super().__init__()
        self.rot_dims = int(head_dim * fraction) // 2 * 2
        self.period = period
        freqs = torch.tensor(harmonics(self.rot_dims // 2, period), dtype=torch.float32) * (2 * math.pi / period)
        self.register_buffer("freqs", freqs, persistent=False)  # (rot_dims / 2,)
        self._freqs_fp32 = freqs.clone()

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        # Keep the frequencies in float32 under ``.to(bfloat16)`` (bf16 angles are off by up to ~0.4 rad).
        super()._apply(fn, recurse)
        self.freqs = self._freqs_fp32.to(self.freqs.device)
        return self

    def tables(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos``/``sin`` tables ``(S, rot_dims / 2)`` for tokens in ``blocks`` ``(S,)``; zero for the sink."""
        phase = torch.remainder(blocks, self.period).to(self.freqs.dtype)  # cyclic t mod P
        angles = phase[:, None] * self.freqs[None]  # (S, rot/2)
        keep = (blocks != 0).to(angles.dtype)[:, None]  # sink: no frame position, rotary channels off
        return angles.cos() * keep, angles.sin() * keep

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` ``(B, H, S, hd)``."""
        if self.rot_dims == 0:
            return x
        half = self.rot_dims // 2
        x1, x2, rest = x[..., :half], x[..., half : self.rot_dims], x[..., self.rot_dims :]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # tables are float32 (see _apply)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


class KVCache:
    """Per-layer keys/values of the sink and of a ring of W frame blocks (streaming state).

    Block t is written to slot ``t mod W``, which overwrites (evicts) block ``t - W``: the cache
    always holds the sink and exactly the blocks ``t - W + 1 .. t`` that block t may see.

    Args:
        layers, batch, heads, head_dim: sizes of the backbone.
        sink_len: N, tokens of the sink.
        block_len: K + N, tokens of a frame block.
        window: W.
    """

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        sink_len: int,
        block_len: int,
        window: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        sink: bool = True,
    ) -> None:
        self.sink_len, self.block_len, self.window = sink_len, block_len, window
        self.sink = sink
        size = sink_len + window * block_len
        self.k = torch.zeros(layers, batch, heads, size, head_dim, device=device, dtype=dtype)  # (L, B, H, S, hd)
        self.v = torch.zeros_like(self.k)
        self.valid = torch.zeros(size, dtype=torch.bool, device=device)  # (S,)
        self.identity: torch.Tensor | None = None  # the adaLN identity vector (B, I), set by Backbone.open
        self.slot_blocks: list[int | None] = [None] * window
        self.region = (0, sink_len)

    def begin_sink(self) -> None:
        self.region = (0, self.sink_len)
        self.valid[: self.sink_len] = True

    def begin_block(self, t: int) -> None:
        """Make slot ``t mod W`` the write region of block t (evicting block t - W)."""
        slot = t % self.window
        start = self.sink_len + slot * self.block_len
        self.region = (start, start + self.block_len)
        self.slot_blocks[slot] = t
        self.valid[start : start + self.block_len] = True

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` ``(B, H, L, hd)`` of the current region; return the layer's full buffers."""
        a, b = self.region
        self.k[layer, :, :, a:b] = k
        self.v[layer, :, :, a:b] = v
        return self.k[layer], self.v[layer]

    def key_mask(self) -> torch.Tensor:
        """``(1, 1, 1, S)`` bool: the keys a query of the current block may see."""
        if self.region[0] == 0:  # the sink sees only itself
            mask = torch.zeros_like(self.valid)
            mask[: self.sink_len] = True
            return mask[None, None, None]
        if not self.sink:  # "no attention sink" ablation: frame blocks never see the sink keys
            mask = self.valid.clone()
            mask[: self.sink_len] = False
            return mask[None, None, None]
        return self.valid[None, None, None]

    def cached_blocks(self) -> list[int]:
        """Frame blocks currently held (sorted)."""
        return sorted(b for b in self.slot_blocks if b is not None)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2 + self.valid.numel()


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` with a boolean mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        rotary: FrameRotary | None = None,
        cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        b, s, d = x.shape  # (B, S, D)
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, S, hd)
        if rotary is not None and cos_sin is not None:
            q, k = rotary(q, *cos_sin), rotary(k, *cos_sin)
        if cache is not None:
            k, v = cache.write(layer, k, v)  # (B, H, S_cache, hd)
            mask = cache.key_mask()
        if isinstance(mask, SFALayout):  # block-sparse training path (core/engine/attention.py)
            out = mask.attend(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, S, hd)
        return self.proj(out.transpose(1, 2).reshape(b, s, d))


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class BackboneBlock(nn.Module):
    """Transformer block with adaLN-Zero modulation by the identity vector."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, identity_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(identity_dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: gates start at 0, the block is the identity
        nn.init.zeros_(self.ada[1].bias)

    def modulation(self, identity: torch.Tensor) -> torch.Tensor:
        """``(B, 6, D)`` (or ``(B, S, 6, D)`` from ``(B, S, I)``): shift/scale/gate of attention, then of the MLP."""
        return self.ada(identity).unflatten(-1, (6, -1))

    def forward(
        self,
        x: torch.Tensor,
        mod: torch.Tensor,
        mask: torch.Tensor | None,
        rotary: FrameRotary,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        if mod.dim() == 3:  # (B, 6, D): one modulation for every position
            mod = mod[:, None]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(2)  # (B, 1 or S, D) each
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), mask, rotary, cos_sin, cache, layer)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class Backbone(nn.Module):
    """The frame transformer.

    Args:
        token_dim: width of a visual token (``C * p * p``).
        num_tokens: N, visual tokens per frame.
        grid: side of the token grid (``N = grid ** 2``).
        num_slots: K, condition slots per frame.
        cond_dim: width of the condition slots (projected to ``width`` if different).
        width, heads, depth, mlp_ratio: transformer sizes.
        identity_dim: width of the pooled identity vector.
        window: W.
        period: P (> W) of the cyclic frame positions.
        frame_rope_fraction: share of each head's dims carrying the frame rotary.
        context_noise: max std of the exposure-bias noise on previous-frame latents (training).
        context_noise_per: ``"clip"`` (one std per clip) or ``"frame"`` (one per frame).
        context_noise_embed: add ``sigma * noise_embed`` to the visual tokens (the model knows the
            noise level; sigma is 0 at inference).
        sink_attention: frame blocks attend to the sink (False: the "no attention sink" ablation).
        adaln_identity: adaLN modulated by the pooled reference identity (False: a learned constant).
    """

    def __init__(
        self,
        token_dim: int,
        num_tokens: int,
        grid: int,
        num_slots: int,
        cond_dim: int,
        width: int,
        heads: int,
        depth: int,
        mlp_ratio: float = 4.0,
        identity_dim: int = 32,
        window: int = 4,
        period: int = 8,
        frame_rope_fraction: float = 0.5,
        context_noise: float = 0.0,
        context_noise_per: str = "clip",
        context_noise_embed: bool = False,
        sink_attention: bool = True,
        adaln_identity: bool = True,
        control_adaln: bool = False,
        context_skip: bool = False,
        skip_delta: bool = False,
    ) -> None:
        super().__init__()
        if period <= window:
            raise ValueError(f"period P must be > window W, got P={period}, W={window}")
        self.token_dim, self.num_tokens, self.grid, self.num_slots = token_dim, num_tokens, grid, num_slots
        self.width, self.heads, self.depth = width, heads, depth
        self.window, self.period = window, period
        if context_noise_per not in ("clip", "frame"):
            raise ValueError(f"context_noise_per must be 'clip' or 'frame', got {context_noise_per!r}")
        self.context_noise, self.context_noise_per = context_noise, context_noise_per
        self.sink_attention, self.adaln_identity = sink_attention, adaln_identity
        self.block_len = num_slots + num_tokens
        # Inputs.
        self.latent_in = nn.Linear(token_dim, width)
        self.cond_in = nn.Identity() if cond_dim == width else nn.Linear(cond_dim, width)
        self.row_embed = nn.Parameter(torch.randn(grid, width) * 0.02)  # (g, D) 2D positions
        self.col_embed = nn.Parameter(torch.randn(grid, width) * 0.02)  # (g, D)
        self.role_embed = nn.Parameter(torch.randn(3, width) * 0.02)  # sink / slot / visual
        self.noise_embed = nn.Parameter(torch.zeros(width)) if context_noise_embed else None  # (D,)
        # adaLN sink: identity vector pooled from the reference latents (per-token MLP, mean, MLP);
        # the "no adaLN identity" ablation uses a learned constant vector instead.
        if adaln_identity:
            self.id_in = nn.Linear(token_dim, identity_dim)
            self.id_pos = nn.Parameter(torch.randn(num_tokens, identity_dim) * 0.02)
            self.id_out = nn.Sequential(nn.SiLU(), nn.Linear(identity_dim, identity_dim))
        else:
            self.id_const = nn.Parameter(torch.randn(identity_dim) * 0.02)  # (I,)
        # Transformer.
        self.rotary = FrameRotary(width // heads, frame_rope_fraction, period)
        self.blocks = nn.ModuleList(BackboneBlock(width, heads, mlp_ratio, identity_dim) for _ in range(depth))
        # Per-frame control adaLN (our choice, off by default): the frame's condition slots, flattened
        # and projected, are added to the identity vector that modulates that frame block's positions.
        self.control_adaln = control_adaln
        if control_adaln:
            self.ctrl_ada = nn.Linear(num_slots * width, identity_dim)
            nn.init.zeros_(self.ctrl_ada.weight)  # starts as the identity-only modulation
            nn.init.zeros_(self.ctrl_ada.bias)
        # Context skip (our choice, off by default): each visual output z_t gets a linear map of
        # its own input token (minus the reference's with ``skip_delta``), zero-initialised, so
        # "frame t looks like frame t - 1" is one linear layer away instead of a path through the
        # whole residual stream.
        self.skip_delta = skip_delta
        self.context_skip = nn.Linear(token_dim, width) if context_skip else None
        if self.context_skip is not None:
            nn.init.zeros_(self.context_skip.weight)
            nn.init.zeros_(self.context_skip.bias)
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(identity_dim, 2 * width))
        nn.init.zeros_(self.ada_out[1].weight)
        nn.init.zeros_(self.ada_out[1].bias)

    # -- embeddings ------------------------------------------------------------------------------
    def pos2d(self) -> torch.Tensor:
        """``(N, D)`` 2D position embedding of the visual tokens (row-major)."""
        return (self.row_embed[:, None] + self.col_embed[None]).reshape(self.num_tokens, self.width)

    def identity(self, ref_tokens: torch.Tensor) -> torch.Tensor:
        """Identity vector ``(B, identity_dim)`` pooled from reference tokens ``(B, N, c)``."""
        if not self.adaln_identity:
            return self.id_const.expand(ref_tokens.shape[0], -1)
        h = F.silu(self.id_in(ref_tokens) + self.id_pos)  # (B, N, I)
        return self.id_out(h.mean(dim=1))

    def modulations(self, identity: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer adaLN parameters ``(B, 6, D)`` and the output's ``(B, 2, D)`` (last item);
        from a per-position ``(B, S, I)`` vector: ``(B, S, 6, D)`` and ``(B, S, 2, D)``."""
        mods = [blk.modulation(identity) for blk in self.blocks]
        mods.append(self.ada_out(identity).unflatten(-1, (2, -1)))
        return mods

    def control_vector(self, cond: torch.Tensor) -> torch.Tensor:
        """``(B, T, I)`` control part of the adaLN vector of each frame block, from slots ``(B, T, K, Dc)``."""
        return self.ctrl_ada(self.cond_in(cond).flatten(-2))

    def frame_modulations(self, identity: torch.Tensor, cond: torch.Tensor, blocks: torch.Tensor, start: int) -> list[torch.Tensor]:
        """Modulations of a whole sequence whose positions lie in ``blocks`` (:meth:`token_blocks`):
        per position with ``control_adaln`` (the sink's positions get the identity alone)."""
        if not self.control_adaln:
            return self.modulations(identity)
        ctrl = self.control_vector(cond)  # (B, T, I)
        per_block = torch.cat([ctrl.new_zeros(ctrl.shape[0], 1, ctrl.shape[-1]), ctrl], dim=1)  # (B, 1 + T, I): sink first
        index = torch.where(blocks == 0, 0, blocks - start + 1)  # (S,) into per_block
        return self.modulations(identity[:, None] + per_block[:, index])

    def skip(self, z: torch.Tensor, prev_tokens: torch.Tensor, ref_tokens: torch.Tensor) -> torch.Tensor:
        """``z`` ``(B, T, N, D)`` plus the context skip of the (noised) context tokens ``(B, T, N, c)``
        (unchanged without ``context_skip``); ``ref_tokens`` ``(B, N, c)``."""
        if self.context_skip is None:
            return z
        source = prev_tokens - ref_tokens[:, None] if self.skip_delta else prev_tokens
        return z + self.context_skip(source)

    def embed_sink(self, ref_tokens: torch.Tensor) -> torch.Tensor:
        """Sink block ``(B, N, D)`` from reference tokens ``(B, N, c)``."""
        return self.latent_in(ref_tokens) + self.pos2d() + self.role_embed[0]

    def embed_blocks(
        self, cond: torch.Tensor, prev_tokens: torch.Tensor, sigma: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Frame blocks ``(B, T, K + N, D)`` from slots ``(B, T, K, Dc)`` and previous latents ``(B, T, N, c)``.

        ``sigma`` ``(B, T)``: context-noise level of each block (used with ``context_noise_embed``).
        """
        slots = self.cond_in(cond) + self.role_embed[1]  # (B, T, K, D)
        visual = self.latent_in(prev_tokens) + self.pos2d() + self.role_embed[2]  # (B, T, N, D)
        if self.noise_embed is not None and sigma is not None:
            visual = visual + sigma[..., None, None].to(visual.dtype) * self.noise_embed
        return torch.cat([slots, visual], dim=2)

    def noise_context(
        self, prev_tokens: torch.Tensor, generator: torch.Generator | None = None, clean_first: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exposure-bias mitigation: Gaussian noise of std ``sigma ~ U(0, context_noise)``.

        One sigma per clip (``context_noise_per="clip"``) or per frame (``"frame"``).

        Args:
            prev_tokens: ``(B, T, N, c)`` context latents of the blocks.
            clean_first: leave block 1's input clean (it is the reference, as at inference).

        Returns:
            The noisy tokens and the sigma of every block ``(B, T)``.
        """
        b, t = prev_tokens.shape[:2]
        if self.context_noise <= 0:
            return prev_tokens, torch.zeros(b, t, device=prev_tokens.device)
        cols = 1 if self.context_noise_per == "clip" else t
        std = (torch.rand(b, cols, generator=generator) * self.context_noise).expand(b, t).clone()  # (B, T)
        if clean_first:
            std[:, 0] = 0.0
        std = std.to(prev_tokens.device)
        noise = torch.randn(prev_tokens.shape, generator=generator).to(prev_tokens.device)
        return prev_tokens + std[..., None, None].to(prev_tokens.dtype) * noise.to(prev_tokens.dtype), std

    # -- whole sequence (training, recomputation) -----------------------------------------------
    def forward(
        self,
        ref_tokens: torch.Tensor,
        cond: torch.Tensor,
        prev_tokens: torch.Tensor,
        start: int = 1,
        return_all: bool = False,
        noise: bool | None = None,
        clean_first: bool = True,
    ) -> torch.Tensor:
        """All T frame blocks in one pass under the SFA mask (teacher forcing).

        Args:
            ref_tokens: ``(B, N, c)`` reference latent tokens (the sink).
            cond: ``(B, T, K, Dc)`` condition slots of frames ``start .. start + T - 1``.
            prev_tokens: ``(B, T, N, c)`` latent tokens of the frame before each of them.
            start: block index of the first frame block (1 for a clip from its start).
            return_all: return hidden states at every position ``(B, N + T * (K + N), D)``.
            noise: add context noise (default: in training mode only).
            clean_first: keep block 1's context clean (it is the reference) when noising.

        Returns:
            ``(B, T, N, D)`` contexts z_t (outputs at the visual positions of every block).
        """
        b, t = cond.shape[:2]
        sigma = None
        if self.training if noise is None else noise:
            prev_tokens, sigma = self.noise_context(prev_tokens, clean_first=clean_first)
        x = torch.cat([self.embed_sink(ref_tokens), self.embed_blocks(cond, prev_tokens, sigma).flatten(1, 2)], dim=1)
        blocks = self.token_blocks(t, start, x.device)  # (S,)
        mask = block_mask(blocks, blocks, self.window, self.sink_attention)  # (S, S)
        if getattr(self, "attention", "dense") == "sparse":  # exact, skips masked-out blocks
            mask = SFALayout(self.num_tokens, self.block_len, t, self.window, self.sink_attention)
        cos_sin = self.rotary.tables(blocks)
        mods = self.frame_modulations(self.identity(ref_tokens), cond, blocks, start)
        for i, blk in enumerate(self.blocks):
            x = blk(x, mods[i], mask, self.rotary, cos_sin)
        shift, scale = mods[-1].unbind(-2)
        x = modulate(self.norm_out(x), shift, scale)  # (B, S, D)
        if return_all:
            return x
        frames = x[:, self.num_tokens :].reshape(b, t, self.block_len, self.width)
        return self.skip(frames[:, :, self.num_slots :], prev_tokens, ref_tokens)  # (B, T, N, D)

    def token_blocks(self, frames: int, start: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        """``(N + T * (K + N),)`` block index of every position of a sequence."""
        sink = torch.zeros(self.num_tokens, dtype=torch.long, device=device)
        ids = torch.arange(start, start + frames, device=device).repeat_interleave(self.block_len)
        return torch.cat([sink, ids])

    # -- streaming --------------------------------------------------------------------------------
    def new_cache(self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> KVCache:
        return KVCache(
            self.depth, batch, self.heads, self.width // self.heads, self.num_tokens, self.block_len, self.window, device,
            dtype, sink=self.sink_attention,
        )

    @torch.no_grad()
    def open(self, ref_tokens: torch.Tensor) -> tuple[KVCache, list[torch.Tensor]]:
        """Encode the sink once: cache its keys/values in every layer.

        Args:
            ref_tokens: ``(B, N, c)``.

        Returns:
            The cache and the per-layer modulations (constant for the session).
        """
        identity = self.identity(ref_tokens)
        mods = self.modulations(identity)
        cache = self.new_cache(ref_tokens.shape[0], ref_tokens.device, ref_tokens.dtype)
        cache.identity = identity  # per-frame control modulations add to it in step()
        cache.ref_tokens = ref_tokens  # the context skip subtracts them in step()
        cache.begin_sink()
        x = self.embed_sink(ref_tokens)  # (B, N, D)
        blocks = torch.zeros(self.num_tokens, dtype=torch.long, device=x.device)
        cos_sin = self.rotary.tables(blocks)
        for i, blk in enumerate(self.blocks):
            x = blk(x, mods[i], None, self.rotary, cos_sin, cache, i)
        return cache, mods

    @torch.no_grad()
    def step(
        self, cond: torch.Tensor, prev_tokens: torch.Tensor, t: int, cache: KVCache, mods: list[torch.Tensor]
    ) -> torch.Tensor:
        """Run frame block t against the cache (sink + last W - 1 blocks) and cache it.

        Args:
            cond: ``(B, K, Dc)`` condition slots of frame t.
            prev_tokens: ``(B, N, c)`` latent tokens of frame t - 1 (the reference for t = 1).
            t: block index (>= 1).
            cache, mods: from :meth:`open`.

        Returns:
            ``(B, N, D)`` context z_t.
        """
        if t < 1:
            raise ValueError(f"frame blocks start at t = 1, got {t}")
        x = self.embed_blocks(cond[:, None], prev_tokens[:, None])[:, 0]  # (B, K + N, D)
        if self.control_adaln:
            mods = self.modulations(cache.identity + self.control_vector(cond[:, None])[:, 0])
        cache.begin_block(t)
        blocks = torch.full((self.block_len,), t, dtype=torch.long, device=x.device)
        cos_sin = self.rotary.tables(blocks)
        for i, blk in enumerate(self.blocks):
            x = blk(x, mods[i], None, self.rotary, cos_sin, cache, i)
        shift, scale = mods[-1].unbind(1)
        x = modulate(self.norm_out(x), shift, scale)
        return self.skip(x[:, None, self.num_slots :], prev_tokens[:, None], cache.ref_tokens)[:, 0]  # (B, N, D)
