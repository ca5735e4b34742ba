"""``eartalk encode CONFIG``: pre-encode a dataset's frames with the config's frozen VAE.

Writes ``<data.root>/latents/<VAE hash>/`` (see :mod:`eartalk.core.data.latents`); training with
``data.latents=true`` then skips the VAE. Clips already encoded for this VAE are kept, so a rerun
after adding clips only encodes the new ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from eartalk.core.commands import Command, print_json
from eartalk.core.errors import ConfigError


def vae_hash_of(config: Any) -> str:
    """SHA-256 of the config's VAE checkpoint (the key of its latent cache).

    Raises:
        ConfigError: no VAE checkpoint file (``random`` or unset cannot key a cache).
    """
    from eartalk.core.data.latents import file_hash

    path = config.model.vae_checkpoint
    if not path or not Path(path).is_file():
        raise ConfigError(
            f"data.latents needs model.vae_checkpoint to be a trained VAE file (got {path!r}): the cache is keyed "
            "to that file's hash"
        )
    return file_hash(path)


def latents_key(config: Any) -> str | None:
    """The VAE hash the DataModule reads latents for, or None when ``data.latents`` is off."""
    return vae_hash_of(config) if getattr(config.data, "latents", False) else None


@torch.no_grad()
def encode_dataset(config: Any, device: str | None = None, chunk: int = 32, progress: bool = True) -> dict[str, Any]:
    """Encode every clip of ``config.data.root`` with the VAE of ``config.model.vae_checkpoint``.

    Args:
        config: a ``train`` recipe config.
        device: torch device (default: CUDA when available, else CPU).
        chunk: frames per VAE call (the clip is one causal stream across chunks).
        progress: rich progress bar.

    Returns:
        ``{"dataset", "cache", "vae_sha256", "encoded", "kept"}``.
    """
    from eartalk.core.data.dataset import load_clips
    from eartalk.core.data.latents import LatentWriter
    from eartalk.core.engine.vae import FrameVAE
    from eartalk.core.types import to_model_range
    from eartalk.recipes.config import arch_from
    from eartalk.recipes.train import build_model

    digest = vae_hash_of(config)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    arch = arch_from(config.model)
    vae: FrameVAE = build_model(arch, config.conditions, config.model.vae_checkpoint).vae.to(device).eval()
    _, readers = load_clips(config.data.root)
    writer = LatentWriter(config.data.root, config.model.vae_checkpoint, digest)
    encoded = kept = 0
    shape: tuple[int, ...] = ()
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("encoding clips", total=len(readers))
        for reader in readers:
            if writer.has(reader.id):
                kept += 1
                bar.advance(task)
                continue
            frames = reader.frames
            cache = vae.new_cache()
            stream, alone = [], []
            for a in range(0, reader.num_frames, chunk):
                x = to_model_range(torch.from_numpy(frames[a : a + chunk].copy()).float()).to(device)  # (n, 3, R, R)
                stream.append(vae.encode(x[None], cache=cache)[0].float().cpu())  # (n, C, h, w)
                alone.append(vae.encode(x[:, None])[:, 0].float().cpu())  # (n, C, h, w)
            clip, single = torch.cat(stream).numpy(), torch.cat(alone).numpy()
            writer.add(reader.id, clip, single)
            shape = clip.shape[1:]
            encoded += 1
            bar.advance(task)
    writer.finish(encoded + kept, shape)
    return {"dataset": str(config.data.root), "cache": str(writer.dir), "vae_sha256": digest, "encoded": encoded,
            "kept": kept}


class EncodeCommand(Command):
    """``eartalk encode CONFIG [key=value ...]``: VAE latents of the config's dataset, for ``data.latents=true``."""

    name = "encode"
    help = "pre-encode a dataset with the config's frozen VAE (train with data.latents=true)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", help="a train recipe YAML (data.root and model.vae_checkpoint are used)")
        parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
        parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
        parser.add_argument("--json", action="store_true", help="print a JSON summary")

    def run(self, args: argparse.Namespace) -> int:
        from eartalk.core.commands import load_recipe_config

        recipe_cls, config = load_recipe_config(args.config, args.overrides)
        if recipe_cls.name != "train":
            raise ConfigError(f"{args.config}: `eartalk encode` takes a `train` recipe config, got recipe {recipe_cls.name!r}")
        result = encode_dataset(config, device=args.device, progress=not args.json)
        if args.json:
            print_json(result)
        else:
            print(f"{result['cache']}: {result['encoded']} clip(s) encoded, {result['kept']} already there")
        return 0
