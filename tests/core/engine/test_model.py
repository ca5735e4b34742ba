"""EarTalkModel: teacher-forced training learns, checkpoints round-trip, FLOP counts are right."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from eartalk.conditions import ConditionStack
from eartalk.conditions.testing import ToyAudio, ToyCondition
from eartalk.core.engine.model import EarTalkModel, load_checkpoint, patchify, save_checkpoint, unpatchify
from eartalk.core.engine.presets import get_arch
from eartalk.core.errors import InputError, WeightsNotFoundError


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


def test_checkpoint_round_trip(toy_stack, tmp_path):
    torch.manual_seed(0)
    arch = get_arch("tiny", window=3, sampling={"cfg": 1.5})
    model = EarTalkModel(arch, toy_stack).eval()
    with torch.no_grad():
        model.vae.latent_std.fill_(2.0)
        for blk in model.backbone.blocks:
            blk.ada[1].weight.normal_()
    path = save_checkpoint(tmp_path / "ckpt" / "model.pt", model, {"conditions": ["toy", "toy_audio"]})
    ckpt = load_checkpoint(path)
    assert ckpt.arch == arch and ckpt.extra == {"conditions": ["toy", "toy_audio"]}
    torch.manual_seed(5)  # a fresh stack and model with other random weights
    fresh = ckpt.build(ConditionStack([ToyCondition(16), ToyAudio(16)])).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    ref = torch.zeros(3, 64, 64)
    a = model.generate(ref, {"toy": torch.ones(3, 3)}, num_frames=3)
    b = fresh.generate(ref, {"toy": torch.ones(3, 3)}, num_frames=3)
    assert torch.equal(a, b)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(InputError, match="not an eartalk model checkpoint"):
        load_checkpoint(bad)


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
