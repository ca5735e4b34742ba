"""bf16: the model trains and samples with bfloat16 weights (bf16-true) and under bf16 autocast (bf16-mixed)."""

from __future__ import annotations

import torch

from eartalk.core.engine.mar import Diffusion
from eartalk.core.engine.model import build_model
from eartalk.core.engine.presets import get_arch


def _batch(arch, b: int = 1, t: int = 6, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(0)
    r = arch.resolution
    return {
        "frames": (torch.rand(b, t, 3, r, r, generator=g) * 2 - 1).to(dtype),
        "reference": (torch.rand(b, 3, r, r, generator=g) * 2 - 1).to(dtype),
        "signals": {},
    }


def test_schedule_stays_float32_under_bf16() -> None:
    diff = Diffusion(1000, "cosine").to(torch.bfloat16)
    assert diff.alphas_cumprod.dtype == torch.float32
    assert bool((diff.alphas_cumprod[:4] < 1.0).all())  # bf16 would round these to 1.0
    x0 = torch.randn(5, 3, dtype=torch.bfloat16)
    t = torch.tensor([0, 1, 2, 500, 999])
    assert diff.noisy(x0, t, torch.randn_like(x0)).dtype == torch.bfloat16


def test_bf16_true_trains_and_streams_on_cpu() -> None:
    torch.manual_seed(0)
    arch = get_arch("tiny")
    model = build_model(arch, ["voice_activity", "blink"]).to(torch.bfloat16)
    assert model.backbone.rotary.freqs.dtype == torch.float32
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    batch = _batch(arch, dtype=torch.bfloat16)
    losses = []
    for _ in range(4):
        torch.manual_seed(1)  # same masks/noise every step: the loss on this batch must fall
        loss = model.loss(batch)["loss"]
        assert loss.dtype == torch.bfloat16 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    model.eval()
    session = model.session(batch["reference"][0].float(), steps=2, denoise_steps=3)
    frames = [session.step().pixels for _ in range(arch.window + 2)]  # past the window: the ring wraps
    assert all(f.dtype == torch.bfloat16 and bool(torch.isfinite(f.float()).all()) for f in frames)
    assert session.cache.k.dtype == torch.bfloat16


def test_bf16_mixed_loss_under_autocast() -> None:
    torch.manual_seed(0)
    arch = get_arch("tiny")
    model = build_model(arch, ["voice_activity"]).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(_batch(arch))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.decoder.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)


def test_bf16_default_dtype_as_lightning_sets_it() -> None:
    """Lightning's bf16-true makes bfloat16 the default dtype during steps: schedules and masks stay exact."""
    from eartalk.core.engine.mar import truncated_normal

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        times = Diffusion(1000).respaced(25)
        assert times[0] == 999 and times[-1] == 0 and len(set(times)) == 25  # bf16 linspace rounds 999 to 1000
        ratios = truncated_normal((64,), 1.0, 0.25, 0.7, 1.0)  # ndtri has no bf16 CPU kernel
        assert ratios.dtype == torch.float32 and bool(((ratios >= 0.7) & (ratios <= 1.0)).all())
    finally:
        torch.set_default_dtype(old)
