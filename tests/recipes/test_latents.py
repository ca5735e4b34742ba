"""Pre-encoded latents: ``eartalk encode`` writes them keyed to the VAE's hash, training batches read them
(the loss equals the on-the-fly VAE path), and a stale or missing cache is an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eartalk.core.cli import main
from eartalk.core.engine.presets import get_arch
from eartalk.core.errors import ConfigError, InputError


def _config(root: Path, vae: Path, **data):
    from eartalk.core.config import structure
    from eartalk.recipes.train import TrainConfig

    return structure({"out_dir": str(root / "run"), "model": {"preset": "tiny", "vae_checkpoint": str(vae)},
                      "conditions": [{"name": "voice_activity"}],
                      "data": {"root": str(root / "data"), "clip_frames": 8, "batch_size": 2, **data}}, TrainConfig)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    from eartalk.core.data.synth import synthesize_dataset
    from eartalk.core.engine.checkpoint import write_checkpoint
    from eartalk.core.engine.presets import get_arch
    from eartalk.core.engine.vae import FrameVAE

    root = tmp_path_factory.mktemp("latents")
    synthesize_dataset(root / "data", clips=2, seconds=0.8, resolution=64, seed=0, progress=False)
    torch.manual_seed(0)
    arch = get_arch("tiny")
    vae = FrameVAE.from_arch(arch)
    write_checkpoint(root / "vae.ckpt", vae, kind="vae", arch=arch)
    return root, root / "vae.ckpt"


def test_encode_then_train_batches_read_latents(setup, capsys) -> None:
    from eartalk.core.data.dataset import TalkingHeadDataset
    from eartalk.core.data.latents import file_hash
    from eartalk.recipes.common import make_datamodule
    from eartalk.recipes.config import arch_from
    from eartalk.recipes.encode import encode_dataset
    from eartalk.recipes.train import build_model

    root, vae_path = setup
    cfg = _config(root, vae_path, latents=True)
    with pytest.raises(InputError, match="run `eartalk encode CONFIG`"):
        make_datamodule(cfg, None).setup("fit")
    first = encode_dataset(cfg, progress=False)
    assert first["encoded"] == 2 and first["vae_sha256"] == file_hash(vae_path)
    assert encode_dataset(cfg, progress=False)["kept"] == 2  # rerun: nothing redone

    model = build_model(arch_from(cfg.model), cfg.conditions, str(vae_path)).eval()
    ds = TalkingHeadDataset(root / "data", 8, latents=first["vae_sha256"])
    item = ds[0]
    r = item["reference"][None]
    with torch.no_grad():
        ref = model.vae.encode(r[:, None])[0, 0]
        whole = model.vae.encode(torch.from_numpy(ds.clips[0].frames[:].copy()).float().div(127.5).sub(1)[None])[0]
    torch.testing.assert_close(item["reference_latents"], ref, atol=1e-5, rtol=1e-5)
    start = item["meta"]["start"]
    torch.testing.assert_close(item["latents"], whole[start : start + 8], atol=1e-5, rtol=1e-5)

    # The model's loss on cached latents equals the loss with the VAE run on the same frames.
    batch = {"frames": item["frames"][None], "reference": r, "signals": {}}
    with torch.no_grad():
        fresh = model.vae.encode(batch["frames"])
    cached = {**batch, "latents": fresh, "reference_latents": ref[None]}
    torch.manual_seed(3)
    a = model.loss(cached)["loss"]
    torch.manual_seed(3)
    b = model.loss(batch)["loss"]
    torch.testing.assert_close(a, b)

    dm = make_datamodule(cfg, None)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    tiny = get_arch("tiny")
    lat = (tiny.latent_channels, tiny.latent_size, tiny.latent_size)
    assert batch["latents"].shape == (2, 8, *lat) and batch["reference_latents"].shape == (2, *lat)


def test_another_vae_never_reads_a_stale_cache(setup, tmp_path: Path) -> None:
    from eartalk.core.data.dataset import TalkingHeadDataset
    from eartalk.core.data.latents import file_hash
    from eartalk.recipes.encode import encode_dataset

    root, vae_path = setup
    encode_dataset(_config(root, vae_path), progress=False)
    other = tmp_path / "other.ckpt"
    ckpt = torch.load(vae_path, weights_only=False)
    key = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 0.01  # a retrained VAE
    torch.save(ckpt, other)
    with pytest.raises(InputError, match="no latents for this VAE checkpoint"):
        TalkingHeadDataset(root / "data", 8, latents=file_hash(other))
    with pytest.raises(ConfigError, match="trained VAE file"):
        from eartalk.recipes.encode import latents_key

        latents_key(_config(root, Path("random"), latents=True))


def test_encode_command(setup, tmp_path: Path, capsys) -> None:
    root, vae_path = setup
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"recipe": "train", "model": {"preset": "tiny", "vae_checkpoint": str(vae_path)},
                               "conditions": [{"name": "voice_activity"}], "data": {"root": str(root / "data"), "clip_frames": 8}}))
    assert main(["encode", str(cfg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["encoded"] + out["kept"] == 2
