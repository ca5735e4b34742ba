"""``eartalk train CONFIG --dry-run``: check a training config end to end without training it.

It builds the data module, the model and the Trainer as the real run would, then

* for a config that fits this machine (its accelerator is here, one device, at most
  :data:`MAX_STEP_PARAMS` parameters, the estimate below under half the memory): runs one optimiser
  step on the configured batch, through the recipe's own ``fit``, in a temporary folder; the data
  come from ``data.root`` or, where that folder is absent, from a small synthetic dataset (it says so);
* for a larger one: builds the model on the meta device (no memory) and reports its parameter counts,
  the strategy and an estimate of the memory per device for the configured batch.

The memory estimate of the ``train`` recipe is :func:`eartalk.recipes.memory.estimate_for_config`
(activations probed on the real loss; see docs/training.md, "Memory"). For the ``vae`` recipe it is
analytic (per device, in GiB):

* parameters: 4 bytes each (2 with ``*-true`` 16-bit precision);
* gradients: the same for every trainable parameter;
* optimiser: AdamW's two fp32 moments, 8 bytes per trainable parameter;
  FSDP shards these three over all devices (``devices * num_nodes``; the frozen VAE stays whole);
* activations saved for the backward pass, from the arch: per transformer layer and token about
  ``(10 + 2 * mlp_ratio) * width`` values (norm inputs, q/k/v, attention output, MLP in/hidden/out,
  adaLN-modulated copies), for the backbone over ``N + T * (K + N)`` tokens per clip, the MAR decoder
  over ``T * N`` and the diffusion head over ``T * N * diffusion_batch_mul``; the VAE recipe counts
  its convolution inputs level by level. Halved with 16-bit precision; with activation checkpointing
  only each block's input is kept. Fused (flash / memory-efficient) attention is assumed, so no
  ``L x L`` score matrix is counted.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import torch

from eartalk.core.config import structure, unstructure

GIB = 2**30
MAX_STEP_PARAMS = 50_000_000


def _evolve(config: Any, **changes: Any) -> Any:
    """``config`` with dotted-key changes (``{"trainer.max_steps": 1}``), structured again."""
    data = unstructure(config)
    for key, value in changes.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return structure(data, type(config))


def meta_module(recipe_name: str, config: Any) -> tuple[torch.nn.Module, Any]:
    """The recipe's network on the meta device (the condition stack is built for real first, so
    every plugin and its dependencies load), and its arch."""
    from eartalk.conditions.stack import ConditionStack
    from eartalk.core.engine.model import EarTalkModel
    from eartalk.core.engine.vae import FrameVAE
    from eartalk.recipes.config import arch_from

    arch = arch_from(config.model)
    if recipe_name == "vae":
        with torch.device("meta"):
            return FrameVAE.from_arch(arch), arch
    stack = ConditionStack.from_specs(list(config.conditions), arch.width).to("meta")
    with torch.device("meta"):
        return EarTalkModel(arch, stack), arch


def parameter_counts(module: torch.nn.Module) -> dict[str, int]:
    """Total and trainable parameters (the model keeps its VAE frozen), and per top-level part."""
    counts = {"total": sum(p.numel() for p in module.parameters())}
    counts["trainable"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    for name, child in module.named_children():
        counts[name] = sum(p.numel() for p in child.parameters())
    return counts


def activation_bytes(recipe_name: str, arch: Any, config: Any, num_slots: int = 0) -> float:
    """Estimated bytes of activations saved for backward for one device's batch (fp32)."""
    b, t = config.data.batch_size, config.data.clip_frames
    per_token = 10 + 2 * arch.mlp_ratio
    ckpt = bool(getattr(config.trainer, "activation_checkpointing", False))
    if recipe_name == "vae":
        total, res = 0.0, arch.resolution
        for level, channels in enumerate(arch.vae_channels):
            side = res / 2**level
            # encoder and decoder, each: res blocks of two convs plus the level's down/up sampling conv
            total += 2 * b * t * channels * side * side * (2 * arch.vae_res_blocks + 1)
        return 4.0 * total
    n, k = arch.num_tokens, num_slots
    layers = [
        (arch.depth, b * (n + t * (k + n)), arch.width),  # backbone over every frame block
        (arch.decoder_depth, b * t * n, arch.decoder_width),  # MAR decoder, per frame
    ]
    total = 0.0
    for depth, tokens, width in layers:
        total += depth * tokens * width * (1 if ckpt else per_token)
    total += arch.head_depth * b * t * n * arch.diffusion_batch_mul * arch.head_width * 8  # diffusion MLP
    return 4.0 * total


