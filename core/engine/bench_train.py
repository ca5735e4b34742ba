"""``eartalk bench train``: training-step time, dense vs block-sparse attention, with and without pre-encoded latents.

One run times three training steps (forward, backward, AdamW step) of the same model on the same
batch, untrained weights (timing does not depend on them), and prints the ratios:

* ``step_ms_dense``: the backbone hands SDPA the dense ``(S, S)`` SFA mask, the VAE encodes the clip;
* ``step_ms_sparse``: block-sparse attention (:mod:`eartalk.core.engine.attention`), VAE as above;
* ``step_ms_latents``: block-sparse attention and the clip's latents given (``eartalk encode``), no VAE;
* ``sparse_speedup = dense / sparse``, ``latents_speedup = sparse / latents``;
* ``attention_speedup``: one backbone attention call alone (forward + backward), dense mask vs block-sparse.

The layout (tokens per frame N, window W, clip frames T, condition slots) is the preset's; on the
CPU every width (backbone, decoder, head, VAE channels) and the depths are divided by ``scale``
(default 8: base becomes 128 wide, 2 + 4 layers, VAE 16-64 channels), which keeps the shares of
attention, MLPs and VAE in a step roughly as at full size (all scale with width squared, except
the attention scores, which scale with width).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from eartalk.core.engine.model import EarTalkModel
from eartalk.core.engine.presets import get_arch


def scaled_arch(preset: str, scale: int, **overrides: Any) -> Any:
    """The preset with widths, heads and depths divided by ``scale`` (layout unchanged)."""
    arch = get_arch(preset, **overrides)
    if scale <= 1:
        return arch

    def div(value: int, minimum: int = 1) -> int:
        return max(minimum, value // scale)

    heads = max(1, div(arch.heads))
    dec_heads = max(1, div(arch.decoder_heads))
    width = max(heads * 2, div(arch.width) // heads * heads)
    return attrs.evolve(
        arch, width=width, heads=heads, depth=div(arch.depth), identity_dim=div(arch.identity_dim, 8),
        decoder_width=max(dec_heads, div(arch.decoder_width) // dec_heads * dec_heads), decoder_heads=dec_heads,
        decoder_depth=div(arch.decoder_depth), head_width=div(arch.head_width, 8),
        vae_channels=tuple(div(c, 4) for c in arch.vae_channels),
    )


def bench_train(
    preset: str = "base",
    frames: int = 33,
    batch: int = 1,
    scale: int = 8,
    reps: int = 3,
    device: str = "cpu",
    precision: str = "32-true",
    conditions: Sequence[str] | None = None,
    registry: Any = None,
    progress: Callable[[int, int], None] | None = None,
    seed: int = 0,
    **overrides: Any,
) -> dict[str, Any]:
    """Time training steps dense / sparse / sparse + latents (see the module docstring).

    Args:
        preset: layout to take (N, W, slots); ``frames`` is T.
        frames: frames per clip (the base config's 33 by default).
        batch: clips per step.
        scale: divide widths and depths by this (1: full size, on a GPU).
        reps: timed steps per variant (after one warm-up step each).
        device: torch device; precision: ``32-true``, ``bf16-mixed`` or ``bf16-true``.
        conditions: condition plugins (default: the installed built-in stack).
        progress: called with ``(done, total)`` steps.
        seed: weights and batch seed.

    Returns:
        A JSON-ready dict with ``step_ms_dense``, ``step_ms_sparse``, ``step_ms_latents``,
        ``sparse_speedup``, ``latents_speedup`` and the layout.
    """
    from eartalk.core.engine.attention import SFALayout
    from eartalk.core.engine.bench import build_stack

    arch = scaled_arch(preset, scale, **overrides)
    torch.manual_seed(seed)
    stack = build_stack(arch, conditions, registry)
    model = EarTalkModel(arch, stack).to(device).train()
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    autocast = precision == "bf16-mixed"
    r = arch.resolution
    g = torch.Generator().manual_seed(seed)
    clip = {
        "frames": (torch.rand(batch, frames, 3, r, r, generator=g) * 2 - 1).to(device, dtype),
        "reference": (torch.rand(batch, 3, r, r, generator=g) * 2 - 1).to(device, dtype),
        "signals": {},
    }
    with torch.no_grad():
        latents = model.vae.encode(clip["frames"])
        ref_latents = model.vae.encode(clip["reference"][:, None])[:, 0]
    with_latents = {**clip, "latents": latents, "reference_latents": ref_latents}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    total, done = 3 * (reps + 1), 0

    def step(data: dict[str, Any]) -> float:
        nonlocal done
        t0 = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
            loss = model.loss(data)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        done += 1
        if progress is not None:
            progress(done, total)
        return time.perf_counter() - t0

    def timed(mode: str, data: dict[str, Any]) -> float:
        model.backbone.attention = mode
        step(data)  # warm-up
        return statistics.median(step(data) for _ in range(reps))

    attn_dense, attn_sparse = _time_attention(arch, stack.num_slots, frames, batch, device, dtype, reps, sync)
    dense = timed("dense", clip)
    sparse = timed("sparse", clip)
    cached = timed("sparse", with_latents)
    model.backbone.attention = "dense"
    layout = SFALayout(arch.num_tokens, arch.num_tokens + stack.num_slots, frames, arch.window, True)
    scored, dense_pairs = layout.pairs()
    return {
        "preset": arch.name,
        "scale": scale,
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "frames": frames,
        "batch": batch,
        "window": arch.window,
        "tokens_per_frame": arch.num_tokens,
        "slots": stack.num_slots,
        "sequence": layout.length,
        "width": arch.width,
        "depth": [arch.depth, arch.decoder_depth, arch.head_depth],
        "vae_channels": list(arch.vae_channels),
        "attention_pairs_ratio": round(scored / dense_pairs, 4),
        "step_ms_dense": round(dense * 1000, 1),
        "step_ms_sparse": round(sparse * 1000, 1),
        "step_ms_latents": round(cached * 1000, 1),
        "sparse_speedup": round(dense / sparse, 3),
        "attention_ms_dense": round(attn_dense * 1000, 1),
        "attention_ms_sparse": round(attn_sparse * 1000, 1),
        "attention_speedup": round(attn_dense / attn_sparse, 3),
        "latents_speedup": round(sparse / cached, 3),
    }


def _time_attention(arch: Any, slots: int, frames: int, batch: int, device: str, dtype: torch.dtype, reps: int,
                    sync: Callable[[], None]) -> tuple[float, float]:
    """Median seconds of one backbone attention call (forward + backward), dense mask vs block-sparse."""
    import torch.nn.functional as F

    from eartalk.core.engine.attention import SFALayout, dense_mask

    layout = SFALayout(arch.num_tokens, arch.num_tokens + slots, frames, arch.window, True)
    shape = (batch, arch.heads, layout.length, arch.width // arch.heads)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = dense_mask(layout, device=device)

    def once(fn: Callable[[], torch.Tensor]) -> float:
        t0 = time.perf_counter()
        fn().sum().backward()
        sync()
        return time.perf_counter() - t0

    out = []
    for fn in (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), lambda: layout.attend(q, k, v)):
        once(fn)  # warm-up
        out.append(statistics.median(once(fn) for _ in range(reps)))
    return out[0], out[1]
