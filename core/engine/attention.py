"""Block-sparse Sink Frame Window Attention for the teacher-forced (training) forward.

The dense path hands SDPA a ``(S, S)`` boolean mask over the whole sequence
``[sink (N) | block 1 (L) | ... | block T (L)]``: every query is scored against every key and the
masked-out ones are thrown away (at W = 16, T = 33 that is about 60% of the scores), and the mask
rules out the flash kernels. :class:`SFALayout` instead runs SDPA once per *chunk* of G frame
blocks, against the sink and only the blocks that chunk can see (``t - W < s <= t``), so masked-out
blocks are never computed. It is exact: inside a chunk the same rule is applied with a small mask
(none at all when ``G = 1`` or when every key of the chunk is visible), so the result equals the dense
masked attention up to float rounding (tested against it, forward and backward).

Cost per layer: the dense path scores ``S^2`` pairs; the chunked one about
``T * L * (N + (G + W - 1) * L)``. Smaller chunks skip more but launch more SDPA calls; the default
``G = ceil(sqrt(W))`` is within ~15% of the ideal at W = 16 with T / G calls per layer.

(torch 2.11's FlexAttention would express the same block mask, but has no backward on the CPU; this
path runs on every device with plain SDPA.)
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F


@attrs.frozen
class SFALayout:
    """Where the blocks of a teacher-forced sequence are, and the attention rule between them.

    Attributes:
        sink_len: N, tokens of the sink (block 0) at the start of the sequence.
        block_len: L = K + N, tokens of each frame block.
        frames: T, frame blocks after the sink (block indices ``start .. start + T - 1``).
        window: W, a frame block sees itself and the W - 1 blocks before it.
        sink: frame blocks also see the sink (False: the no-sink ablation).
        chunk: G, frame blocks per SDPA call (0: ``ceil(sqrt(W))``).
    """

    sink_len: int
    block_len: int
    frames: int
    window: int
    sink: bool = True
    chunk: int = 0

    @property
    def length(self) -> int:
        """S, tokens of the whole sequence."""
        return self.sink_len + self.frames * self.block_len

    @property
    def chunk_frames(self) -> int:
        return max(1, self.chunk or math.ceil(math.sqrt(self.window)))

    def chunks(self) -> list[tuple[int, int, int]]:
        """``(first frame, end frame, first visible frame)`` per chunk (0-based frame offsets)."""
        g = self.chunk_frames
        out = []
        for a in range(0, self.frames, g):
            b = min(self.frames, a + g)
            out.append((a, b, max(0, a - self.window + 1)))
        return out

    def pairs(self) -> tuple[int, int]:
        """Query-key pairs scored by this layout and by the dense path (for benchmarks)."""
        n, length = self.sink_len, self.block_len
        total = n * n
        for a, b, lo in self.chunks():
            total += (b - a) * length * ((n if self.sink else 0) + (b - lo) * length)
        return total, self.length**2

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of ``q``, ``k``, ``v`` ``(B, H, S, hd)`` under the SFA rule; returns ``(B, H, S, hd)``."""
        n, length, w = self.sink_len, self.block_len, self.window
        if q.shape[-2] != self.length:
            raise ValueError(f"sequence of {q.shape[-2]} tokens does not match the layout's {self.length}")
        outs = [F.scaled_dot_product_attention(q[..., :n, :], k[..., :n, :], v[..., :n, :])]  # sink sees itself
        for a, b, lo in self.chunks():
            qs = q[..., n + a * length : n + b * length, :]  # (B, H, G*L, hd)
            ks = k[..., n + lo * length : n + b * length, :]  # (B, H, (b-lo)*L, hd)
            vs = v[..., n + lo * length : n + b * length, :]
            if self.sink:
                ks = torch.cat([k[..., :n, :], ks], dim=-2)
                vs = torch.cat([v[..., :n, :], vs], dim=-2)
            mask = None
            if b - a > 1 and b - lo > 1:  # more than one query block: some keys are outside a block's window
                qf = torch.arange(a, b, device=q.device).repeat_interleave(length)  # (G*L,) frame of each query
                kf = torch.arange(lo, b, device=q.device).repeat_interleave(length)  # frame of each key
                band = (kf[None] > qf[:, None] - w) & (kf[None] <= qf[:, None])  # (G*L, (b-lo)*L)
                if not bool(band.all()):
                    if self.sink:
                        band = torch.cat([band.new_ones(band.shape[0], n), band], dim=1)
                    mask = band
            outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask))
        return torch.cat(outs, dim=-2)


def dense_mask(layout: SFALayout, start: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """The ``(S, S)`` boolean mask of the dense path for the same layout (reference for tests and benchmarks)."""
    sink = torch.zeros(layout.sink_len, dtype=torch.long, device=device)
    ids = torch.arange(start, start + layout.frames, device=device).repeat_interleave(layout.block_len)
    blocks = torch.cat([sink, ids])
    t, s = blocks[:, None], blocks[None, :]
    sink_ok = (s == 0) & ((t == 0) | layout.sink)
    return sink_ok | ((s > 0) & (s > t - layout.window) & (s <= t))
