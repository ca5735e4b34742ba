"""EarTalkModel: teacher-forced training learns, checkpoints round-trip, FLOP counts are right."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from eartalk.conditions.stack import DropoutSpec
from eartalk.core.engine.model import EarTalkModel, patchify, unpatchify
from eartalk.core.engine.presets import get_arch


def smooth_batch(batch: int = 2, frames: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch * frames, 3, 8, 8, generator=g) * 2 - 1
    video = torch.nn.functional.interpolate(coarse, size=64, mode="bilinear").reshape(batch, frames, 3, 64, 64)
    return {
        "frames": video,
        "reference": video[:, 0],
        "signals": {"toy": torch.randn(batch, frames, 3, generator=g), "not_in_stack": torch.zeros(batch, frames, 1)},
        "present": {"toy": torch.ones(batch, frames, dtype=torch.bool)},
    }


def test_patchify_round_trip():
    lat = torch.randn(2, 3, 8, 8, 8)
    tokens = patchify(lat, 2)
    assert tokens.shape == (2, 3, 16, 32)
    torch.testing.assert_close(tokens[0, 0, 1], lat[0, 0, :, 0:2, 2:4].reshape(-1))  # row-major grid
    assert torch.equal(unpatchify(tokens, 2, 8), lat)


def test_tiny_model_learns_a_fixed_batch(toy_stack):
    """100 AdamW steps on one batch at least halve the eval loss (measured: 1.00 -> 0.35)."""
    torch.manual_seed(0)
    model = EarTalkModel(get_arch("tiny"), toy_stack)
    batch = smooth_batch()
    model.vae.fit_latent_stats([batch["frames"]])

    def eval_loss() -> float:
        model.eval()
        torch.manual_seed(123)
        with torch.no_grad():
            value = sum(float(model.loss(batch)["loss"]) for _ in range(4)) / 4
        model.train()
        return value

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
    before = eval_loss()
    for _ in range(100):
        opt.zero_grad()
        model.loss(batch)["loss"].backward()
        opt.step()
    after = eval_loss()
    assert after < before / 2, (before, after)
    assert all(p.grad is None for p in model.vae.parameters())  # the VAE stays frozen
    assert not model.vae.training


def test_analytic_frame_flops_match_a_flop_counter(toy_stack):
    torch.manual_seed(0)
    model = EarTalkModel(get_arch("tiny"), toy_stack).eval()
    for cfg in (2.0, 1.0):
        session = model.session(torch.zeros(3, 64, 64), cfg=cfg, steps=3, denoise_steps=5)
        for _ in range(model.arch.window):  # fill the window: keys over sink + W blocks
            session.step()
        counter = FlopCounterMode(display=False)
        with counter:
            session.step({"toy": torch.ones(3)})
        measured = counter.get_total_flops()
        analytic = model.frame_flops(session.sampling)["total"]
        assert abs(analytic - measured) / measured < 0.02, (cfg, analytic, measured)


# -- training matches inference: what each frame's context may and may not see -------------------
#: Switches off: deterministic teacher forcing (no dropout, noise, rollout or mid-clip starts).
PLAIN = dict(context_noise=0.0, drop_null_prob=0.0, drop_keep_prob=0.0, rollout_prob=0.0, mid_clip_prob=0.0)


def activated(arch, stack, seed: int = 0) -> EarTalkModel:
    """A model whose zero-initialised adaLN gates are random, so every input can reach z."""
    torch.manual_seed(seed)
    model = EarTalkModel(arch, stack)
    with torch.no_grad():
        for blk in model.backbone.blocks:
            blk.ada[1].weight.normal_(0, 0.3)
            blk.ada[1].bias.normal_(0, 0.3)
        model.backbone.ada_out[1].weight.normal_(0, 0.3)
        for blk in model.decoder.head.blocks:
            blk.ada[1].weight.normal_(0, 0.2)
        model.decoder.head.out.weight.normal_(0, 0.2)
        if model.decoder.mean is not None:  # the mean path's zero-initialised output
            model.decoder.mean[-1].weight.normal_(0, 0.2)
    for span in stack.layout:
        stack.dropout[span.type_id] = DropoutSpec(0.0, 0.0)
    return model


def record_input(module: torch.nn.Module, store: dict, key: str, index: int) -> None:
    """Keep positional input ``index`` of the first forward call of ``module`` as ``store[key]``."""

    def hook(mod, args, kwargs):
        store.setdefault(key, args[index].clone())

    module.register_forward_pre_hook(hook, with_kwargs=True)


def contexts(model: EarTalkModel, batch: dict, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The contexts z ``(B, T', N, D)`` and targets the training loss hands to the decoder."""
    seen = {}
    original = model.decoder.loss_terms

    def spy(z, tokens, generator=None, weight=None):
        seen["z"], seen["tokens"] = z.detach().clone(), tokens.detach().clone()
        return original(z, tokens, generator, weight=weight)

    model.decoder.loss_terms = spy
    torch.manual_seed(seed)
    model.loss(batch)
    del model.decoder.loss_terms
    b = batch["frames"].shape[0]
    return seen["z"].unflatten(0, (b, -1)), seen["tokens"].unflatten(0, (b, -1))