def estimate_memory(recipe_name: str, module: torch.nn.Module, arch: Any, config: Any) -> dict[str, float]:
    """Per-device memory estimate in GiB (see the module docstring)."""
    from eartalk.recipes.strategy import parse_devices

    trainer = config.trainer
    counts = parameter_counts(module)
    frozen = counts["total"] - counts["trainable"]
    precision = str(trainer.precision)
    width = 2 if precision.endswith("-true") and precision.startswith(("16", "bf16")) else 4
    devices = parse_devices(trainer.devices)
    per_node = len(devices) if isinstance(devices, list) else (devices if isinstance(devices, int) and devices > 0 else 1)
    world = per_node * int(getattr(trainer, "num_nodes", 1))
    shard = world if str(trainer.strategy) == "fsdp" else 1
    slots = getattr(getattr(module, "stack", None), "num_slots", 0)
    act = activation_bytes(recipe_name, arch, config, slots) * (0.5 if "16" in precision else 1.0)
    out = {
        "params": (counts["trainable"] * width / shard + frozen * width) / GIB,
        "grads": counts["trainable"] * width / shard / GIB,
        "optimizer": counts["trainable"] * 8 / shard / GIB,
        "activations": act / GIB,
    }
    out["total"] = sum(out.values())
    return {k: round(v, 4) for k, v in out.items()}


def _available_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8.0


def _accelerator_here(name: str) -> bool:
    return name in ("cpu", "auto") or (name in ("gpu", "cuda") and torch.cuda.is_available()) or (
        name == "mps" and torch.backends.mps.is_available()
    )


def check_trainer(config: Any, out_dir: Path, notes: list[str]) -> Any:
    """Build the Trainer as the real run does; where this machine lacks the accelerator, build it
    for the CPU with the same strategy (then with the default one) and say so."""
    from eartalk.recipes.common import build_trainer

    trainer_cfg = config.trainer
    try:
        return build_trainer(trainer_cfg, out_dir, seed=config.seed)
    except Exception as err:  # noqa: BLE001 - a missing accelerator is expected here
        if _accelerator_here(trainer_cfg.accelerator):
            raise
        notes.append(f"trainer: accelerator {trainer_cfg.accelerator!r} is not available here ({type(err).__name__}); "
                     "the Trainer was built for the CPU to check the rest of its arguments")
    for change in ({"accelerator": "cpu"}, {"accelerator": "cpu", "strategy": "auto", "devices": 1, "num_nodes": 1}):
        try:
            return build_trainer(attrs.evolve(trainer_cfg, **change), out_dir, seed=config.seed)
        except Exception as err:  # noqa: BLE001
            notes.append(f"trainer: {change} failed here too ({type(err).__name__}: {err})")
    raise RuntimeError("could not build the Trainer on this machine; see the notes")


def _synthetic_data(config: Any, arch: Any, folder: Path) -> Path:
    from eartalk.core.data.synth import synthesize_dataset

    seconds = max(1.0, math.ceil((config.data.clip_frames + 2) / 25 * 10) / 10)
    return Path(synthesize_dataset(folder / "data", clips=2, seconds=seconds, resolution=arch.resolution, seed=config.seed))


