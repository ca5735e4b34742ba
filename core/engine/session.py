"""Streaming generation: one frame per :meth:`StreamingSession.step`, constant cost and memory.

Opening a session encodes the reference portrait once (the sink) and caches its keys/values in
every backbone layer. Each step then:

1. builds block t: the condition slots of frame t (from the session's
   :class:`~eartalk.conditions.timeline.ControlTimeline`, overridden by signals passed to ``step``)
   and the latent tokens of the previous frame;
2. runs the backbone on that block only, against the cached sink and last W - 1 blocks (the
   null-condition branch of classifier-free guidance runs batched with it, with its own cache rows);
3. decodes frame t's tokens with the MAR head (K unmasking steps, D denoising steps, CFG);
4. VAE-decodes them to pixels with the decoder's temporal cache;
5. caches block t in slot ``t mod W`` (evicting block t - W).

Controls can be set, changed or cleared between any two frames (:meth:`set_control`,
:meth:`clear_control`). :meth:`EarTalkModel.generate` runs exactly this loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import torch

from eartalk.conditions.timeline import ControlTimeline
from eartalk.core.engine.presets import SamplingConfig
from eartalk.core.errors import InputError, did_you_mean

if TYPE_CHECKING:
    from eartalk.core.engine.model import EarTalkModel


@attrs.define
class FrameOutput:
    """One generated frame.

    Attributes:
        index: 0-based frame index in the session.
        latents: ``(B, C, h, w)`` normalised VAE latents.
        pixels: ``(B, 3, R, R)`` RGB in [-1, 1].
    """

    index: int
    latents: torch.Tensor
    pixels: torch.Tensor


class StreamingSession:
    """A streaming generator bound to one reference portrait.

    Args:
        model: the :class:`~eartalk.core.engine.model.EarTalkModel`.
        reference: ``(3, R, R)`` or ``(B, 3, R, R)`` portrait in [-1, 1].
        sampling: K, D, CFG, temperature, seed.
        use_cache: False recomputes the sink and the last W blocks every frame instead of using
            the kv-cache (the baseline of ``eartalk bench stream``; with depth > 1 it is not
            equivalent, because cached keys/values also carry context from before the window).
    """

    def __init__(
        self, model: EarTalkModel, reference: torch.Tensor, sampling: SamplingConfig, use_cache: bool = True
    ) -> None:
        if not isinstance(reference, torch.Tensor):
            raise InputError(f"reference must be a tensor (3, R, R) in [-1, 1], got {type(reference).__name__}")
        if reference.dim() == 3:
            reference = reference[None]
        model.check_frames(reference, "reference portrait")
        if reference.dim() != 4:
            raise InputError(f"reference must be (3, R, R) or (B, 3, R, R), got {tuple(reference.shape)}")
        self.model = model
        self.sampling = sampling
        self.use_cache = use_cache
        self.timeline = ControlTimeline(model.stack)
        self.batch = int(reference.shape[0])
        self.guided = sampling.guided
        self.separate = list(sampling.cfg_separate) if self.guided else []  # separately guided, in order
        self.branches = 2 + len(self.separate) if self.guided else 1
        param = next(model.backbone.parameters())
        self.device, self.dtype = param.device, param.dtype
        for key in ("cfg_keep", "cfg_separate"):
            unknown = sorted(set(getattr(sampling, key)) - set(model.stack.names))
            if unknown:
                raise InputError(f"sampling.{key} names conditions not in the stack: {unknown}"
                                 f"{did_you_mean(unknown[0], model.stack.names)}; stack: {model.stack.names}")
        self.generator = torch.Generator(device=self.device).manual_seed(int(sampling.seed))  # draws on the device
        with torch.no_grad():
            reference = reference.to(self.device, self.dtype)
            self.ref_tokens = model.encode_tokens(reference[:, None])[:, 0]  # (B, N, c)
            branch_ref = self.ref_tokens.repeat(self.branches, 1, 1)  # (branches * B, N, c)
            self.cache, self.mods = model.backbone.open(branch_ref)
        self.vae_cache = model.vae.new_cache()
        self.prev_tokens = self.ref_tokens  # (B, N, c): frame t - 1 (the reference for t = 1)
        self.index = 0  # 0-based index of the next frame
        # Inputs of the last W blocks, only for use_cache=False.
        self.window_inputs: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=model.arch.window)

    # -- controls --------------------------------------------------------------------------------
    def set_control(self, name: str, value: Any, start: int | None = None, stop: int | None = None) -> None:
        """Set control ``name`` from frame ``start`` (default: the next frame) to ``stop`` (exclusive, or on)."""
        self.timeline.set(name, value, self.index if start is None else start, stop)

    def clear_control(self, name: str, start: int | None = None, stop: int | None = None) -> None:
        """Make control ``name`` absent (its null token) from ``start`` (default: the next frame) to ``stop``."""
        self.timeline.clear(name, self.index if start is None else start, stop)

    def signals_at(self, index: int, signals: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """Rows ``(B, D)`` of every control at frame ``index`` (timeline, then ``signals`` overrides)."""
        stack = self.model.stack
        rows = {n: r[None].expand(self.batch, -1) for n, r in self.timeline.at(index).items()}
        for name, value in (signals or {}).items():
            plugin = stack.plugin(name)
            if value is None:
                rows[name] = torch.full((self.batch, plugin.signal_dim), float("nan"))
                continue
            value = torch.as_tensor(value, dtype=torch.float32)
            if value.dim() == 1:
                value = value[None].expand(self.batch, -1)
            if value.shape != (self.batch, plugin.signal_dim):
                raise InputError(
                    f"signal {name!r} for frame {index} has shape {tuple(value.shape)}; expected "
                    f"({plugin.signal_dim},) or ({self.batch}, {plugin.signal_dim})"
                )
            rows[name] = value
        return rows

    @torch.no_grad()
    def condition_tokens(self, index: int, signals: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Slots ``(B, K, Dc)`` of frame ``index`` and of its other guidance branches (None without
        guidance): the CFG null branch ``(B, K, Dc)``, or with ``cfg_separate`` controls ``c_1..c_S``
        the branches ``b_{S-1}, ..., b_0`` (``b_k``: every control but ``c_{k+1}..c_S``) and the
        null one, ``((S + 1) * B, K, Dc)``."""
        stack = self.model.stack
        rows = {n: r[:, None].to(device=self.device, dtype=self.dtype) for n, r in self.signals_at(index, signals).items()}
        cond = stack(rows)[:, 0]  # (B, K, Dc)
        if not self.guided:
            return cond, None
        others = []
        for k in range(len(self.separate) - 1, -1, -1):  # b_{S-1} .. b_0
            given = {n: r for n, r in rows.items() if n not in self.separate[k:]}
            others.append(stack(given, batch=self.batch, frames=1)[:, 0])
        keep = {n: rows[n] for n in self.sampling.cfg_keep}
        others.append(stack(keep, batch=self.batch, frames=1)[:, 0])  # (B, K, Dc)
        return cond, torch.cat(others)

    # -- context ---------------------------------------------------------------------------------
    @torch.no_grad()
    def set_context(self, frame: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> None:
        """Make ``frame`` (or its latent ``tokens``) the previous frame the next :meth:`step` sees,
        instead of the last generated one: re-anchors a stream on a real frame (e.g. a fresh camera
        frame), and, called before every step with the true frames, runs the model teacher-forced
        through the session's own sampling (``eartalk study``'s one-step control response).

        Args:
            frame: ``(3, R, R)`` or ``(B, 3, R, R)`` in [-1, 1], encoded on its own (the causal VAE
                sees no earlier frame).
            tokens: ``(B, N, c)`` normalised latent tokens instead (what :meth:`step` generates).
        """
        if (frame is None) == (tokens is None):
            raise InputError("set_context: give either frame or tokens")
        if frame is not None:
            frame = frame[None] if frame.dim() == 3 else frame
            self.model.check_frames(frame, "context frame")
            if not bool(torch.isfinite(frame).all()):
                raise InputError("set_context: the context frame holds NaN or inf values; pass an RGB frame in [-1, 1]")
            tokens = self.model.encode_tokens(frame.to(self.device, self.dtype)[:, None])[:, 0]
        want = tuple(self.ref_tokens.shape)
        if tuple(tokens.shape) != want:
            raise InputError(f"set_context: tokens must be {want} (batch, tokens, token width), got {tuple(tokens.shape)}")
        if not bool(torch.isfinite(tokens).all()):
            raise InputError("set_context: the context tokens hold NaN or inf values; pass finite latents (or a frame)")
        self.prev_tokens = tokens.to(self.device, self.dtype)

    # -- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, signals: Mapping[str, Any] | None = None) -> FrameOutput:
        """Generate the next frame.

        Args:
            signals: per-frame values for this frame only, overriding the timeline:
                {name: ``(D,)`` or ``(B, D)`` (NaN = absent) or None (absent)}.
        """
        model, t = self.model, self.index + 1
        cond, null = self.condition_tokens(self.index, signals)
        if null is not None:
            cond = torch.cat([cond, null])  # (branches * B, K, Dc)
        prev = self.prev_tokens.repeat(self.branches, 1, 1)  # (branches * B, N, c)
        if self.use_cache:
            z = model.backbone.step(cond, prev, t, self.cache, self.mods)  # (branches * B, N, D)
        else:
            z = self._recompute_window(cond, prev, t)
        s = self.sampling
        z_cond, z_null = (z[: self.batch], z[self.batch :]) if self.guided else (z, None)
        tokens = model.decoder.sample(
            z_cond, z_null, s.steps, s.denoise_steps, s.cfg, s.cfg_schedule, s.temperature, s.eta, self.generator,
            separate=[s.cfg_separate[n] for n in self.separate],
        )  # (B, N, c)
        tokens = model.from_target(tokens, self.ref_tokens)
        latents = model.tokens_to_latents(tokens[:, None])[:, 0]  # (B, C, h, w)
        pixels = model.vae.decode_step(latents, self.vae_cache).clamp(-1.0, 1.0)  # (B, 3, R, R)
        self.prev_tokens = tokens
        self.index += 1
        return FrameOutput(t - 1, latents, pixels)

    def _recompute_window(self, cond: torch.Tensor, prev: torch.Tensor, t: int) -> torch.Tensor:
        self.window_inputs.append((cond, prev))
        conds = torch.stack([c for c, _ in self.window_inputs], dim=1)  # (B', W', K, Dc)
        prevs = torch.stack([p for _, p in self.window_inputs], dim=1)  # (B', W', N, c)
        ref = self.ref_tokens.repeat(self.branches, 1, 1)
        start = t - len(self.window_inputs) + 1
        return self.model.backbone(ref, conds, prevs, start=start)[:, -1]  # (B', N, D)

    # -- state -----------------------------------------------------------------------------------
    def cache_nbytes(self) -> dict[str, int]:
        """Bytes held by the streaming state (backbone kv-cache, VAE temporal cache)."""
        vae = sum(v.numel() * v.element_size() for v in self.vae_cache.values())
        window = sum(c.numel() * c.element_size() + p.numel() * p.element_size() for c, p in self.window_inputs)
        return {"kv_cache": self.cache.nbytes, "vae_cache": vae, "window_inputs": window}

    def cached_blocks(self) -> list[int]:
        """Frame blocks whose keys/values are cached (at most W)."""
        return self.cache.cached_blocks()
