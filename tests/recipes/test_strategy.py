"""Strategy building: devices from the command line, num_nodes, FSDP wrap units, activation checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch

from eartalk.core.config import apply_overrides, load_yaml, structure
from eartalk.core.errors import ConfigError
from eartalk.recipes.strategy import apply_checkpointing, block_classes, build_strategy, set_attention, trainer_kwargs
from eartalk.recipes.train import TrainConfig


def _config(*overrides: str) -> TrainConfig:
    data = load_yaml("recipes/configs/eartalk_tiny_train.yaml")
    data.pop("recipe")
    return structure(apply_overrides(data, list(overrides), TrainConfig), TrainConfig)


@pytest.mark.parametrize(("text", "expected"), [("2", 2), ("auto", "auto"), ("[0,1]", [0, 1]), ("'3'", 3)])
def test_devices_from_the_command_line(text: str, expected) -> None:
    cfg = _config(f"trainer.devices={text}", "trainer.num_nodes=2", "trainer.strategy=ddp")
    assert trainer_kwargs(cfg.trainer) == {"strategy": "ddp", "devices": expected, "num_nodes": 2}


def test_bad_devices_and_nodes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="trainer.devices"):
        _config("trainer.devices=1.5")
    with pytest.raises(ConfigError, match="num_nodes"):
        trainer_kwargs(_config("trainer.num_nodes=0").trainer)
    with pytest.raises(ConfigError, match="not supported"):
        build_strategy(_config("trainer.strategy=fsdp_cpu_offload").trainer)


def test_fsdp_wraps_each_block_and_checkpoints_them() -> None:
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    strategy = build_strategy(_config("trainer.strategy=fsdp", "trainer.activation_checkpointing=true").trainer)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and set(policy._module_classes) == block_classes()
    assert set(strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes) == block_classes()
    plain = build_strategy(_config("trainer.strategy=fsdp").trainer)
    assert not plain._activation_checkpointing_kwargs


def test_activation_checkpointing_gives_the_same_loss_and_gradients() -> None:
    from eartalk.core.engine.model import build_model
    from eartalk.core.engine.presets import get_arch

    torch.manual_seed(0)
    model = build_model(get_arch("tiny"), ["voice_activity"]).train()
    for p in model.backbone.parameters():
        torch.nn.init.normal_(p, std=0.05)  # non-zero adaLN gates: the blocks do something
    wrapped = copy.deepcopy(model)
    assert apply_checkpointing(wrapped) == 2 + 2 + 2  # backbone, decoder and diffusion-head blocks
    assert set_attention(wrapped, "sparse") == 1
    g = torch.Generator().manual_seed(0)
    batch = {"frames": torch.rand(2, 6, 3, 64, 64, generator=g) * 2 - 1, "reference": torch.rand(2, 3, 64, 64, generator=g) * 2 - 1,
             "signals": {}}
    losses, grads = [], []
    for m in (model, wrapped):
        torch.manual_seed(5)
        loss = m.loss(batch)["loss"]
        loss.backward()
        losses.append(loss.detach())
        grads.append({n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in m.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6)
    assert set(wrapped.state_dict()) == set(model.state_dict())  # checkpoints keep their keys
