"""StreamingSession: controls at any frame, offline == streaming, bounded memory over long runs."""

from __future__ import annotations

import gc

import pytest
import torch

from eartalk.core.engine.model import EarTalkModel
from eartalk.core.engine.presets import get_arch
from eartalk.core.errors import ConfigError, InputError


def activate(model: EarTalkModel, seed: int = 0) -> EarTalkModel:
    """Random adaLN weights: at zero init every block is the identity and conditions cannot act yet."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blk in model.backbone.blocks:
            blk.ada[1].weight.normal_(0, 0.2, generator=g)
            blk.ada[1].bias.normal_(0, 0.2, generator=g)
        model.backbone.ada_out[1].weight.normal_(0, 0.2, generator=g)
        for blk in model.decoder.head.blocks:
            blk.ada[1].weight.normal_(0, 0.2, generator=g)
        model.decoder.head.out.weight.normal_(0, 0.2, generator=g)
    return model.eval()


@pytest.fixture()
def model(toy_stack) -> EarTalkModel:
    torch.manual_seed(0)
    return activate(EarTalkModel(get_arch("tiny"), toy_stack))


@pytest.fixture()
def reference() -> torch.Tensor:
    return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1


def run(session, frames: int, what: str = "pixels") -> torch.Tensor:
    return torch.stack([getattr(session.step(), what) for _ in range(frames)], dim=1)  # (B, T, ...)


def test_absent_control_is_its_null_token(model, reference):
    stack = model.stack
    span = next(s for s in stack.layout if s.name == "toy")
    null = stack.null_tokens(1, 1)[0, 0, span.offset : span.offset + span.slots]  # (k, D)
    session = model.session(reference, seed=0)
    session.set_control("toy", [1.0, -2.0, 0.5], start=0)
    session.clear_control("toy", start=2, stop=5)
    for i in range(7):
        cond, cfg_null = session.condition_tokens(i)
        toy = cond[0, span.offset : span.offset + span.slots]
        assert torch.allclose(toy, null) == (2 <= i < 5), i
        torch.testing.assert_close(cfg_null[0], stack.null_tokens(1, 1)[0, 0])  # CFG branch: all null
    # output level: clearing [2, 5) is the same as never setting the control there
    other = model.session(reference, seed=0)
    other.set_control("toy", [1.0, -2.0, 0.5], start=0, stop=2)
    other.set_control("toy", [1.0, -2.0, 0.5], start=5)
    assert torch.equal(run(session, 7), run(other, 7))


def test_switching_a_control_on_changes_only_later_frames(model, reference):
    k, frames = 2, 4
    off = run(model.session(reference, seed=7), frames, "latents")
    on_session = model.session(reference, seed=7)
    on_session.set_control("toy", [2.0, 0.0, -1.0], start=k)
    on = run(on_session, frames, "latents")
    assert torch.equal(on[:, :k], off[:, :k])  # frames before k: bit-identical
    for t in range(k, frames):
        assert (on[:, t] - off[:, t]).abs().max() > 1e-4, t  # float noise would be 0 here (same seed, same ops)
    # the same edit made live, between frame k - 1 and frame k, gives the same video
    live = model.session(reference, seed=7)
    frames_live = [live.step().latents for _ in range(k)]
    live.set_control("toy", [2.0, 0.0, -1.0])  # from the next frame on
    frames_live += [live.step().latents for _ in range(frames - k)]
    assert torch.equal(torch.stack(frames_live, dim=1), on)


def test_step_signals_override_the_timeline_for_one_frame(model, reference):
    a = model.session(reference, seed=1)
    a.set_control("toy_audio", [0.5, 0.5, 0.5, 0.5], start=1, stop=2)
    b = model.session(reference, seed=1)
    out_a = run(a, 3)
    out_b = torch.stack([b.step().pixels, b.step({"toy_audio": torch.full((4,), 0.5)}).pixels, b.step().pixels], 1)
    assert torch.equal(out_a, out_b)


def test_generate_is_the_streaming_loop(model, reference):
    signals = {"toy": torch.randn(1, 5, 3), "toy_audio": torch.randn(1, 5, 4)}
    present = {"toy": torch.tensor([[True, True, False, False, True]])}
    video = model.generate(reference[None], signals, present, num_frames=6, seed=3)
    assert video.shape == (1, 6, 3, 64, 64) and float(video.abs().max()) <= 1.0
    session = model.session(reference, seed=3)
    frames = []
    for i in range(6):
        row = {n: (s[:, i] if i < 5 else None) for n, s in signals.items()}
        if i < 5 and not present["toy"][0, i]:
            row["toy"] = None
        frames.append(session.step(row).pixels)
    assert torch.equal(torch.stack(frames, 1), video)


@pytest.mark.parametrize(("sink_attention", "adaln_identity"), [(True, True), (False, True), (True, False), (False, False)])
def test_cache_and_recompute_agree_with_a_one_layer_backbone(toy_stack, reference, sink_attention, adaln_identity):
    """With depth 1 the kv-cache holds exactly what recomputing the window would give (also under
    the sink ablations: the session and the training pass share the switches)."""
    torch.manual_seed(0)
    arch = get_arch("tiny", depth=1, window=2, period=4, sink_attention=sink_attention, adaln_identity=adaln_identity)
    model = activate(EarTalkModel(arch, toy_stack))
    cached = run(model.session(reference, seed=2), 5)
    recomputed = run(model.session(reference, seed=2, use_cache=False), 5)
    torch.testing.assert_close(cached, recomputed, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg_keep", [(), ("toy_audio",)])
def test_session_guidance_pushes_from_the_null_branch_to_the_conditions(model, reference, cfg_keep):
    """One MAR step, one DDIM step, no noise: frame 0 is linear in the head output, so the guided
    frame must be ``null + s * (cond - null)`` of two unguided sessions: one with the controls, one
    with only the ``cfg_keep`` controls (catches cond/null swapped in the session's batching)."""
    toy, audio = torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.3, -0.7, 1.0, 0.2])
    kw = dict(steps=1, denoise_steps=1, temperature=0.0, seed=0, cfg_keep=cfg_keep)

    def first(cfg: float, keep_only: bool = False):
        session = model.session(reference, cfg=cfg, **kw)
        if not keep_only or "toy" in cfg_keep:
            session.set_control("toy", toy)
        if not keep_only or "toy_audio" in cfg_keep:
            session.set_control("toy_audio", audio)
        return session.step().latents

    cond, null = first(1.0), first(1.0, keep_only=True)
    assert not torch.allclose(cond, null)
    for scale in (0.0, 3.0):
        torch.testing.assert_close(first(scale), null + scale * (cond - null), atol=1e-4, rtol=1e-4)


