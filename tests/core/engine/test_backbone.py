"""Backbone: the SFA attention rule, kv-cache streaming, cyclic positions, adaLN sink."""

from __future__ import annotations

import pytest
import torch

from eartalk.core.engine.backbone import Backbone

N, K, C_TOK, GRID = 4, 2, 6, 2


def make_backbone(depth: int = 2, window: int = 3, period: int = 8, seed: int = 0, **kw) -> Backbone:
    """A small backbone with random adaLN weights (zero-init gates would make every block the identity)."""
    torch.manual_seed(seed)
    bb = Backbone(
        token_dim=C_TOK, num_tokens=N, grid=GRID, num_slots=K, cond_dim=16, width=32, heads=4, depth=depth,
        identity_dim=8, window=window, period=period, context_noise=kw.pop("context_noise", 0.0), **kw,
    )
    for blk in bb.blocks:
        torch.nn.init.normal_(blk.ada[1].weight, std=0.3)
        torch.nn.init.normal_(blk.ada[1].bias, std=0.3)
    torch.nn.init.normal_(bb.ada_out[1].weight, std=0.3)
    if bb.control_adaln:
        torch.nn.init.normal_(bb.ctrl_ada.weight, std=0.1)
    if bb.context_skip is not None:
        torch.nn.init.normal_(bb.context_skip.weight, std=0.3)
    return bb.eval().double()


