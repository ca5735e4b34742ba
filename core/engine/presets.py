"""Model sizes: the :class:`ModelArch` preset class and the ``tiny`` / ``small`` / ``base`` presets.

Every size of the engine (frame VAE, backbone, MAR decoder, diffusion head) lives in one frozen
attrs class, so a checkpoint can store it (``attrs.asdict``) and rebuild the same model. Presets are
plain instances; :func:`get_arch` picks one and applies keyword overrides::

    arch = get_arch("small", window=12, sampling={"cfg": 3.0})

Derived sizes (latent grid, tokens per frame, token width) are properties, never stored twice.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from eartalk.core.errors import ConfigError, did_you_mean

#: The built-in condition stack, in slot order (used when a plugin of that name is registered).
DEFAULT_CONDITIONS: tuple[str, ...] = (
    "audio",
    "voice_activity",
    "head_pose",
    "blink",
    "gaze",
    "expression",
    "emotion",
)


def _scales(value: Any) -> dict[str, float]:
    """``{name: scale}`` from a mapping (YAML, a checkpoint's arch) or ``(name, scale)`` pairs."""
    try:
        return {str(k): float(x) for k, x in dict(value).items()}
    except (TypeError, ValueError) as err:
        raise ConfigError(f"sampling.cfg_separate must map control names to guidance scales, e.g. "
                          f"{{brightness: 2.0}}; got {value!r}") from err


@attrs.frozen
class SamplingConfig:
    """How frames are sampled (per session; every field can be overridden per call).

    Attributes:
        steps: K, MAR unmasking steps per frame (cosine schedule, random order).
        denoise_steps: D, DDIM steps of the diffusion head per token.
        cfg: classifier-free guidance scale (1.0 = no guidance, no null branch is run).
        cfg_schedule: ``"constant"`` or ``"linear"`` (MAR: guidance grows from 1 to ``cfg`` as
            more tokens of the frame are known).
        cfg_keep: controls kept in the null branch (e.g. ``("audio",)`` for audio-only CFG);
            empty = the all-null stack.
        cfg_separate: controls guided with a scale of their own, ``{name: scale}`` (compositional
            guidance, as InstructPix2Pix guides its image and text separately). With controls
            ``c_1..c_K`` in this order the sampler runs ``K + 2`` branches: ``u`` (null, as
            ``cfg_keep`` says), ``b_0`` (every control but the separate ones) and ``b_k`` (``b_0``
            plus ``c_1..c_k``), and uses ``u + cfg (b_0 - u) + sum_k s_k (b_k - b_{k-1})``. A
            control added by a fine-tune can so be followed at a small scale while the old ones keep
            the guidance they were trained with (docs/tutorial-new-control.md). Empty: one guidance
            scale for all (two branches). A separate control that is unset on a frame adds nothing.
        temperature: scales the initial noise and the per-step noise of the diffusion sampler.
        eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like ancestral steps).
        seed: seed of the session's random generator (order of unmasking, diffusion noise).
    """

    steps: int = 4
    denoise_steps: int = 8
    cfg: float = 2.0
    cfg_schedule: str = "constant"
    cfg_keep: tuple[str, ...] = ()
    cfg_separate: dict[str, float] = attrs.field(factory=dict, converter=_scales, hash=False)  # a dict: out of the hash, in eq
    temperature: float = 1.0
    eta: float = 0.0
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if self.steps < 1 or self.denoise_steps < 1:
            raise ConfigError(f"sampling: steps and denoise_steps must be >= 1, got {self.steps}, {self.denoise_steps}")
        if self.cfg < 0 or self.temperature < 0 or not 0.0 <= self.eta <= 1.0:
            raise ConfigError(
                f"sampling: need cfg >= 0, temperature >= 0 and 0 <= eta <= 1, got cfg={self.cfg}, "
                f"temperature={self.temperature}, eta={self.eta}"
            )
        if self.cfg_schedule not in ("constant", "linear"):
            raise ConfigError(f"sampling.cfg_schedule must be 'constant' or 'linear', got {self.cfg_schedule!r}")
        bad = {n: s for n, s in self.cfg_separate.items() if not s >= 0}
        if bad:
            raise ConfigError(f"sampling.cfg_separate: guidance scales must be >= 0, got {bad}")
        both = sorted(set(self.cfg_separate) & set(self.cfg_keep))
        if both:
            raise ConfigError(f"sampling: {both} are in both cfg_keep (kept in the null branch) and cfg_separate "
                              "(guided on their own); name each control in one of them")

    @property
    def guided(self) -> bool:
        """Whether any guidance branch is needed (a scale other than 1)."""
        return self.cfg != 1.0 or any(s != 1.0 for s in self.cfg_separate.values())


@attrs.frozen
class ModelArch:
    """Every size and training switch of an :class:`~eartalk.core.engine.model.EarTalkModel`.

    Attributes:
        name: preset name (informational).
        resolution: side R of the square face crops.
        latent_channels: C, channels of the frame VAE latent.
        vae_channels: VAE feature widths per level; ``len - 1`` stride-2 levels give the spatial
            factor ``f = 2 ** (len - 1)`` (8 with four levels).
        vae_res_blocks: residual blocks per VAE level.
        vae_temporal_kernel: temporal kernel of the causal 3D convolutions (looks back ``k - 1`` frames).
        vae_kl_weight: beta of the KL term of the VAE loss.
        vae_recon: ``"l1"``, ``"l2"`` or ``"l1+l2"`` reconstruction loss of the VAE.
        vae_stem: pixel-unshuffle factor s before the VAE's first convolution (1 = none): the
            spatial factor becomes ``f = s * 2 ** (len(vae_channels) - 1)`` and no layer runs at
            full resolution (the tiny preset uses 4: wider layers on fewer pixels learn faster on CPU).
        patch_size: p, latents are patchified p x p into tokens of width ``C * p * p``.
        width: backbone width d_model (condition slots are projected to it if the stack differs).
        heads: backbone attention heads.
        depth: backbone transformer blocks.
        mlp_ratio: hidden width of the MLPs relative to their block width.
        identity_dim: width of the identity vector (adaLN sink) pooled from the reference latents.
        window: W, frame blocks a query sees (its own block and the W - 1 before it) besides the sink.
        period: P > W, frame positions are cyclic (``t mod P``).
        frame_rope_fraction: share of each head's dims rotated by the cyclic frame position.
        context_noise: exposure-bias mitigation; during training, the previous-frame latents that
            enter the frame blocks get Gaussian noise of std ``sigma ~ U(0, context_noise)``
            (normalised latents have unit variance, so 0.5 is strong).
        context_noise_per: ``"clip"`` (one sigma per clip, all its context frames) or ``"frame"``
            (a sigma per frame).
        context_noise_embed: tell the backbone the noise level (a learned vector times sigma is
            added to the visual tokens of each block; sigma is 0 at inference).
        drop_null_prob: training probability that a whole clip uses the all-null condition stack
            (the branch CFG runs with an empty ``cfg_keep``).
        drop_keep_prob: training probability that a whole clip keeps only the ``drop_keep``
            conditions (the audio-only CFG branch, ``cfg_keep=("audio",)``).
        drop_keep: conditions kept by the ``drop_keep_prob`` joint dropout (names not in the stack
            are ignored).
        rollout_prob: per training batch, probability of a rollout stage: the context frames are
            the model's own samples (made without gradients, as at inference), the targets stay the
            ground truth (self-forcing-style exposure-bias training).
        rollout_mode: ``"stream"`` (frame by frame through the kv-cache and the MAR sampler, the
            session's path: errors compound as at inference) or ``"parallel"`` (one teacher-forced
            pass, every frame sampled from the true context: one-step errors only, cheaper).
        rollout_steps, rollout_denoise_steps, rollout_cfg: MAR steps K, diffusion steps D and
            guidance scale used to sample the rollout (small = cheap; 1.0 = no null branch).
        mid_clip_prob: per training batch, probability that the first frame of the clip is context
            only: block 1 sees a real frame instead of the reference, so training states are not all
            clip starts.
        sink_attention: frame blocks attend to the sink (the reference tokens); False is the "no
            attention sink" ablation (identity then enters only through adaLN and frame 0's context).
        control_adaln: *our choice*, off by default: besides their in-context FCIC slots, each
            frame's condition slots (flattened, projected, zero-initialised) are added to the adaLN
            identity vector that modulates that frame block's positions (DiT's adaLN conditioning
            per frame; the slots stay in context as the paper has them).
        context_skip: *our choice*, off by default: the backbone's context ``z_t`` at each visual
            position gets a zero-initialised linear map of that position's context token (frame
            t - 1; minus the reference token with the ``"reference_delta"`` target, so the map works
            in the target's own space), so repeating the previous frame is one linear layer away
            for the MAR head instead of a path through the whole residual stream. Uses the noised
            context in training, like every other path.
        adaln_identity: adaLN is modulated by the identity pooled from the reference; False replaces
            it with a learned constant vector (the "no adaLN identity" ablation).
        context_drop_prob: per training clip, probability that every block's context is the
            reference instead of the previous frame (our choice, an option): the clip's frames must
            then come from the portrait and the controls alone, so head pose, blink, gaze and
            emotion are learned from their condition slots rather than copied from the previous
            frame (with smooth motion the previous frame predicts them almost exactly, and a model
            that copies them ignores a commanded change).
        target: what the MAR decoder's diffusion head generates for a frame: ``"latent"`` (the
            frame's normalised latent tokens, as in the paper) or ``"reference_delta"`` (our choice,
            an option: the frame's tokens minus the reference's, divided by ``target_scale``; the
            sampled delta is added back to the reference tokens). With the delta, whatever the
            controls do not move (background, hair, skin colour) is the portrait's own by
            construction, so identity cannot drift away through the generated part.
        target_scale: divisor of the reference delta (its std on data is well below 1; dividing
            brings it near unit variance for the diffusion head). Ignored for ``"latent"``.
        decoder_width, decoder_heads, decoder_depth: the per-frame MAR transformer.
        head_width, head_depth: the diffusion MLP (adaLN residual blocks).
        diffusion_steps: training timesteps of the diffusion head.
        noise_schedule: ``"cosine"`` or ``"linear"`` beta schedule.
        prediction: ``"v"`` or ``"eps"`` target of the diffusion head.
        diffusion_batch_mul: diffusion timesteps drawn per masked token and training step.
        timestep_bias: *our choice*, 1 (uniform, MAR's) by default: training timesteps are drawn
            as ``floor(T * u ** (1 / bias))``, so a bias above 1 trains the high-noise steps, where
            the head decides a frame's coarse structure from the context, more often.
        mean_weight: *our choice*, 1 in the tiny preset (measured there), 0 (off) in the others and
            in checkpoints written before it: the weight of a *mean path* beside the diffusion
            head. A small regression head reads each token's mean ``mu`` from the backbone
            context (MSE to the target over all tokens, the focus weights applied), and the
            diffusion head generates only the residual ``target - mu``; a sample is ``mu`` plus
            the residual, both guided with the same scales. The frame's coarse structure (head
            pose, eyes, the mouth's opening) then comes from a direct regression loss, which
            learns from every token of every frame, instead of from the diffusion head's
            high-noise steps (where the tiny head does worse than repeating the previous frame:
            docs/study.md, "Why the controls are not learnt").
        mask_ratio_min, mask_ratio_mean, mask_ratio_std: the truncated normal of the training mask
            ratio (MAR: min 0.7, mean 1.0, std 0.25, truncated to [min, 1]).
        sampling: default :class:`SamplingConfig`.
    """

    name: str = "custom"
    resolution: int = 64
    # frame VAE
    latent_channels: int = 8
    vae_channels: tuple[int, ...] = (8, 16, 32, 32)
    vae_res_blocks: int = 1
    vae_temporal_kernel: int = 2
    vae_kl_weight: float = 1e-6
    vae_recon: str = "l1"
    vae_stem: int = 1
    patch_size: int = 2
    # backbone
    width: int = 64
    heads: int = 4
    depth: int = 2
    mlp_ratio: float = 4.0
    identity_dim: int = 32
    window: int = 4
    period: int = 8
    frame_rope_fraction: float = 0.5
    context_noise: float = 0.5
    context_noise_per: str = "clip"
    context_noise_embed: bool = False
    sink_attention: bool = True
    adaln_identity: bool = True
    control_adaln: bool = False
    context_skip: bool = False
    # training that matches inference (condition dropout, rollout, clip windows)
    drop_null_prob: float = 0.1
    drop_keep_prob: float = 0.1
    drop_keep: tuple[str, ...] = ("audio",)
    rollout_prob: float = 0.25
    rollout_mode: str = "stream"
    rollout_steps: int = 1
    rollout_denoise_steps: int = 4
    rollout_cfg: float = 1.0
    mid_clip_prob: float = 0.5
    context_drop_prob: float = 0.0
    target: str = "latent"
    target_scale: float = 1.0
    # per-frame MAR decoder + diffusion head
    decoder_width: int = 64
    decoder_heads: int = 4
    decoder_depth: int = 2
    head_width: int = 64
    head_depth: int = 2
    diffusion_steps: int = 1000
    noise_schedule: str = "cosine"
    prediction: str = "v"
    diffusion_batch_mul: int = 4
    timestep_bias: float = 1.0
    mean_weight: float = 0.0
    mask_ratio_min: float = 0.7
    mask_ratio_mean: float = 1.0
    mask_ratio_std: float = 0.25
    sampling: SamplingConfig = SamplingConfig()

    def __attrs_post_init__(self) -> None:
        problems = []
        if len(self.vae_channels) < 1:
            problems.append("vae_channels needs at least one level")
        f = self.downsample
        if self.resolution % (f * self.patch_size):
            problems.append(f"resolution {self.resolution} must be divisible by f * patch_size = {f * self.patch_size}")
        if self.width % self.heads or self.decoder_width % self.decoder_heads:
            problems.append("width / decoder_width must be divisible by heads / decoder_heads")
        head_dim = self.width // max(self.heads, 1)
        if head_dim % 2:
            problems.append(f"backbone head dim {head_dim} must be even (rotary frame positions)")
        if self.window < 1:
            problems.append(f"window must be >= 1, got {self.window}")
        if self.period <= self.window:
            problems.append(f"period P must be > window W (cyclic positions), got P={self.period}, W={self.window}")
        if not 0.0 <= self.frame_rope_fraction <= 1.0:
            problems.append("frame_rope_fraction must be in [0, 1]")
        if not 0.0 <= self.context_drop_prob <= 1.0:
            problems.append(f"context_drop_prob must be in [0, 1], got {self.context_drop_prob}")
        if self.target not in ("latent", "reference_delta"):
            problems.append(f"target must be 'latent' or 'reference_delta', got {self.target!r}")
        if self.target_scale <= 0:
            problems.append(f"target_scale must be > 0, got {self.target_scale}")
        if self.noise_schedule not in ("cosine", "linear"):
            problems.append(f"noise_schedule must be 'cosine' or 'linear', got {self.noise_schedule!r}")
        if self.prediction not in ("v", "eps"):
            problems.append(f"prediction must be 'v' or 'eps', got {self.prediction!r}")
        if self.vae_recon not in ("l1", "l2", "l1+l2"):
            problems.append(f"vae_recon must be 'l1', 'l2' or 'l1+l2', got {self.vae_recon!r}")
        if self.vae_temporal_kernel < 1:
            problems.append("vae_temporal_kernel must be >= 1")
        if self.context_noise < 0:
            problems.append(f"context_noise must be >= 0, got {self.context_noise}")
        if self.context_noise_per not in ("clip", "frame"):
            problems.append(f"context_noise_per must be 'clip' or 'frame', got {self.context_noise_per!r}")
        for key in ("drop_null_prob", "drop_keep_prob", "rollout_prob", "mid_clip_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                problems.append(f"{key} must be in [0, 1], got {getattr(self, key)}")
        if self.drop_null_prob + self.drop_keep_prob > 1.0:
            problems.append("drop_null_prob + drop_keep_prob must be <= 1")
        if self.rollout_mode not in ("stream", "parallel"):
            problems.append(f"rollout_mode must be 'stream' or 'parallel', got {self.rollout_mode!r}")
        if self.rollout_steps < 1 or self.rollout_denoise_steps < 1 or self.rollout_cfg < 0:
            problems.append("rollout_steps and rollout_denoise_steps must be >= 1 and rollout_cfg >= 0")
        if self.timestep_bias <= 0:
            problems.append(f"timestep_bias must be > 0, got {self.timestep_bias}")
        if not self.mean_weight >= 0:  # also NaN
            problems.append(f"mean_weight must be >= 0 (0 = no mean path), got {self.mean_weight}")
        if not 0.0 < self.mask_ratio_min <= 1.0:
            problems.append("mask_ratio_min must be in (0, 1]")
        if problems:
            raise ConfigError(f"model arch {self.name!r}: " + "; ".join(problems))

    # -- derived sizes ---------------------------------------------------------------------------
    @property
    def downsample(self) -> int:
        """Spatial factor f of the frame VAE."""
        return self.vae_stem * 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the latent grid, ``R / f``."""
        return self.resolution // self.downsample

    @property
    def grid(self) -> int:
        """Side of the token grid, ``R / f / p``."""
        return self.latent_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """N, visual tokens per frame."""
        return self.grid * self.grid

    @property
    def token_dim(self) -> int:
        """Width of one visual token, ``C * p * p``."""
        return self.latent_channels * self.patch_size**2

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def _round_harmonics(count: int, period: int) -> list[int]:
    """Integer harmonics spread over [1, P // 2] for the cyclic frame rotary (used by the backbone)."""
    top = max(1, period // 2)
    if count <= 0:
        return []
    if count == 1:
        return [1]
    return [int(round(1 + (top - 1) * i / (count - 1))) for i in range(count)]


PRESETS: dict[str, ModelArch] = {
    # Tests, the demo and the study: < 1M parameters in backbone + decoder, 64 x 64 frames,
    # a 16 x 16 x 4 latent (4x4 pixel-unshuffle stem, one 64-wide level), 16 tokens of width 64.
    "tiny": ModelArch(
        name="tiny",
        resolution=64,
        latent_channels=4,
        vae_channels=(64,),
        vae_stem=4,
        vae_temporal_kernel=2,
        patch_size=4,
        target="reference_delta",
        target_scale=0.3,  # std of (frame - reference) in normalised tiny latents: 0.29 on synthetic faces
        width=64,
        heads=4,
        depth=2,
        identity_dim=32,
        window=4,
        period=8,
        decoder_width=64,
        decoder_heads=4,
        decoder_depth=2,
        head_width=64,
        head_depth=2,
        # The mean path (docs/study.md, "The mean path"): over 2,000 frames yaw MAE 11.1 -> 9.1 deg,
        # blink F1 0.02 -> 0.17, PSNR late 18.2 -> 19.1 dB against the same model without it, both
        # at guidance 3; guidance 8 (the previous default) extrapolates the mean too far.
        mean_weight=1.0,
        sampling=SamplingConfig(steps=2, denoise_steps=4, cfg=3.0),
    ),
    # CPU demo: 10-30M parameters in backbone + decoder, 128 x 128 frames, 64 tokens of width 32.
    "small": ModelArch(
        name="small",
        resolution=128,
        latent_channels=8,
        vae_channels=(16, 32, 64, 128),
        vae_temporal_kernel=2,
        width=384,
        heads=6,
        depth=6,
        identity_dim=96,
        window=8,
        period=16,
        decoder_width=384,
        decoder_heads=6,
        decoder_depth=4,
        head_width=384,
        head_depth=3,
        sampling=SamplingConfig(steps=4, denoise_steps=8, cfg=2.0),
    ),
    # Paper scale: ~0.6B in backbone + decoder (NOVA's 0.6B layout: width 1024, 16 heads,
    # 16 backbone + 32 decoder layers), 256 x 256 frames, 256 tokens of width 64.
    "base": ModelArch(
        name="base",
        resolution=256,
        latent_channels=16,
        vae_channels=(128, 256, 512, 512),
        vae_res_blocks=2,
        vae_temporal_kernel=3,
        width=1024,
        heads=16,
        depth=16,
        identity_dim=256,
        window=16,
        period=32,
        decoder_width=1024,
        decoder_heads=16,
        decoder_depth=32,
        head_width=1024,
        head_depth=3,
        sampling=SamplingConfig(steps=16, denoise_steps=25, cfg=3.0, cfg_schedule="linear"),
    ),
}


def get_arch(name: str, **overrides: Any) -> ModelArch:
    """A preset with keyword overrides (``sampling`` may be a dict of :class:`SamplingConfig` fields).

    Raises:
        ConfigError: unknown preset or field, or an inconsistent result.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}{did_you_mean(name, PRESETS)}; presets: {', '.join(PRESETS)}")
    return arch_with(PRESETS[name], **overrides)


def arch_with(arch: ModelArch, **overrides: Any) -> ModelArch:
    """``arch`` with fields replaced; a ``sampling`` dict updates the sampling config field by field."""
    fields = {f.name for f in attrs.fields(ModelArch)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(
            f"unknown model arch field(s) {unknown}{did_you_mean(unknown[0], fields)}; fields: {', '.join(sorted(fields))}"
        )
    if isinstance(overrides.get("sampling"), dict):
        overrides["sampling"] = sampling_with(arch.sampling, **overrides["sampling"])
    for key in ("vae_channels", "drop_keep"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    return attrs.evolve(arch, **overrides)


def sampling_with(sampling: SamplingConfig, **overrides: Any) -> SamplingConfig:
    """``sampling`` with fields replaced (``cfg_keep`` may be any sequence of names)."""
    fields = {f.name for f in attrs.fields(SamplingConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(
            f"unknown sampling option(s) {unknown}{did_you_mean(unknown[0], fields)}; options: {', '.join(sorted(fields))}"
        )
    if "cfg_keep" in overrides:
        overrides["cfg_keep"] = tuple(overrides["cfg_keep"])
    return attrs.evolve(sampling, **overrides)


def arch_to_dict(arch: ModelArch) -> dict[str, Any]:
    """Plain-data form of ``arch`` (stored in checkpoints)."""
    return attrs.asdict(arch)


def arch_from_dict(data: dict[str, Any]) -> ModelArch:
    """Inverse of :func:`arch_to_dict`, strict about keys."""
    from eartalk.core.config import structure

    return structure(data, ModelArch, source="checkpoint arch")


def harmonics(count: int, period: int) -> list[int]:
    """Integer frequencies (cycles per period P) of the cyclic frame rotary embedding."""
    return _round_harmonics(count, period)


def cosine_mask_len(num_tokens: int, step: int, steps: int) -> int:
    """Tokens still masked after MAR step ``step`` of ``steps`` (cosine schedule)."""
    return int(math.floor(num_tokens * math.cos(math.pi / 2 * (step + 1) / steps)))
