"""Frame VAE: causality, streaming equivalence, normalisation statistics, loss."""

from __future__ import annotations

import pytest
import torch

from eartalk.core.engine.vae import FrameVAE


@pytest.fixture()
def vae() -> FrameVAE:
    torch.manual_seed(0)
    return FrameVAE((8, 16, 16), latent_channels=4, temporal_kernel=3).eval()


def clip(frames: int = 6, batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, size, size, generator=g) * 2 - 1


def test_shapes_one_latent_per_frame(vae):
    z = vae.encode(clip())
    assert z.shape == (2, 6, 4, 8, 8)  # f = 4 with three levels, no temporal compression
    assert vae.decode(z).shape == (2, 6, 3, 32, 32)


@torch.no_grad()
def test_streaming_encode_and_decode_equal_whole_clip(vae):
    frames = clip(frames=7)
    whole = vae.encode(frames)
    cache = vae.new_cache()
    streamed = torch.stack([vae.encode_step(frames[:, i], cache) for i in range(7)], dim=1)
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)
    # chunks of any size continue the same stream
    cache = vae.new_cache()
    chunks = torch.cat([vae.encode(frames[:, :3], cache=cache), vae.encode(frames[:, 3:], cache=cache)], dim=1)
    torch.testing.assert_close(chunks, whole, rtol=1e-5, atol=1e-5)
    decoded = vae.decode(whole)
    cache = vae.new_cache()
    streamed = torch.stack([vae.decode_step(whole[:, i], cache) for i in range(7)], dim=1)
    torch.testing.assert_close(streamed, decoded, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_temporal_kernels_look_only_backwards(vae):
    frames = clip(frames=6)
    z = vae.encode(frames)
    changed = frames.clone()
    changed[:, 3] = -changed[:, 3]
    z2 = vae.encode(changed)
    torch.testing.assert_close(z2[:, :3], z[:, :3])  # the past is untouched
    assert not torch.allclose(z2[:, 3], z[:, 3])
    assert not torch.allclose(z2[:, 4], z[:, 4])  # the temporal kernel does look back (k = 3)
    out, out2 = vae.decode(z), vae.decode(z2)
    torch.testing.assert_close(out2[:, :3], out[:, :3])


@torch.no_grad()
def test_fit_latent_stats_normalises_latents(vae):
    data = [clip(seed=s) * 0.5 + 0.2 for s in range(3)]
    mean, std = vae.fit_latent_stats(data)
    z = torch.cat([vae.encode(x) for x in data])  # normalised
    per_channel = z.transpose(0, 2).reshape(4, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(4), atol=1e-2, rtol=0)
    # stored as buffers, so they travel with the weights
    state = vae.state_dict()
    assert torch.equal(state["latent_mean"], mean) and torch.equal(state["latent_std"], std)
    # decode inverts the normalisation
    raw_mean, _ = vae.posterior(data[0])
    torch.testing.assert_close(vae.denormalize(vae.encode(data[0])), raw_mean, atol=1e-5, rtol=1e-5)


def test_loss_terms_and_training_lowers_reconstruction():
    torch.manual_seed(0)
    vae = FrameVAE((8, 16), latent_channels=4, temporal_kernel=2, kl_weight=1e-3)
    coarse = clip(frames=2, batch=2, size=4).flatten(0, 1)
    frames = torch.nn.functional.interpolate(coarse, size=16, mode="bilinear").unflatten(0, (2, 2))  # smooth
    first = vae.loss(frames)
    assert set(first) == {"loss", "recon", "kl"}
    torch.testing.assert_close(first["loss"], first["recon"] + 1e-3 * first["kl"])
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        vae.loss(frames)["loss"].backward()
        opt.step()
    torch.manual_seed(1)
    assert vae.loss(frames)["recon"] < 0.8 * first["recon"]  # 40 Adam steps: L1 error down by > 20 %


def test_bad_frame_shapes_are_reported(vae):
    with pytest.raises(ValueError, match="divisible"):
        vae.encode(torch.zeros(1, 1, 3, 30, 30))
    with pytest.raises(ValueError, match=r"\(B, T, 3, R, R\)"):
        vae.encode(torch.zeros(1, 3, 32, 32))



@torch.no_grad()
def test_decoded_mean_colour_depends_on_the_latent():
    """The frame's mean colour must be able to follow the latent. A one-channel group norm before
    the output convolution removes every channel's per-frame mean, so (at init, and after any
    training) the mean colour of a decoded frame is the output bias whatever the latent: the
    spread of mean colours over random flat latents was 0.004 with the old 8-channel/8-group norm
    and 0.03-0.08 with groups of 4 channels (4 seeds of the tiny VAE)."""
    for seed in range(2):
        torch.manual_seed(seed)
        vae = FrameVAE((8, 16, 32, 32), latent_channels=8, temporal_kernel=2).eval()
        z = torch.randn(16, 1, 8, 1, 1).expand(16, 1, 8, 8, 8)  # flat latents (B, T, C, h, w)
        means = vae.decode(z).mean(dim=(-1, -2))[:, 0]  # (16, 3) mean colour per frame
        assert means.std(0).mean().item() > 0.02, seed


@torch.no_grad()
def test_stem_folds_pixels_into_channels_and_streams_like_the_whole_clip():
    torch.manual_seed(0)
    vae = FrameVAE((16,), latent_channels=4, temporal_kernel=2, stem=4).eval()
    assert vae.downsample == 4
    frames = clip(frames=5, size=32)
    z = vae.encode(frames)
    assert z.shape == (2, 5, 4, 8, 8)
    assert vae.decode(z).shape == frames.shape
    cache = vae.new_cache()
    streamed = torch.stack([vae.decode_step(z[:, i], cache) for i in range(5)], dim=1)
    torch.testing.assert_close(streamed, vae.decode(z), rtol=1e-5, atol=1e-5)
    # a pixel lands in its own latent cell: a change in the top-left 4x4 patch moves the cells
    # near it, not the opposite corner (beyond the receptive field of the encoder's convolutions)
    changed = frames.clone()
    changed[:, :, :, :4, :4] = -changed[:, :, :, :4, :4]
    delta = (vae.encode(changed) - z).abs().sum(dim=(0, 1, 2))  # (8, 8)
    assert delta[0, 0] > 5 * delta[7, 7]  # (group norms spread a little: their statistics are per frame)


def test_stem_vae_learns_faster_than_the_full_resolution_layout():
    """The reason for the stem: at the same step budget a stem VAE reconstructs synthetic faces better."""
    from eartalk.core.data.synth import synthesize_clip

    faces = torch.stack([synthesize_clip(i, 0.16, 32).frames.float() / 127.5 - 1 for i in range(12)])  # (12, 4, 3, 32, 32)
    held = torch.stack([synthesize_clip(100 + i, 0.08, 32).frames.float() / 127.5 - 1 for i in range(3)])

    def trained_l1(vae: FrameVAE) -> float:
        opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(60):
            idx = torch.randint(0, 12, (6,), generator=g)
            loss = vae.loss(faces[idx, :2])["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            mean, _ = vae.posterior(held)
            return float((vae._decode_raw(mean) - held).abs().mean())

    torch.manual_seed(0)
    plain = trained_l1(FrameVAE((8, 16, 16), latent_channels=4, temporal_kernel=2))
    torch.manual_seed(0)
    stem = trained_l1(FrameVAE((32,), latent_channels=4, temporal_kernel=2, stem=4))
    assert stem < plain


def test_focus_weights_peak_on_the_points_and_are_one_far_away():
    from eartalk.core.engine.vae import focus_weights

    points = torch.tensor([[[[0.25, 0.75], [0.8, 0.1]]]])  # (B=1, T=1, K=2, 2): x, y
    w = focus_weights(points, 32, sigma=0.05, weight=9.0)[0, 0, 0]  # (32, 32)
    assert w.shape == (32, 32)
    assert float(w[24, 8]) > 9.0 and float(w[3, 25]) > 9.0  # row = y * 32, column = x * 32
    assert float(w[16, 16]) == pytest.approx(1.0, abs=1e-4) and float(w.min()) >= 1.0
    assert torch.equal(focus_weights(points, 32, 0.05, 0.0), torch.ones(1, 1, 1, 32, 32))


def test_weighted_loss_with_uniform_weights_is_the_plain_loss():
    torch.manual_seed(0)
    vae = FrameVAE((8, 16), latent_channels=4, temporal_kernel=2, recon="l1+l2")
    frames = clip(frames=2, batch=2, size=16)
    torch.manual_seed(5)
    plain = vae.loss(frames)
    torch.manual_seed(5)
    uniform = vae.loss(frames, torch.full((2, 2, 1, 16, 16), 3.0))
    torch.testing.assert_close(uniform["recon"], plain["recon"])


def test_focus_weight_makes_the_vae_keep_a_small_detail():
    """A 2 x 2 dot that blinks on and off in one corner of a smooth frame: a tiny VAE trained with
    the plain loss blurs it away; the same VAE with the loss weighted at the dot keeps it."""

    def frames(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        base = torch.nn.functional.interpolate(torch.rand(8, 3, 2, 2, generator=g) * 1.6 - 0.8, size=16, mode="bilinear")
        on = torch.rand(8, generator=g) < 0.5
        base[on, :, 3:5, 11:13] = 1.0
        return base.unflatten(0, (4, 2)), on

    dot = torch.tensor([12.0 / 16, 4.0 / 16])  # x, y of the dot's centre
    err = {}
    for weight in (0.0, 30.0):
        torch.manual_seed(0)
        vae = FrameVAE((8, 8), latent_channels=1, temporal_kernel=1)
        opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
        from eartalk.core.engine.vae import focus_weights

        for step in range(150):
            x, _ = frames(step)
            w = focus_weights(dot.expand(4, 2, 1, 2), 16, 0.06, weight)
            opt.zero_grad()
            vae.loss(x, w)["loss"].backward()
            opt.step()
        x, _ = frames(999)
        with torch.no_grad():
            recon = vae._decode_raw(vae.posterior(x)[0])
        err[weight] = float((recon - x)[..., 3:5, 11:13].abs().mean())
    assert err[30.0] < 0.6 * err[0.0], err