def dry_run(recipe_cls: type, config: Any, estimate_only: bool = False) -> dict[str, Any]:
    """Dry-run a recipe config; returns the report (see the module docstring).

    Args:
        recipe_cls: the recipe class (``train`` or ``vae``).
        config: its structured config.
        estimate_only: never run a step, only build and estimate.
    """
    from eartalk.recipes.common import make_datamodule, quiet_lightning, read_metrics
    from eartalk.recipes.strategy import parse_devices

    quiet_lightning()
    name = recipe_cls.name
    notes: list[str] = []
    module, arch = meta_module(name, config)
    counts = parameter_counts(module)
    if name == "train":
        # The model's estimate is recipes/memory.py's (activations probed on the real loss, DDP
        # buckets, EMA, VAE workspace, reserve); the analytic one below covers the VAE recipe.
        from eartalk.recipes.memory import estimate_for_config

        measured = estimate_for_config(config)
        memory = {**measured["parts_gib"], "total": measured["total_gib"]}
    else:
        memory = estimate_memory(name, module, arch, config)
    trainer_cfg = config.trainer
    devices = parse_devices(trainer_cfg.devices)
    nodes = int(getattr(trainer_cfg, "num_nodes", 1))
    report: dict[str, Any] = {
        "recipe": name,
        "preset": config.model.preset,
        "params_total": counts["total"],
        "params_trainable": counts["trainable"],
        "params": {k: v for k, v in counts.items() if k not in ("total", "trainable")},
        "memory_per_device_gb": memory["total"],
        "memory_breakdown_gb": memory,
        "strategy": str(trainer_cfg.strategy),
        "devices": devices,
        "num_nodes": nodes,
        "precision": str(trainer_cfg.precision),
        "batch_size": config.data.batch_size,
        "clip_frames": config.data.clip_frames,
        "ran_step": False,
        "notes": notes,
    }
    world_one = nodes == 1 and devices in (1, "auto", [0], "1")
    fits = (
        _accelerator_here(trainer_cfg.accelerator)
        and world_one
        and counts["total"] <= MAX_STEP_PARAMS
        and memory["total"] < 0.5 * _available_memory_gb()
    )
    with tempfile.TemporaryDirectory(prefix="eartalk-dry-run-") as tmp:
        tmp_dir = Path(tmp)
        data_root = Path(config.data.root)
        # The data module and the Trainer, as a real run builds them.
        data = make_datamodule(config, None, root=data_root if data_root.is_dir() else None)
        report["data"] = str(data_root) if data_root.is_dir() else None
        check_trainer(config, tmp_dir / "trainer", notes)
        if not fits or estimate_only:
            why = "asked" if estimate_only else "the config does not fit this machine for a real step"
            notes.append(f"no step run ({why}); parameters counted on the meta device, memory estimated")
            return report
        if not data_root.is_dir():
            data_root = _synthetic_data(config, arch, tmp_dir)
            notes.append(f"data.root {config.data.root} does not exist: the step ran on a synthetic dataset ({data_root})")
        data.root = data_root
        report["data"] = str(data_root)
        changes: dict[str, Any] = {
            "out_dir": str(tmp_dir / "run"),
            "data.root": str(data_root),
            "resume": False,
            "trainer.max_steps": 1,
            "trainer.val_every_n_steps": 10**9,
            "trainer.checkpoint_every_n_steps": 10**9,
            "trainer.log_every_n_steps": 1,
            "trainer.progress_bar": False,
        }
        if name == "train":
            vae = config.model.vae_checkpoint
            if not vae or (vae != "random" and not Path(vae).is_file()):
                notes.append(f"model.vae_checkpoint {vae!r} is not there: the step used a random VAE")
                changes["model.vae_checkpoint"] = "random"
            if config.init_from and not Path(config.init_from).is_file():
                notes.append(f"init_from {config.init_from} is not there: the step started from a fresh model")
                changes["init_from"] = None
        step_config = _evolve(config, **changes)
        start = time.perf_counter()
        recipe_cls().run(step_config)
        report["step_seconds"] = round(time.perf_counter() - start, 2)
        losses = read_metrics(step_config.out_dir).get("train/loss", [])
        report["step_loss"] = losses[-1][1] if losses else None
        report["ran_step"] = bool(losses)
    return report


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines of a dry-run report."""
    mem = report["memory_breakdown_gb"]
    parts = ", ".join(f"{k} {v:.3f}" for k, v in mem.items() if k != "total")
    lines = [
        f"recipe {report['recipe']} (preset {report['preset']}): {report['params_total'] / 1e6:.2f}M parameters, "
        f"{report['params_trainable'] / 1e6:.2f}M trainable",
        "  " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in report["params"].items()),
        f"strategy {report['strategy']}, devices {report['devices']}, nodes {report['num_nodes']}, precision {report['precision']}, "
        f"batch {report['batch_size']} x {report['clip_frames']} frames per device",
        f"estimated memory per device: {mem['total']:.3f} GiB ({parts})",
    ]
    if report["ran_step"]:
        lines.append(f"ran one optimiser step on {report['data']}: loss {report['step_loss']:.4f} in {report['step_seconds']} s")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
