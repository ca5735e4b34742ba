"""EarTalkModel: frame VAE + GPT-style backbone + per-frame MAR decoder + condition stack.

Training (:meth:`EarTalkModel.loss`): condition dropout (``stack.drop``), frames and reference
encoded by the frozen VAE to normalised latents, patchified into tokens, all T frame blocks run
through the backbone in one teacher-forced pass under the SFA mask, and the MAR diffusion loss on
every frame. Inference (:meth:`EarTalkModel.session`, :meth:`EarTalkModel.generate`): the
streaming loop of :class:`~eartalk.core.engine.session.StreamingSession`.

Checkpoints: one format, the recipes' Lightning ``.ckpt`` (see :mod:`eartalk.core.engine.checkpoint`,
``load_model`` / ``write_checkpoint``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from eartalk.conditions.stack import ConditionStack
from eartalk.core.engine.backbone import Backbone
from eartalk.core.engine.mar import MARDecoder
from eartalk.core.engine.presets import ModelArch, SamplingConfig, sampling_with
from eartalk.core.engine.vae import FrameVAE
from eartalk.core.errors import InputError


def patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, T, C, h, w)`` latents -> ``(B, T, N, C * p * p)`` tokens (row-major grid)."""
    b, t, c, h, w = latents.shape
    x = latents.reshape(b, t, c, h // p, p, w // p, p)
    x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (B, T, h/p, w/p, C, p, p)
    return x.reshape(b, t, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, T, N, C * p * p)`` -> ``(B, T, C, h, w)``."""
    b, t, n, _ = tokens.shape
    g = int(round(n**0.5))
    x = tokens.reshape(b, t, g, g, channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)  # (B, T, C, g, p, g, p)
    return x.reshape(b, t, channels, g * p, g * p)


class EarTalkModel(nn.Module):
    """The whole generator.

    Args:
        arch: sizes (see :class:`~eartalk.core.engine.presets.ModelArch`).
        stack: the condition stack (its slots enter every frame block; a stack whose ``d_model``
            differs from ``arch.width`` is projected by a linear layer).
        freeze_vae: keep the VAE frozen (no gradients, eval mode), as the engine recipe expects;
            the VAE is trained by its own recipe.
    """

    def __init__(self, arch: ModelArch, stack: ConditionStack, freeze_vae: bool = True) -> None:
        super().__init__()
        self.arch = arch
        self.stack = stack
        self.freeze_vae = freeze_vae
        self.vae = FrameVAE.from_arch(arch)
        self.backbone = Backbone(
            token_dim=arch.token_dim,
            num_tokens=arch.num_tokens,
            grid=arch.grid,
            num_slots=stack.num_slots,
            cond_dim=stack.d_model,
            width=arch.width,
            heads=arch.heads,
            depth=arch.depth,
            mlp_ratio=arch.mlp_ratio,
            identity_dim=arch.identity_dim,
            window=arch.window,
            period=arch.period,
            frame_rope_fraction=arch.frame_rope_fraction,
            context_noise=arch.context_noise,
            context_noise_per=arch.context_noise_per,
            context_noise_embed=arch.context_noise_embed,
            sink_attention=arch.sink_attention,
            adaln_identity=arch.adaln_identity,
            control_adaln=arch.control_adaln,
            context_skip=arch.context_skip,
            skip_delta=arch.target == "reference_delta",
        )
        self.decoder = MARDecoder(
            token_dim=arch.token_dim,
            context_dim=arch.width,
            num_tokens=arch.num_tokens,
            grid=arch.grid,
            width=arch.decoder_width,
            heads=arch.decoder_heads,
            depth=arch.decoder_depth,
            mlp_ratio=arch.mlp_ratio,
            head_width=arch.head_width,
            head_depth=arch.head_depth,
            diffusion_steps=arch.diffusion_steps,
            noise_schedule=arch.noise_schedule,
            prediction=arch.prediction,
            diffusion_batch_mul=arch.diffusion_batch_mul,
            mask_ratio_min=arch.mask_ratio_min,
            mask_ratio_mean=arch.mask_ratio_mean,
            mask_ratio_std=arch.mask_ratio_std,
            timestep_bias=arch.timestep_bias,
            mean_weight=arch.mean_weight,
        )
        if freeze_vae:
            self.vae.requires_grad_(False)
            self.vae.eval()

    def train(self, mode: bool = True) -> EarTalkModel:
        super().train(mode)
        if self.freeze_vae:
            self.vae.eval()
        return self

    # -- tokens ----------------------------------------------------------------------------------
    def check_frames(self, frames: torch.Tensor, what: str) -> None:
        """Raise :class:`InputError` unless ``frames`` ends in ``(3, R, R)`` at the model's resolution."""
        r = self.arch.resolution
        if frames.shape[-3:] != (3, r, r):
            raise InputError(
                f"{what} has shape {tuple(frames.shape)}; this model needs RGB frames of {r}x{r} "
                f"(crop/resize the face to {r} pixels, values in [-1, 1])"
            )

    @torch.no_grad()
    def encode_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised latent tokens ``(B, T, N, c)`` of frames ``(B, T, 3, R, R)`` (frozen VAE)."""
        return patchify(self.vae.encode(frames), self.arch.patch_size)

    def to_target(self, tokens: torch.Tensor, ref_tokens: torch.Tensor) -> torch.Tensor:
        """What the diffusion head learns for frame tokens ``(B, T, N, c)`` or ``(B, N, c)`` (``arch.target``)."""
        if self.arch.target == "latent":
            return tokens
        ref = ref_tokens if tokens.dim() == ref_tokens.dim() else ref_tokens[:, None]
        return (tokens - ref) / self.arch.target_scale

    def from_target(self, sample: torch.Tensor, ref_tokens: torch.Tensor) -> torch.Tensor:
        """Frame tokens from what the diffusion head sampled (inverse of :meth:`to_target`)."""
        if self.arch.target == "latent":
            return sample
        ref = ref_tokens if sample.dim() == ref_tokens.dim() else ref_tokens[:, None]
        return ref + sample * self.arch.target_scale

    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, T, N, c)`` -> normalised latents ``(B, T, C, h, w)``."""
        return unpatchify(tokens, self.arch.patch_size, self.arch.latent_channels)

    def condition_tokens(
        self,
        signals: Mapping[str, torch.Tensor] | None,
        present: Mapping[str, torch.Tensor] | None,
        batch: int,
        frames: int,
    ) -> torch.Tensor:
        """FCIC slots ``(B, T, K, Dc)``; signals of names outside the stack are ignored."""
        signals = {n: s for n, s in (signals or {}).items() if n in self.stack.plugins}
        present = {n: p for n, p in (present or {}).items() if n in signals}
        return self.stack(signals, present, batch=batch, frames=frames)

    def batch_conditions(self, batch: Mapping[str, Any], dropout: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The batch's signals of this stack and their presence ``(B, T)``; with ``dropout`` in
        training mode after condition dropout (:meth:`drop_conditions`)."""
        signals = {n: s for n, s in (batch.get("signals") or {}).items() if n in self.stack.plugins}
        present = {n: torch.isfinite(s).all(-1) for n, s in signals.items()}  # (B, T) each
        for name, mask in (batch.get("present") or {}).items():
            if name in present:
                present[name] = present[name] & mask.to(present[name].device).bool()
        return signals, (self.drop_conditions(present) if dropout else present)

    def drop_conditions(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Presence ``(B, T)`` after condition dropout in training mode (joint branches, whole clips
        and random spans set to null); unchanged in eval mode."""
        if not self.training or not present:
            return present
        a = self.arch
        device = next(iter(present.values())).device
        dropped = self.stack.drop({n: m.cpu() for n, m in present.items()},
                                  null_prob=a.drop_null_prob, keep_prob=a.drop_keep_prob, keep=a.drop_keep)
        return {n: m.to(device) for n, m in dropped.items()}

    def batch_tokens(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent tokens of the batch's frames ``(B, T, N, c)`` and reference ``(B, N, c)``: the
        pre-encoded ones (``eartalk encode``, core/data/latents.py) when given, else through the VAE.
        A batch that already carries them as ``tokens`` and ``reference_tokens`` (this method's
        output, e.g. shared by :meth:`loss` and :meth:`keep_loss`) is not encoded again."""
        if "tokens" in batch:
            return batch["tokens"], batch["reference_tokens"]
        frames, p = batch["frames"], self.arch.patch_size
        if "latents" in batch:
            tokens = patchify(batch["latents"].to(frames.device, frames.dtype), p)
            ref_tokens = patchify(batch["reference_latents"][:, None].to(frames.device, frames.dtype), p)[:, 0]
            return tokens, ref_tokens
        return self.encode_tokens(frames), self.encode_tokens(batch["reference"][:, None])[:, 0]

    # -- training --------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Training loss of a batch (DataModule format): teacher forcing, or a rollout stage.

        In training mode, per batch (switches of :class:`ModelArch`):

        * condition dropout: joint (all-null stack with ``drop_null_prob``, ``drop_keep``-only
          stack with ``drop_keep_prob``, per clip) and per plugin (whole clips, random spans);
        * with ``mid_clip_prob`` the clip's first frame is context only (block 1 sees a real frame,
          the loss covers frames 1 .. T-1), otherwise block 1 sees the reference, as at inference;
        * with ``rollout_prob`` the context frames are the model's own samples
          (:meth:`rollout_tokens`, no gradients), the targets stay the true frames;
        * context noise on the context latents (``context_noise``, inside the backbone).

        Args:
            batch: ``frames`` ``(B, T, 3, R, R)`` in [-1, 1], ``reference`` ``(B, 3, R, R)``,
                ``signals`` {name: ``(B, T, D)``}, ``present`` {name: ``(B, T)`` bool}; optional
                ``focus`` ``(B, T, 1, R, R)`` per-pixel loss weights (the ``train`` recipe's
                ``focus``): averaged over each latent pixel's footprint, they weight the diffusion loss
                of every token element.

        Returns:
            ``{"loss": scalar}``; with the mean path also its two terms, ``diffusion`` and
            ``mean_mse`` (the recipes log them as ``train/diffusion``, ``train/mean_mse``).
        """
        frames, reference = batch["frames"], batch["reference"]
        self.check_frames(frames, "batch['frames']")
        self.check_frames(reference, "batch['reference']")
        b, t = frames.shape[:2]
        a = self.arch
        signals, present = self.batch_conditions(batch)
        tokens, ref_tokens = self.batch_tokens(batch)  # (B, T, N, c), (B, N, c)
        cond = self.stack(signals, present, batch=b, frames=t)  # (B, T, K, Dc)
        mid = self.training and t > 1 and float(torch.rand(())) < a.mid_clip_prob
        if mid:  # frame 0 is context only: targets are frames 1 .. T-1
            first, targets, cond = tokens[:, 0], tokens[:, 1:], cond[:, 1:]
        else:
            first, targets = ref_tokens, tokens
        if self.training and float(torch.rand(())) < a.rollout_prob:
            context = self.rollout_tokens(ref_tokens, cond, first, targets, a.rollout_mode)  # own samples
        else:
            context = targets
        prev = torch.cat([first[:, None], context[:, :-1]], dim=1)  # (B, T', N, c)
        if self.training and a.context_drop_prob > 0:  # whole clips whose context is the reference only
            drop = (torch.rand(b) < a.context_drop_prob).to(prev.device)  # (B,)
            prev = torch.where(drop[:, None, None, None], ref_tokens[:, None].expand_as(prev), prev)
        z = self.backbone(ref_tokens, cond, prev, clean_first=not mid)  # (B, T', N, D)
        weight = None
        if batch.get("focus") is not None:
            weight = self.token_weights(batch["focus"].to(z.device, z.dtype))  # (B, T, N, c)
            weight = (weight[:, 1:] if mid else weight).flatten(0, 1)
        terms = self.decoder.loss_terms(z.flatten(0, 1), self.to_target(targets, ref_tokens).flatten(0, 1), weight=weight)
        return terms if self.decoder.mean is not None else {"loss": terms["loss"]}

    def token_weights(self, pixel_weights: torch.Tensor) -> torch.Tensor:
        """Per-pixel weights ``(B, T, 1, R, R)`` -> weights of every token element ``(B, T, N, c)``:
        the mean over each latent pixel's ``f x f`` footprint in the frame, the same for all ``C``
        channels, laid out as :func:`patchify` lays out the latents (so an eye weights the few
        latent pixels it covers, not the whole token)."""
        b, t, _, r, _ = pixel_weights.shape
        factor = self.vae.downsample
        if r % factor:
            raise ValueError(f"token_weights: a {r} x {r} frame does not divide by the VAE factor {factor}")
        latent = F.avg_pool2d(pixel_weights.reshape(b * t, 1, r, r), factor)  # (B*T, 1, h, w)
        latent = latent.reshape(b, t, 1, r // factor, r // factor).expand(-1, -1, self.arch.latent_channels, -1, -1)
        return patchify(latent, self.arch.patch_size)

    def replay_clips(self, batch: Mapping[str, Any], old: set[str] | list[str],
                     present: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``(B,)`` bool: the *replay clips* of the keep loss: clips whose data carry none of this
        stack's plugins outside ``old``, and clips whose manifest metadata says ``replay: true``
        (their new controls given as they are, e.g. a plain clip's own brightness: what the old
        model does on them is right with the new control set too). ``present``: the batch's
        presence before dropout, when already computed."""
        if present is None:
            present = self.batch_conditions(batch, dropout=False)[1]
        device = batch["frames"].device
        replay = torch.ones(batch["frames"].shape[0], dtype=torch.bool, device=device)
        for name, mask in present.items():
            if name not in old:
                replay &= ~mask.any(1)
        metas = batch.get("meta") or []
        flagged = [bool((m.get("metadata") or {}).get("replay") is True) for m in metas]
        if len(flagged) == replay.shape[0]:
            replay |= torch.tensor(flagged, dtype=torch.bool, device=device)
        return replay

    def keep_loss(self, batch: Mapping[str, Any], teacher: EarTalkModel) -> torch.Tensor:
        """Learning without forgetting: on the batch's *replay* clips (those whose data carry none of
        the plugins ``teacher`` lacks), pull this model's denoiser output, with those plugins null,
        toward ``teacher``'s (a fine-tune's starting checkpoint): the old stack then behaves as it
        did while the new plugins learn on the other clips.

        Only replay clips: on a clip that carries a new control (e.g. a brightness jump) the teacher
        would undo what the control did, and the null branch of classifier-free guidance would learn
        to undo it too, so that guidance then amplifies the whole control instead of its changes.
        A replay clip flagged in its metadata keeps its new controls as given (and dropped as
        training drops them): both the commanded and the null branch are then held to the teacher
        on clips where the teacher is right.
        Both models see the true context (teacher forcing, no context noise, no rollout) and the
        same condition dropout (every guidance branch keeps its old output); their diffusion heads
        see the same masks, timesteps and noise (:meth:`MARDecoder.distill_loss`). The tokens come
        from this model's VAE (a fine-tune loads the checkpoint's).

        Args:
            batch: as :meth:`loss`.
            teacher: the model to keep to, frozen; its stack's plugins must all be in this one's.

        Returns:
            Scalar mean squared gap (0 without a replay clip in the batch).
        """
        missing = [n for n in teacher.stack.names if n not in self.stack.names]
        if missing:
            raise ValueError(f"keep_loss: the teacher's plugins {missing} are not in this model's stack {self.stack.names}")
        old = set(teacher.stack.names)
        signals, present = self.batch_conditions(batch, dropout=False)
        replay = self.replay_clips(batch, old, present)
        if not replay.any():
            return batch["frames"].new_zeros(())
        tokens, ref_tokens = (x[replay] for x in self.batch_tokens(batch))
        signals = {n: s[replay] for n, s in signals.items()}
        present = self.drop_conditions({n: m[replay] for n, m in present.items()})
        old_signals = {n: s for n, s in signals.items() if n in old}
        old_present = {n: m for n, m in present.items() if n in old}
        b, t = tokens.shape[:2]
        prev = torch.cat([ref_tokens[:, None], tokens[:, :-1]], dim=1)  # (B', T, N, c)
        z = self.backbone(ref_tokens, self.stack(signals, present, batch=b, frames=t), prev, noise=False)
        with torch.no_grad():
            z_t = teacher.backbone(ref_tokens, teacher.stack(old_signals, old_present, batch=b, frames=t), prev, noise=False)
        target = self.to_target(tokens, ref_tokens).flatten(0, 1)
        return self.decoder.distill_loss(z.flatten(0, 1), teacher.decoder, z_t.flatten(0, 1), target)

    @torch.no_grad()
    def rollout_tokens(
        self,
        ref_tokens: torch.Tensor,
        cond: torch.Tensor,
        first: torch.Tensor,
        targets: torch.Tensor | None = None,
        mode: str = "stream",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The model's own samples of a clip's frames (the context of the rollout stage).

        Sampled with ``rollout_steps`` MAR steps, ``rollout_denoise_steps`` diffusion steps and
        guidance ``rollout_cfg`` (against the all-null stack).

        Args:
            ref_tokens: ``(B, N, c)`` the sink.
            cond: ``(B, T, K, Dc)`` condition slots of the frames.
            first: ``(B, N, c)`` context of the first frame (the reference, or a true frame).
            targets: ``(B, T, N, c)`` true tokens (needed by ``"parallel"``).
            mode: ``"stream"``: frame by frame through the kv-cache, each frame sampled from the
                previous samples, exactly as :class:`StreamingSession` does (errors compound);
                ``"parallel"``: one teacher-forced pass on the true context, every frame sampled
                from it (one-step errors, one backbone pass).
            generator: random generator of the sampler.

        Returns:
            ``(B, T, N, c)`` sampled tokens.
        """
        a = self.arch
        b, t = cond.shape[:2]
        guided = a.rollout_cfg != 1.0
        null = self.stack.null_tokens(b, t).to(cond) if guided else None  # (B, T, K, Dc)
        sample = dict(steps=a.rollout_steps, denoise_steps=a.rollout_denoise_steps, cfg=a.rollout_cfg, generator=generator)
        if mode == "parallel":
            if targets is None:
                raise ValueError("rollout mode 'parallel' needs the true tokens (targets)")
            prev = torch.cat([first[:, None], targets[:, :-1]], dim=1)
            z = self.backbone(ref_tokens, cond, prev, noise=False).flatten(0, 1)  # (B*T, N, D)
            z_null = self.backbone(ref_tokens, null, prev, noise=False).flatten(0, 1) if guided else None
            return self.from_target(self.decoder.sample(z, z_null, **sample).view(b, t, *first.shape[1:]), ref_tokens)
        if mode != "stream":
            raise ValueError(f"rollout mode must be 'stream' or 'parallel', got {mode!r}")
        reps = 2 if guided else 1
        cache, mods = self.backbone.open(ref_tokens.repeat(reps, 1, 1))
        prev, outs = first, []
        for i in range(t):
            slots = torch.cat([cond[:, i], null[:, i]]) if guided else cond[:, i]  # (reps * B, K, Dc)
            z = self.backbone.step(slots, prev.repeat(reps, 1, 1), i + 1, cache, mods)
            z_cond, z_null = z.chunk(2) if guided else (z, None)
            prev = self.from_target(self.decoder.sample(z_cond, z_null, **sample), ref_tokens)  # (B, N, c)
            outs.append(prev)
        return torch.stack(outs, dim=1)  # (B, T, N, c)

    # -- inference -------------------------------------------------------------------------------
    def sampling(self, **overrides: Any) -> SamplingConfig:
        """The arch's default sampling config with overrides (``steps``, ``denoise_steps``, ``cfg``...)."""
        return sampling_with(self.arch.sampling, **overrides)

    def set_sampling(self, **overrides: Any) -> EarTalkModel:
        """Make ``overrides`` (``cfg``, ``cfg_separate``...) this model's default sampling (what
        :meth:`session` and :meth:`generate` use unless told otherwise); returns the model."""
        self.arch = attrs.evolve(self.arch, sampling=self.sampling(**overrides))
        return self

    def session(self, reference: torch.Tensor, use_cache: bool = True, **sampling: Any):
        """Open a :class:`~eartalk.core.engine.session.StreamingSession` on a portrait ``(3, R, R)`` or ``(B, 3, R, R)``."""
        from eartalk.core.engine.session import StreamingSession

        return StreamingSession(self, reference, self.sampling(**sampling), use_cache=use_cache)

    @torch.no_grad()
    def generate(
        self,
        reference: torch.Tensor,
        signals: Mapping[str, torch.Tensor] | None = None,
        present: Mapping[str, torch.Tensor] | None = None,
        num_frames: int | None = None,
        progress: Callable[[int], None] | None = None,
        **sampling: Any,
    ) -> torch.Tensor:
        """Offline generation: the streaming loop over ``num_frames`` frames.

        Args:
            reference: ``(B, 3, R, R)`` (or ``(3, R, R)``) portrait in [-1, 1].
            signals: {name: ``(B, T, D)`` or ``(T, D)``}; NaN rows and frames past the end are absent.
            present: {name: ``(B, T)`` bool} (False = absent).
            num_frames: frames to generate (default: the longest signal).
            progress: called with the frame index after each frame.
            **sampling: :class:`SamplingConfig` overrides.

        Returns:
            ``(B, T, 3, R, R)`` frames in [-1, 1].
        """
        signals = {n: (s[None] if s.dim() == 2 else s) for n, s in (signals or {}).items()}
        if num_frames is None:
            if not signals:
                raise InputError("generate: give num_frames, or signals to take the length from")
            num_frames = max(int(s.shape[1]) for s in signals.values())
        session = self.session(reference, **sampling)
        outs = []
        for i in range(num_frames):
            row = {}
            for name, sig in signals.items():
                if i < sig.shape[1]:
                    value = sig[:, i].float()
                    if present is not None and name in present:
                        keep = present[name][..., i].bool().reshape(-1, 1).to(value.device)
                        value = torch.where(keep, value, torch.full_like(value, float("nan")))
                    row[name] = value
                else:
                    row[name] = None
            outs.append(session.step(row).pixels)
            if progress is not None:
                progress(i)
        return torch.stack(outs, dim=1)  # (B, T, 3, R, R)

    # -- sizes -----------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component and in total."""

        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        counts = {
            "vae": count(self.vae),
            "backbone": count(self.backbone),
            "decoder": count(self.decoder),
            "conditions": count(self.stack),
        }
        counts["backbone_decoder"] = counts["backbone"] + counts["decoder"]
        counts["total"] = counts["vae"] + counts["backbone_decoder"] + counts["conditions"]
        return counts

    def frame_flops(self, sampling: SamplingConfig | None = None) -> dict[str, int]:
        """Analytic FLOPs (2 per multiply-add) of one streamed frame once the window is full.

        Counts every matrix product and convolution the step runs: backbone block against the full
        window, K decoder passes, N * D diffusion-head calls, VAE decode of one frame; the backbone,
        decoder and head run once per guidance branch (2 with CFG's null branch, one more per
        ``cfg_separate`` control). Condition tokenizers are not counted (plugin-specific, small).
        """
        sampling = sampling or self.arch.sampling
        a = self.arch
        n, c, k = a.num_tokens, a.token_dim, self.stack.num_slots
        d, hid = a.width, int(a.width * a.mlp_ratio)
        blk = k + n
        keys = n + a.window * blk
        backbone = 2 * n * c * d + (2 * k * self.stack.d_model * d if self.stack.d_model != d else 0)
        backbone += a.depth * (2 * blk * d * 3 * d + 2 * blk * d * d + 4 * blk * d * hid + 4 * blk * keys * d)
        w, whid = a.decoder_width, int(a.decoder_width * a.mlp_ratio)
        steps = max(1, min(sampling.steps, n))
        per_pass = 2 * n * d * w + 2 * n * c * w
        per_pass += a.decoder_depth * (2 * n * w * 3 * w + 2 * n * w * w + 4 * n * w * whid + 4 * n * n * w)
        decoder = steps * per_pass
        hw, tdim = a.head_width, self.decoder.head.time_dim
        denoise = min(sampling.denoise_steps, a.diffusion_steps)
        per_call = 2 * c * hw + a.head_depth * (2 * hw * 3 * hw + 4 * hw * hw) + 2 * hw * 2 * hw + 2 * hw * c
        head = n * (denoise * per_call + 2 * w * hw)  # denoising calls + one condition projection per token
        time_mlp = steps * denoise * 2 * (tdim * hw + hw * hw)  # one timestep embedding per denoising call
        branches = 2 + len(sampling.cfg_separate) if sampling.guided else 1
        vae = vae_decode_flops(a)
        out = {
            "backbone": branches * backbone,
            "decoder": branches * decoder,
            "diffusion_head": branches * head + time_mlp,
            "vae_decode": vae,
        }
        out["total"] = sum(out.values())
        return out


def vae_decode_flops(arch: ModelArch) -> int:
    """FLOPs of decoding one latent frame with the streaming VAE decoder (counted on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = FrameVAE.from_arch(arch)
        latent = torch.empty(1, arch.latent_channels, arch.latent_size, arch.latent_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        vae.decode_step(latent, vae.new_cache())
    return int(counter.get_total_flops())


def build_model(arch: ModelArch, stack_or_specs: Any, device: str | torch.device | None = None, registry: Any = None) -> EarTalkModel:
    """Build a model on ``device`` (``"meta"`` counts parameters without allocating them).

    Args:
        arch: sizes.
        stack_or_specs: a :class:`ConditionStack`, or condition specs / names built with the registry
            at ``d_model = arch.width``.
        device: where to create the parameters.
        registry: plugin registry for names/specs (default: the process registry).
    """
    from eartalk.conditions.stack import ConditionSpec

    with torch.device(device) if device is not None else _null_context():
        if isinstance(stack_or_specs, ConditionStack):
            stack = stack_or_specs
        else:
            specs = [s if isinstance(s, ConditionSpec) else ConditionSpec(str(s)) for s in stack_or_specs]
            stack = ConditionStack.from_specs(specs, arch.width, registry=registry)
        return EarTalkModel(arch, stack)


class _null_context:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