@pytest.mark.parametrize(
    "switches",
    [PLAIN, {**PLAIN, "rollout_prob": 1.0}, {**PLAIN, "rollout_prob": 1.0, "rollout_mode": "parallel"},
     {**PLAIN, "mid_clip_prob": 1.0}, {**PLAIN, "rollout_prob": 1.0, "mid_clip_prob": 1.0}],
    ids=["teacher_forcing", "rollout_stream", "rollout_parallel", "mid_clip", "rollout_mid_clip"],
)
def test_a_frame_never_sees_its_own_target_and_sees_its_own_slots(toy_stack, switches):
    """Frame k's context z_k is unchanged when frame k (its target) changes, and changes when frame
    k's condition slots change, while no earlier context does: catches ``prev = tokens`` (target in
    its own block) and a one-frame shift of the condition slots, in every training mode."""
    model = activated(get_arch("tiny", **switches), toy_stack).train()
    batch = smooth_batch(batch=2, frames=6)
    model.vae.fit_latent_stats([batch["frames"]])
    z, targets = contexts(model, batch)
    shift = 1 if switches["mid_clip_prob"] else 0  # mid-clip: frame 0 is context only, z[i] is frame i + 1
    assert z.shape[1] == 6 - shift
    k = 3
    frames = batch["frames"].clone()
    frames[:, k] = -frames[:, k]
    z_f, targets_f = contexts(model, {**batch, "frames": frames})
    i = k - shift
    assert not torch.allclose(targets_f[:, i], targets[:, i]), "the target of frame k did change"
    torch.testing.assert_close(z_f[:, : i + 1], z[:, : i + 1], rtol=0, atol=0)  # frames <= k: not their targets
    if not switches["rollout_prob"]:
        assert not torch.allclose(z_f[:, i + 1], z[:, i + 1])  # frame k + 1 sees frame k
    elif switches.get("rollout_mode") == "parallel":  # frame k + 2 sees the sample of frame k + 1 made from frame k
        assert not torch.allclose(z_f[:, i + 2], z[:, i + 2])
    signals = {n: v.clone() for n, v in batch["signals"].items()}
    signals["toy"][:, k] += 2.0
    z_s, _ = contexts(model, {**batch, "signals": signals})
    torch.testing.assert_close(z_s[:, :i], z[:, :i], rtol=0, atol=0)  # earlier frames: untouched
    assert not torch.allclose(z_s[:, i], z[:, i])  # frame k: its own slots