def inputs(frames: int, batch: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(batch, N, C_TOK, generator=g, dtype=torch.float64)
    cond = torch.randn(batch, frames, K, 16, generator=g, dtype=torch.float64)
    prev = torch.randn(batch, frames, N, C_TOK, generator=g, dtype=torch.float64)
    return ref, cond, prev


@pytest.mark.parametrize("adaln_identity", [True, False])
@pytest.mark.parametrize("sink_attention", [True, False])
def test_sink_ablations_reach_the_output_exactly_as_switched(sink_attention, adaln_identity):
    """The reference reaches frame blocks through the sink attention and through adaLN, and only
    through the switched-on ones: with both off the frame blocks do not depend on it at all."""
    bb = make_backbone(depth=2, window=3, sink_attention=sink_attention, adaln_identity=adaln_identity)
    ref, cond, prev = inputs(frames=5)
    with torch.no_grad():
        base = bb(ref, cond, prev)
        moved = bb(ref + 1.0, cond, prev)
        mods_moved = not torch.allclose(bb.modulations(bb.identity(ref))[0], bb.modulations(bb.identity(ref + 1.0))[0])
    assert mods_moved == adaln_identity
    changed = not torch.allclose(moved, base, atol=1e-12)
    assert changed == (sink_attention or adaln_identity)
    if not adaln_identity:
        assert not hasattr(bb, "id_in") and bb.id_const.requires_grad  # the constant is learned
    # sink attention only: one layer, only the sink tokens reach the frame outputs
    one = make_backbone(depth=1, window=3, sink_attention=sink_attention, adaln_identity=False)
    with torch.no_grad():
        assert (not torch.allclose(one(ref + 1.0, cond, prev), one(ref, cond, prev), atol=1e-12)) == sink_attention


def test_mask_one_layer_window_and_sink_only():
    """Depth 1: block t's outputs change iff the changed token is in the sink or in blocks t-W+1..t."""
    bb = make_backbone(depth=1, window=3)
    ref, cond, prev = inputs(frames=7)
    t = 6  # blocks 1..7 at indices 0..6 of cond/prev; block 6 sees 4, 5, 6 and the sink
    with torch.no_grad():
        base = bb(ref, cond, prev)[:, t - 1]
        ref2 = ref.clone()
        ref2[:, 1] += 1.0
        assert not torch.allclose(bb(ref2, cond, prev)[:, t - 1], base)
        for s in range(1, 8):
            prev2 = prev.clone()
            prev2[:, s - 1, 2] += 1.0
            cond2 = cond.clone()
            cond2[:, s - 1, 0] += 1.0
            inside = t - 3 < s <= t
            for c, p in ((cond, prev2), (cond2, prev)):
                changed = not torch.allclose(bb(ref, c, p)[:, t - 1], base, atol=1e-12)
                assert changed == inside, (s, inside)


def test_tokens_of_a_block_see_each_other_both_ways():
    bb = make_backbone(depth=1, window=3)
    ref, cond, prev = inputs(frames=3)
    with torch.no_grad():
        hidden = bb(ref, cond, prev, return_all=True)  # (1, N + 3 * (K + N), D)
        start = N + 1 * (K + N)  # block 2
        slot, visual = start, start + K + N - 1
        cond2 = cond.clone()
        cond2[:, 1, 0] += 1.0  # a condition slot of block 2
        h2 = bb(ref, cond2, prev, return_all=True)
        assert not torch.allclose(h2[:, visual], hidden[:, visual])  # visual token sees the slot
        prev2 = prev.clone()
        prev2[:, 1, -1] += 1.0  # the last visual token of block 2
        h3 = bb(ref, cond, prev2, return_all=True)
        assert not torch.allclose(h3[:, slot], hidden[:, slot])  # slot sees the visual token
        # and nothing of block 2 reaches block 1 (causal across frames)
        assert torch.allclose(h3[:, N : N + K + N], hidden[:, N : N + K + N])


def test_mask_deep_receptive_field_is_bounded():
    """Depth L: inputs more than L * (W - 1) blocks back never reach block t; later blocks never do."""
    depth, window = 2, 3
    bb = make_backbone(depth=depth, window=window)
    ref, cond, prev = inputs(frames=9)
    t = 9
    with torch.no_grad():
        base = bb(ref, cond, prev)[:, t - 1]
        for s in range(1, 10):
            prev2 = prev.clone()
            prev2[:, s - 1] += 1.0
            changed = not torch.allclose(bb(ref, cond, prev2)[:, t - 1], base, atol=1e-12)
            assert changed == (s > t - depth * (window - 1) - 1), s
        base5 = bb(ref, cond, prev)[:, 4]
        prev2 = prev.clone()
        prev2[:, 5:] += 1.0  # blocks 6..9
        assert torch.allclose(bb(ref, cond, prev2)[:, 4], base5)


@pytest.mark.parametrize(("sink_attention", "adaln_identity"), [(True, True), (False, True), (True, False), (False, False)])
def test_kv_cache_streaming_equals_full_pass_with_eviction(sink_attention, adaln_identity):
    bb = make_backbone(depth=3, window=3, sink_attention=sink_attention, adaln_identity=adaln_identity)
    frames = 10  # > W: eviction happens from frame 4 on
    ref, cond, prev = inputs(frames=frames, batch=2)
    with torch.no_grad():
        full = bb(ref, cond, prev)  # (B, T, N, D)
        cache, mods = bb.open(ref)
        for t in range(1, frames + 1):
            z = bb.step(cond[:, t - 1], prev[:, t - 1], t, cache, mods)
            assert cache.cached_blocks() == list(range(max(1, t - 2), t + 1))
            torch.testing.assert_close(z, full[:, t - 1], rtol=1e-9, atol=1e-9)
        assert cache.k.shape[3] == N + 3 * (K + N)  # constant size


def test_control_adaln_streams_exactly_and_each_frame_is_modulated_by_its_own_slots():
    """Per-frame control adaLN: the cached path still equals the full pass, and changing frame 4's
    slots changes frames 4.. only (and, unlike in-context slots alone, through every position's norm)."""
    bb = make_backbone(depth=2, window=3, control_adaln=True)
    frames = 7
    ref, cond, prev = inputs(frames=frames, batch=2)
    with torch.no_grad():
        full = bb(ref, cond, prev)
        cache, mods = bb.open(ref)
        for t in range(1, frames + 1):
            torch.testing.assert_close(bb.step(cond[:, t - 1], prev[:, t - 1], t, cache, mods), full[:, t - 1],
                                       rtol=1e-9, atol=1e-9)
        changed = cond.clone()
        changed[:, 3] += 1.0
        other = bb(ref, changed, prev)
        torch.testing.assert_close(other[:, :3], full[:, :3], rtol=1e-9, atol=1e-9)
        assert (other[:, 3] - full[:, 3]).abs().max() > 1e-3
        blocks = bb.token_blocks(frames)
        mods_a = bb.frame_modulations(bb.identity(ref), cond, blocks, 1)[0]
        mods_b = bb.frame_modulations(bb.identity(ref), changed, blocks, 1)[0]
        block4 = slice(N + 3 * (K + N), N + 4 * (K + N))
        assert (mods_a[:, block4] - mods_b[:, block4]).abs().max() > 1e-3  # frame 4's own modulation moved
        torch.testing.assert_close(mods_a[:, : N + 3 * (K + N)], mods_b[:, : N + 3 * (K + N)])


@pytest.mark.parametrize("skip_delta", [True, False])
def test_context_skip_adds_a_linear_map_of_each_positions_own_context_and_streams_exactly(skip_delta):
    """``context_skip``: z_t = the plain backbone's z_t + W (prev_t - ref) (or W prev_t) at the same
    position, zero at init; the cached path equals the full pass."""
    bb = make_backbone(depth=2, window=3, context_skip=True, skip_delta=skip_delta)
    plain = make_backbone(depth=2, window=3)
    plain.load_state_dict({k: v for k, v in bb.state_dict().items() if not k.startswith("context_skip.")})
    fresh = Backbone(token_dim=C_TOK, num_tokens=N, grid=GRID, num_slots=K, cond_dim=16, width=32, heads=4, depth=2,
                     identity_dim=8, window=3, context_skip=True)
    assert fresh.context_skip.weight.abs().max() == 0 and fresh.context_skip.bias.abs().max() == 0  # starts as a no-op
    frames = 6
    ref, cond, prev = inputs(frames=frames, batch=2)
    with torch.no_grad():
        full = bb(ref, cond, prev)
        source = prev - ref[:, None] if skip_delta else prev
        torch.testing.assert_close(full, plain(ref, cond, prev) + bb.context_skip(source), rtol=1e-9, atol=1e-9)
        cache, mods = bb.open(ref)
        for t in range(1, frames + 1):
            torch.testing.assert_close(bb.step(cond[:, t - 1], prev[:, t - 1], t, cache, mods), full[:, t - 1],
                                       rtol=1e-9, atol=1e-9)


def test_output_does_not_depend_on_frame_number():
    """Same sink and same window contents: frame 5 and frame 5000 give the same output."""
    depth, window = 2, 3  # receptive field depth * (W - 1) + 1 = 5 blocks
    bb = make_backbone(depth=depth, window=window, period=7)
    ref, cond, prev = inputs(frames=5)
    _, noise_cond, noise_prev = inputs(frames=6, seed=9)
    with torch.no_grad():
        cache, mods = bb.open(ref)
        for t in range(1, 6):
            early = bb.step(cond[:, t - 1], prev[:, t - 1], t, cache, mods)
        cache, mods = bb.open(ref)
        for i, t in enumerate(range(4990, 4996)):  # unrelated history first
            bb.step(noise_cond[:, i], noise_prev[:, i], t, cache, mods)
        for i, t in enumerate(range(4996, 5001)):
            late = bb.step(cond[:, i], prev[:, i], t, cache, mods)
        torch.testing.assert_close(late, early, rtol=1e-6, atol=1e-8)
        # a frame position that is not cyclic-invariant would break this: shift one block's phase
        full_a = bb(ref, cond, prev, start=1)[:, -1]
        full_b = bb(ref, cond, prev, start=4996)[:, -1]
        torch.testing.assert_close(full_a, full_b, rtol=1e-6, atol=1e-8)


def test_frame_positions_matter_inside_the_window():
    """The rotary frame position tells window blocks apart: swapping two blocks changes the output."""
    bb = make_backbone(depth=1, window=3)
    ref, cond, prev = inputs(frames=3)
    with torch.no_grad():
        base = bb(ref, cond, prev)[:, -1]
        swapped = bb(ref, cond[:, [1, 0, 2]], prev[:, [1, 0, 2]])[:, -1]
    assert not torch.allclose(base, swapped)


def test_adaln_zero_init_and_identity_modulation():
    torch.manual_seed(0)
    bb = Backbone(C_TOK, N, GRID, K, 16, 32, 4, 2, identity_dim=8, window=3, period=8).eval()
    ref, cond, prev = (x.float() for x in inputs(frames=2))
    with torch.no_grad():
        mods = bb.modulations(bb.identity(ref))
        assert all(torch.count_nonzero(m) == 0 for m in mods)  # zero-initialised: blocks are identities
        bb2 = make_backbone(depth=2, window=3).float()
        out1 = bb2(ref, cond, prev)
        out2 = bb2(ref + 0.5, cond, prev)
        # the reference changes every block's modulation (not only the sink tokens)
        m1, m2 = bb2.modulations(bb2.identity(ref)), bb2.modulations(bb2.identity(ref + 0.5))
        assert not torch.allclose(m1[0], m2[0])
        assert not torch.allclose(out1, out2)


def test_context_noise_only_in_training():
    bb = make_backbone(depth=1, context_noise=0.5, context_noise_per="frame")
    ref, cond, prev = inputs(frames=3)
    with torch.no_grad():
        bb.eval()
        assert torch.equal(bb(ref, cond, prev), bb(ref, cond, prev))
        noisy, sigma = bb.noise_context(prev)
        assert torch.equal(noisy[:, 0], prev[:, 0])  # block 1 (the reference) stays clean
        assert not torch.allclose(noisy[:, 1:], prev[:, 1:])
        bb.train()
        assert not torch.allclose(bb(ref, cond, prev), bb(ref, cond, prev))
        torch.testing.assert_close(bb(ref, cond, prev, noise=False), bb.eval()(ref, cond, prev))


def test_context_noise_schedule_per_clip_and_per_frame():
    """Per clip: one sigma ~ U(0, max) for all context frames of a clip (the reference stays clean
    unless asked); per frame: a sigma per frame. The noise added has exactly that std."""
    ref, cond, prev = inputs(frames=40, batch=400)
    for per in ("clip", "frame"):
        bb = make_backbone(depth=1, context_noise=0.8, context_noise_per=per)
        noisy, sigma = bb.noise_context(prev, torch.Generator().manual_seed(0))
        assert sigma.shape == (400, 40) and bool((sigma[:, 0] == 0).all())
        assert float(sigma.max()) <= 0.8 and abs(float(sigma[:, 1:].mean()) - 0.4) < 0.02  # U(0, 0.8)
        per_clip = bool((sigma[:, 1:] == sigma[:, 1:2]).all())
        assert per_clip == (per == "clip")
        unit = (noisy - prev)[:, 1:] / sigma[:, 1:, None, None]  # the added noise over its stated std
        assert abs(float(unit.std()) - 1.0) < 0.01 and abs(float(unit.mean())) < 0.01
        _, dirty = bb.noise_context(prev, torch.Generator().manual_seed(0), clean_first=False)
        assert bool((dirty[:, 0] > 0).all())
    with pytest.raises(ValueError, match="context_noise_per"):
        make_backbone(context_noise_per="batch")


def test_context_noise_level_embedding_tells_the_model_the_noise():
    """With ``context_noise_embed`` the same noisy context gives another output at another stated
    sigma; at sigma 0 (inference, streaming) it is the model without the embedding."""
    bb = make_backbone(depth=1, context_noise_embed=True)
    plain = make_backbone(depth=1)
    with torch.no_grad():
        bb.noise_embed.normal_()
    ref, cond, prev = inputs(frames=3)
    with torch.no_grad():
        zero = bb.embed_blocks(cond, prev, torch.zeros(1, 3, dtype=prev.dtype))
        torch.testing.assert_close(zero, plain.embed_blocks(cond, prev))
        half = bb.embed_blocks(cond, prev, torch.full((1, 3), 0.5, dtype=prev.dtype))
        assert not torch.allclose(half[:, :, K:], zero[:, :, K:])
        torch.testing.assert_close(half[:, :, :K], zero[:, :, :K])  # condition slots untouched
        assert plain.noise_embed is None


def test_period_must_exceed_window():
    with pytest.raises(ValueError, match="period"):
        Backbone(C_TOK, N, GRID, K, 16, 32, 4, 1, window=8, period=8)
