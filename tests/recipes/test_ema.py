"""EMA callback: the average follows the weights with the warm-up decay, survives a checkpoint, and loaders use it."""

from __future__ import annotations

import types

import pytest
import torch

from eartalk.core.errors import ConfigError
from eartalk.recipes.ema import EMA, EMA_KEY, apply_ema


def _fake(step: int):
    return types.SimpleNamespace(global_step=step, strategy=object())


def test_ema_tracks_weights_with_warmup_and_round_trips_through_a_checkpoint() -> None:
    module = torch.nn.Linear(3, 2)
    module.bias.requires_grad_(False)  # frozen weights are not averaged
    ema = EMA(0.5)
    ema.on_fit_start(_fake(0), module)
    w0 = module.weight.detach().clone()
    expected = w0.clone()
    for step in (1, 2, 3):
        with torch.no_grad():
            module.weight.add_(1.0)
        ema.on_train_batch_end(_fake(step), module, None, None, 0)
        ema.on_train_batch_end(_fake(step), module, None, None, 1)  # same optimiser step (accumulation): no update
        d = min(0.5, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * module.weight.detach()
    assert set(ema.shadow) == {"weight"}
    torch.testing.assert_close(ema.shadow["weight"], expected)
    assert not torch.allclose(expected, module.weight)

    ckpt: dict = {"state_dict": {k: v.clone() for k, v in module.state_dict().items()}}
    ema.on_save_checkpoint(_fake(3), module, ckpt)
    assert ckpt["ema_updates"] == 3 and ckpt["ema_decay"] == 0.5
    restored = EMA(0.5)
    restored.on_load_checkpoint(_fake(3), module, ckpt)
    restored.on_fit_start(_fake(3), module)
    torch.testing.assert_close(restored.shadow["weight"], expected)

    used = apply_ema(ckpt["state_dict"], ckpt)
    torch.testing.assert_close(used["weight"], expected)
    torch.testing.assert_close(used["bias"], module.bias.detach())
    raw = apply_ema(ckpt["state_dict"], ckpt, use_ema=False)
    torch.testing.assert_close(raw["weight"], module.weight.detach())
    assert EMA_KEY in ckpt


def test_bad_decay_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ema_decay"):
        EMA(1.0)