def test_rollout_context_is_the_model_own_stream(toy_stack, reference_frames=None):
    """rollout_prob=1, stream: the context of frame t is exactly what a StreamingSession with the
    rollout's sampling (K, D, cfg) generates at frame t - 1; the targets stay the true frames."""
    arch = get_arch("tiny", **{**PLAIN, "rollout_prob": 1.0, "rollout_steps": 2, "rollout_denoise_steps": 3})
    model = activated(arch, toy_stack).train()
    batch = smooth_batch(batch=1, frames=6)
    model.vae.fit_latent_stats([batch["frames"]])
    seen = {}
    record_input(model.backbone, seen, "prev", 2)
    _, targets = contexts(model, batch)
    truth = model.encode_tokens(batch["frames"])
    ref_tokens = model.encode_tokens(batch["reference"][:, None])[:, 0]
    torch.testing.assert_close(targets, model.to_target(truth, ref_tokens), rtol=0, atol=0)
    model.eval()
    session = model.session(batch["reference"][0], steps=2, denoise_steps=3, cfg=1.0, seed=0)
    rows = [session.step({"toy": batch["signals"]["toy"][0, i]}).latents for i in range(5)]
    streamed = patchify(torch.stack(rows, dim=1), arch.patch_size)  # (1, 5, N, c)
    torch.testing.assert_close(seen["prev"][:, 0], ref_tokens)
    # the rollout used the global RNG; rerun it with the session's generator to compare exactly
    cond = model.stack({"toy": batch["signals"]["toy"]}, {"toy": torch.ones(1, 6, dtype=torch.bool)})
    rolled = model.rollout_tokens(ref_tokens, cond, ref_tokens, mode="stream", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rolled[:, :5], streamed, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(rolled[:, :5], truth[:, :5], atol=0.1), "the rollout context is not the truth"


def test_rollout_happens_at_its_rate_and_costs_no_gradients(toy_stack):
    model = activated(get_arch("tiny", **{**PLAIN, "rollout_prob": 0.3}), toy_stack).train()
    batch = smooth_batch(batch=1, frames=6)
    ref_tokens = model.encode_tokens(batch["reference"][:, None])[:, 0]
    rolled = model.rollout_tokens(ref_tokens, model.condition_tokens(batch["signals"], None, 1, 6), ref_tokens)
    assert not rolled.requires_grad  # the rollout is made without gradients
    tokens = model.encode_tokens(batch["frames"])
    model.encode_tokens = lambda frames: tokens if frames.shape[1] == 6 else tokens[:, :1]  # the VAE plays no part
    calls = []
    model.rollout_tokens = lambda ref, cond, first, targets, mode: calls.append(mode) or targets.clone()
    torch.manual_seed(0)
    n = 300
    with torch.no_grad():
        for _ in range(n):
            model.loss(batch)
    assert abs(len(calls) / n - 0.3) < 0.08, len(calls)  # binomial std 0.026
    assert set(calls) == {"stream"}
    model.eval()
    calls.clear()
    model.loss(batch)
    assert not calls, "no rollout in eval mode"


def test_joint_dropout_reaches_the_backbone_at_its_rates(toy_stack):
    """The all-null and the keep-only (``drop_keep``) stacks reach the backbone on their shares of clips."""
    arch = get_arch("tiny", **{**PLAIN, "drop_null_prob": 0.2, "drop_keep_prob": 0.3, "drop_keep": ("toy_audio",)})
    model = activated(arch, toy_stack).train()
    b = 600
    batch = {
        "frames": torch.zeros(b, 2, 3, 64, 64), "reference": torch.zeros(b, 3, 64, 64),
        "signals": {"toy": torch.randn(b, 2, 3), "toy_audio": torch.randn(b, 2, 4)},
    }
    model.encode_tokens = lambda frames: torch.zeros(*frames.shape[:2], arch.num_tokens, arch.token_dim)  # no VAE here
    seen = {}
    record_input(model.backbone, seen, "cond", 1)
    torch.manual_seed(0)
    model.loss(batch)
    cond = seen["cond"]  # (B, T, K, D)
    null = model.stack.null_tokens(1, 1)[0, 0]  # (K, D)
    is_null = (cond - null).abs().amax(-1).eq(0)  # (B, T, K)
    toy_null, audio_null = is_null[:, :, 0].all(1), is_null[:, :, 1:].all(-1).all(1)
    assert abs((toy_null & audio_null).float().mean().item() - 0.2) < 0.06  # binomial std 0.016
    assert abs((toy_null & ~audio_null).float().mean().item() - 0.3) < 0.06
    assert not (~toy_null & audio_null).any()


@pytest.mark.parametrize("target", ["latent", "reference_delta"])
def test_the_diffusion_target_is_what_arch_target_says(toy_stack, target):
    """``reference_delta``: the head learns (tokens - reference) / scale and the session adds the reference back."""
    torch.manual_seed(0)
    model = EarTalkModel(get_arch("tiny", target=target, target_scale=0.5, mid_clip_prob=0.0, rollout_prob=0.0), toy_stack)
    batch = smooth_batch()
    model.vae.fit_latent_stats([batch["frames"]])
    seen = {}

    def spy(z, targets, weight=None):
        seen["targets"] = targets
        zero = targets.sum() * 0
        return {"loss": zero, "diffusion": zero, "mean_mse": zero}

    model.decoder.loss_terms = spy
    model.loss(batch)
    tokens = model.encode_tokens(batch["frames"])  # (B, T, N, c)
    ref = model.encode_tokens(batch["reference"][:, None])  # (B, 1, N, c)
    want = tokens if target == "latent" else (tokens - ref) / 0.5
    torch.testing.assert_close(seen["targets"], want.flatten(0, 1))

    # a head that samples zeros: the delta target gives back the portrait itself, frame after frame
    model.eval()
    model.decoder.sample = lambda z_cond, *args, **kw: torch.zeros(z_cond.shape[0], z_cond.shape[1], model.arch.token_dim)
    session = model.session(batch["reference"][:1], cfg=1.0)
    frames = [session.step({}).latents for _ in range(3)]
    ref_latents = model.vae.encode(batch["reference"][:1, None])[:, 0]
    for latents in frames:
        if target == "reference_delta":
            torch.testing.assert_close(latents, ref_latents)
        else:
            assert torch.equal(latents, torch.zeros_like(latents))


def test_keep_loss_runs_on_replay_clips_only(toy_stack):
    """keep_loss compares with the teacher only on clips whose data lack the plugins the teacher
    lacks (here `toy`): a batch where every clip carries `toy` gives 0, and a mixed batch gives what
    its replay clip alone gives."""
    from eartalk.conditions import ConditionStack
    from eartalk.conditions.testing import ToyAudio

    torch.manual_seed(0)
    student = EarTalkModel(get_arch("tiny"), toy_stack).eval()
    teacher = EarTalkModel(get_arch("tiny"), ConditionStack([ToyAudio(16)])).eval()
    batch = smooth_batch()
    student.vae.fit_latent_stats([batch["frames"]])
    teacher.vae.load_state_dict(student.vae.state_dict())
    for model in (student, teacher):  # the zero-initialised output layers would make both outputs 0
        torch.nn.init.normal_(model.decoder.head.out.weight, std=0.1)

    def gap(b):
        torch.manual_seed(1)
        with torch.no_grad():
            return float(student.keep_loss(b, teacher))

    assert gap(batch) == 0.0, "every clip carries the new control: nothing to keep"
    mixed = {**batch, "signals": {**batch["signals"], "toy": batch["signals"]["toy"].clone()}, "present": {}}
    mixed["signals"]["toy"][1] = float("nan")  # clip 1 is a replay clip
    alone = {"frames": batch["frames"][1:], "reference": batch["reference"][1:],
             "signals": {"toy": mixed["signals"]["toy"][1:]}}
    assert gap(mixed) > 0
    assert gap(mixed) == pytest.approx(gap(alone), rel=1e-5)
    with pytest.raises(ValueError, match="teacher's plugins"):
        teacher.keep_loss(batch, student)


def test_keep_loss_holds_flagged_replay_clips_with_their_new_controls(toy_stack):
    """A clip flagged ``replay: true`` in its metadata is a replay clip although it carries the new
    control (`toy`), and the student sees that control there (the commanded branch is held too)."""
    from eartalk.conditions import ConditionStack
    from eartalk.conditions.testing import ToyAudio

    student = activated(get_arch("tiny"), toy_stack).eval()
    teacher = activated(get_arch("tiny"), ConditionStack([ToyAudio(16)]), seed=1).eval()
    batch = smooth_batch()
    student.vae.fit_latent_stats([batch["frames"]])
    teacher.vae.load_state_dict(student.vae.state_dict())

    def gap(b):
        torch.manual_seed(1)
        with torch.no_grad():
            return float(student.keep_loss(b, teacher))

    def flagged(b, *flags):
        return {**b, "meta": [{"id": str(i), "metadata": {"replay": f}} for i, f in enumerate(flags)]}

    assert gap(flagged(batch, False, False)) == 0.0, "not flagged and carrying the new control: nothing to keep"
    assert student.replay_clips(flagged(batch, False, True), ["toy_audio"]).tolist() == [False, True]
    one = gap(flagged(batch, False, True))
    alone = {"frames": batch["frames"][1:], "reference": batch["reference"][1:], "signals": {"toy": batch["signals"]["toy"][1:]},
             "present": {"toy": batch["present"]["toy"][1:]}}
    assert one > 0 and one == pytest.approx(gap(flagged(alone, True)), rel=1e-5)
    null_toy = {**alone, "signals": {"toy": torch.full_like(alone["signals"]["toy"], float("nan"))}, "present": {}}
    # (the teachers differ far more than toy moves the student; without toy the two runs are bit-identical)
    assert abs(gap(flagged(alone, True)) - gap(null_toy)) > 1e-5 * one, "the flagged clip's control reaches the student"


def test_focus_weights_land_on_the_latent_pixels_they_cover_and_uniform_focus_is_the_plain_loss(toy_stack):
    torch.manual_seed(0)
    # without the mean path: its zero-initialised regression error would dominate the loss
    model = EarTalkModel(get_arch("tiny", mean_weight=0.0), toy_stack).eval()  # 64 px, VAE factor 4, patch 4: 16 tokens of 4 x 4 x 4
    pixels = torch.ones(1, 1, 1, 64, 64)
    pixels[..., 40:44, 8:12] = 17.0  # exactly latent pixel (10, 2): token (2, 0), in-patch (2, 2)
    weights = model.token_weights(pixels)
    assert weights.shape == (1, 1, 16, 64)
    latent = torch.ones(1, 1, 4, 16, 16)
    latent[..., 10, 2] = 17.0
    assert torch.equal(weights, patchify(latent, 4))  # every channel of that latent pixel, none else
    assert torch.equal(weights[0, 0, 8].reshape(4, 4, 4)[:, 2, 2], torch.full((4,), 17.0))
    batch = smooth_batch()
    model.vae.fit_latent_stats([batch["frames"]])
    uneven = torch.rand(2, 6, 1, 64, 64) * 10
    with torch.no_grad():
        torch.manual_seed(1)
        plain = float(model.loss(batch)["loss"])
        torch.manual_seed(1)
        uniform = float(model.loss({**batch, "focus": torch.full((2, 6, 1, 64, 64), 4.0)})["loss"])
        torch.manual_seed(1)
        focused = float(model.loss({**batch, "focus": uneven})["loss"])
    assert uniform == pytest.approx(plain, rel=1e-5) and focused != pytest.approx(plain, rel=1e-3)
    mean = EarTalkModel(get_arch("tiny"), toy_stack).eval()  # the mean path's MSE takes the same weights
    mean.vae.load_state_dict(model.vae.state_dict())
    seen = []
    split = mean.decoder.split_mean
    mean.decoder.split_mean = lambda z, tokens, weight=None: seen.append(weight) or split(z, tokens, weight)
    with torch.no_grad():
        mean.loss({**batch, "focus": uneven})
    assert len(seen) == 1 and seen[0] is not None
    expected = mean.token_weights(uneven)
    assert torch.equal(seen[0], expected.reshape(seen[0].shape))
