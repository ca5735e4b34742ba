"""The one checkpoint format: round trip, kinds, format versions, clear errors, no Lightning needed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from eartalk.core.engine.checkpoint import (
    FORMAT_VERSION,
    load_model,
    load_vae,
    read_checkpoint,
    read_info,
    write_checkpoint,
)
from eartalk.core.engine.model import build_model
from eartalk.core.engine.presets import get_arch
from eartalk.core.engine.vae import FrameVAE
from eartalk.core.errors import InputError, WeightsNotFoundError

SPECS = ["head_pose", "blink"]


@pytest.fixture()
def model():
    torch.manual_seed(0)
    m = build_model(get_arch("tiny", window=3, sampling={"cfg": 1.5}), SPECS).eval()
    with torch.no_grad():
        m.vae.latent_std.fill_(2.0)
        for blk in m.backbone.blocks:
            blk.ada[1].weight.normal_()
    return m


def test_model_round_trip_rebuilds_the_trained_stack(model, tmp_path) -> None:
    path = write_checkpoint(tmp_path / "ckpt" / "model.ckpt", model)
    info = read_info(path, expect="model")
    assert info.kind == "model" and info.condition_names == SPECS
    assert [p["name"] for p in info.plugins] == SPECS and info.plugins[0]["signal_dim"] == model.stack.plugin("head_pose").signal_dim
    assert info.latent_stats["std"] == [2.0] * model.arch.latent_channels
    torch.manual_seed(5)  # the loader's fresh model starts from other random weights
    loaded = load_model(path)
    assert loaded.arch == model.arch and loaded.stack.names == SPECS and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ref = torch.zeros(3, 64, 64)
    signals = {"head_pose": torch.zeros(3, 6)}
    assert torch.equal(model.generate(ref, signals, num_frames=3), loaded.generate(ref, signals, num_frames=3))
    assert not list(path.parent.glob(".*.tmp")), "the atomic write leaves no temporary file"


def test_wrong_kind_names_what_the_file_is_and_what_was_expected(model, tmp_path) -> None:
    arch = get_arch("tiny")
    vae_path = write_checkpoint(tmp_path / "vae.ckpt", FrameVAE.from_arch(arch), kind="vae", arch=arch)
    with pytest.raises(InputError, match=r"(?s)is a frame-VAE checkpoint.*not an eartalk model checkpoint.*last\.ckpt"):
        load_model(vae_path)
    model_path = write_checkpoint(tmp_path / "model.ckpt", model)
    with pytest.raises(InputError, match=r"(?s)is an eartalk model checkpoint.*expected a frame-VAE checkpoint.*vae\.ckpt"):
        load_vae(model_path)
    assert isinstance(load_vae(vae_path), FrameVAE)


def test_other_format_versions_and_foreign_files_get_clear_errors(model, tmp_path) -> None:
    path = write_checkpoint(tmp_path / "m.ckpt", model)
    ckpt = torch.load(path, weights_only=False)
    for version, hint in ((FORMAT_VERSION + 1, "upgrade eartalk"), (0, "retrain it")):
        ckpt["eartalk"]["format"] = version
        torch.save(ckpt, tmp_path / f"v{version}.ckpt")
        with pytest.raises(InputError, match=rf"(?s)format {version}.*reads format {FORMAT_VERSION}.*{hint}"):
            load_model(tmp_path / f"v{version}.ckpt")
    old = {"state_dict": ckpt["state_dict"], "hyper_parameters": {"config": {"model": {}}}}
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(InputError, match="older than checkpoint format 1"):
        read_checkpoint(tmp_path / "old.ckpt")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_model(tmp_path / "junk.ckpt")


def test_ema_weights_are_used_when_stored(model, tmp_path) -> None:
    path = write_checkpoint(tmp_path / "m.ckpt", model)
    ckpt = torch.load(path, weights_only=False)
    key = "model.decoder.head.out.weight" if "model.decoder.head.out.weight" in ckpt["state_dict"] else next(
        k for k in ckpt["state_dict"] if k.startswith("model.decoder.") and k.endswith("weight")
    )
    ckpt["ema_state_dict"] = {key: torch.full_like(ckpt["state_dict"][key], 0.5)}
    torch.save(ckpt, path)
    _, ema = read_checkpoint(path)
    _, raw = read_checkpoint(path, use_ema=False)
    name = key.removeprefix("model.")
    assert torch.all(ema[name] == 0.5) and torch.equal(raw[name], model.state_dict()[name])


def test_loader_imports_neither_lightning_nor_recipes(model, tmp_path) -> None:
    """Reading a checkpoint needs torch only (building its stack goes through the plugin registry,
    which loads whatever the installed plugin packages import)."""
    path = write_checkpoint(tmp_path / "m.ckpt", model)
    code = (
        "import sys; from eartalk.core.engine.checkpoint import read_checkpoint; info, state = read_checkpoint(sys.argv[1]);"
        "bad = [n for n in sys.modules if n.startswith(('lightning', 'pytorch_lightning', 'eartalk.recipes'))];"
        "print(info.kind, info.condition_names, len(state) > 0, bad)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "model ['head_pose', 'blink'] True []"


def test_mean_path_model_round_trip_and_its_frames_carry_the_mean(tmp_path) -> None:
    """A model trained with ``mean_weight`` keeps its mean head through a checkpoint, and its
    streamed frames move with it (zeroing the mean head changes the frames)."""
    torch.manual_seed(0)
    model = build_model(get_arch("tiny", window=3, mean_weight=1.0), SPECS).eval()
    with torch.no_grad():
        model.decoder.mean[-1].weight.normal_(std=0.3)
    loaded = load_model(write_checkpoint(tmp_path / "model.ckpt", model))
    assert loaded.arch.mean_weight == 1.0 and loaded.decoder.mean is not None
    ref, signals = torch.zeros(3, 64, 64), {"head_pose": torch.zeros(3, 6)}
    frames = loaded.generate(ref, signals, num_frames=3)
    assert torch.equal(model.generate(ref, signals, num_frames=3), frames)
    with torch.no_grad():
        loaded.decoder.mean[-1].weight.zero_()
    assert not torch.allclose(loaded.generate(ref, signals, num_frames=3), frames)
    with pytest.raises(ValueError, match="mean_weight"):
        get_arch("tiny", mean_weight=float("nan"))


def test_checkpoint_from_before_the_mean_path_loads_as_it_was_trained(tmp_path) -> None:
    """The tiny preset turned the mean path on and its guidance down to 3; a checkpoint recorded
    before (no ``mean_weight`` key, guidance 8) must load without a mean head and sample at 8."""
    assert get_arch("tiny").mean_weight == 1.0 and get_arch("tiny").sampling.cfg == 3.0
    torch.manual_seed(0)
    old = build_model(get_arch("tiny", window=3, mean_weight=0.0, sampling={"cfg": 8.0}), SPECS).eval()
    path = write_checkpoint(tmp_path / "old.ckpt", old)
    ckpt = torch.load(path, weights_only=False)
    del ckpt["eartalk"]["arch"]["mean_weight"]
    torch.save(ckpt, path)
    loaded = load_model(path)
    assert loaded.arch.mean_weight == 0.0 and loaded.decoder.mean is None
    assert loaded.arch.sampling.cfg == 8.0
    ref, signals = torch.zeros(3, 64, 64), {"head_pose": torch.zeros(3, 6)}
    assert torch.equal(old.generate(ref, signals, num_frames=2), loaded.generate(ref, signals, num_frames=2))