def test_separate_guidance_scales_each_control_on_its_own(model, reference):
    """``cfg_separate``: with one MAR step, one DDIM step and no noise frame 0 is linear in the head
    output, so the guided frame must be ``u + g (b0 - u) + s (b1 - b0)`` of three unguided sessions
    (u: nothing set; b0: every control but the separate one; b1: every control). Catches the
    branches batched in the wrong order or the scales swapped."""
    toy, audio = torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.3, -0.7, 1.0, 0.2])
    kw = dict(steps=1, denoise_steps=1, temperature=0.0, seed=0)

    def first(controls: tuple[str, ...] = ("toy", "toy_audio"), **sampling):
        session = model.session(reference, **kw, **sampling)
        for name, value in (("toy", toy), ("toy_audio", audio)):
            if name in controls:
                session.set_control(name, value)
        return session.step().latents

    b1, b0, u = first(cfg=1.0), first(("toy_audio",), cfg=1.0), first((), cfg=1.0)
    assert not torch.allclose(b1, b0) and not torch.allclose(b0, u)
    for g, s in ((3.0, 1.0), (3.0, 0.0), (0.5, 4.0)):
        torch.testing.assert_close(first(cfg=g, cfg_separate={"toy": s}), u + g * (b0 - u) + s * (b1 - b0),
                                   atol=1e-4, rtol=1e-4)
    # the same scale for both is plain CFG; a separate control that is unset adds nothing
    torch.testing.assert_close(first(cfg=3.0, cfg_separate={"toy": 3.0}), first(cfg=3.0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(first(("toy_audio",), cfg=3.0, cfg_separate={"toy": 0.0}),
                               first(("toy_audio",), cfg=3.0), atol=1e-4, rtol=1e-4)
    # two separate controls, b_k adds them in the given order (b0 is then u: g has nothing to scale)
    both = first(cfg=2.0, cfg_separate={"toy_audio": 3.0, "toy": 0.5})
    torch.testing.assert_close(both, u + 3.0 * (b0 - u) + 0.5 * (b1 - b0), atol=1e-4, rtol=1e-4)
    # set as the model's default (what a checkpoint stores), sessions use it unless told otherwise
    model.set_sampling(cfg=3.0, cfg_separate={"toy": 0.5})
    assert model.session(reference).branches == 3
    torch.testing.assert_close(first(), u + 3.0 * (b0 - u) + 0.5 * (b1 - b0), atol=1e-4, rtol=1e-4)


def test_set_context_every_frame_is_the_teacher_forced_pass(model, reference):
    """Given the true previous frame before every step, the session samples what the full
    teacher-forced pass (the training's path, every frame's context true) gives with the same
    random draws; the window and the kv-cache hold the forced frames, not the generated ones."""
    frames, seed = 6, 5
    g = torch.Generator().manual_seed(1)
    truth = torch.randn(1, frames, model.arch.num_tokens, model.arch.token_dim, generator=g)  # (1, T, N, c)
    signals = {"toy": torch.randn(1, frames, 3, generator=g), "toy_audio": torch.randn(1, frames, 4, generator=g)}
    session = model.session(reference, seed=seed)
    forced = []
    for i in range(frames):
        if i:
            session.set_context(tokens=truth[:, i - 1])
        forced.append(session.step({n: s[:, i] for n, s in signals.items()}).latents)
    forced = torch.stack(forced, 1)  # (1, T, C, h, w)

    with torch.no_grad():
        ref = session.ref_tokens
        cond = model.condition_tokens(signals, None, 1, frames)  # (1, T, K, Dc)
        null = model.stack.null_tokens(1, frames)
        prev = torch.cat([ref[:, None], truth[:, :-1]], 1)
        z, z_null = model.backbone(ref, cond, prev, noise=False), model.backbone(ref, null, prev, noise=False)
        s, gen = model.arch.sampling, torch.Generator().manual_seed(seed)
        full = torch.stack([model.tokens_to_latents(model.from_target(model.decoder.sample(
            z[:, i], z_null[:, i], s.steps, s.denoise_steps, s.cfg, s.cfg_schedule, s.temperature, s.eta, gen), ref)[:, None])[:, 0]
            for i in range(frames)], 1)
    torch.testing.assert_close(forced, full, atol=1e-4, rtol=1e-4)
    free = run(model.session(reference, seed=seed), frames, "latents")
    assert (free[:, 1:] - forced[:, 1:]).abs().amax() > 1e-2  # the forced context is what made the difference


def test_set_context_takes_a_frame_and_checks_its_input(model, reference):
    a, b = model.session(reference, seed=3), model.session(reference, seed=3)
    a.step(), b.step()
    other = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(9)) * 2 - 1
    b.set_context(frame=other)
    assert torch.equal(b.prev_tokens, model.encode_tokens(other[None, None])[:, 0])
    assert (a.step().latents - b.step().latents).abs().amax() > 1e-3
    with pytest.raises(InputError, match="either frame or tokens"):
        a.set_context()
    with pytest.raises(InputError, match="tokens must be"):
        a.set_context(tokens=torch.zeros(1, 3, 5))
    with pytest.raises(InputError, match="NaN or inf"):
        a.set_context(tokens=torch.full_like(a.prev_tokens, float("nan")))
    with pytest.raises(InputError, match="context frame holds NaN"):
        a.set_context(frame=torch.full((3, 64, 64), float("nan")))
    with pytest.raises(InputError, match="context frame has shape"):
        a.set_context(frame=torch.zeros(3, 32, 32))


def test_bad_inputs_are_reported(model):
    with pytest.raises(InputError, match="64x64"):
        model.session(torch.zeros(3, 32, 32))
    session = model.session(torch.zeros(3, 64, 64))
    with pytest.raises(InputError, match="toy"):
        session.step({"toy": torch.zeros(5)})
    with pytest.raises(InputError, match="cfg_keep"):
        model.session(torch.zeros(3, 64, 64), cfg_keep=("nope",))
    with pytest.raises(InputError, match=r"cfg_separate names conditions not in the stack: \['nope'\]"):
        model.session(torch.zeros(3, 64, 64), cfg_separate={"nope": 2.0})
    with pytest.raises(InputError, match=r"\['tyo'\] \(did you mean 'toy'\?\)"):
        model.session(torch.zeros(3, 64, 64), cfg_separate={"tyo": 2.0})
    with pytest.raises(ConfigError, match="in both cfg_keep .* and cfg_separate"):
        model.session(torch.zeros(3, 64, 64), cfg_keep=("toy",), cfg_separate={"toy": 2.0})
    with pytest.raises(ConfigError, match="must be >= 0"):
        model.session(torch.zeros(3, 64, 64), cfg_separate={"toy": float("nan")})


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _bounded_memory(model, reference, frames: int) -> None:
    session = model.session(reference, seed=0)
    window = model.arch.window
    session.set_control("toy", [1.0, 0.0, 0.0])
    sizes = []
    for i in range(frames):
        session.step()
        if i == window + 5:
            gc.collect()
            rss_start, objects_start = _rss_mb(), len(gc.get_objects())
        if i >= window:
            sizes.append(tuple(session.cache_nbytes().values()))
            assert len(session.cached_blocks()) == window
    gc.collect()
    rss_end, objects_end = _rss_mb(), len(gc.get_objects())
    assert len(set(sizes)) == 1  # the streaming state has one size once the window is full
    assert session.cached_blocks() == list(range(frames - window + 1, frames + 1))
    assert objects_end - objects_start < 200, "python objects accumulate with the frame count"
    assert rss_end - rss_start < 40, f"RSS grew {rss_end - rss_start:.1f} MB over {frames} frames"


def test_200_frames_in_bounded_memory(model, reference):
    _bounded_memory(model, reference, 200)


@pytest.mark.slow
def test_1000_frames_in_bounded_memory(model, reference):
    _bounded_memory(model, reference, 1000)
