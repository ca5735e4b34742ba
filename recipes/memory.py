"""Training memory per GPU: weights, gradients, optimiser, EMA and saved activations.

:func:`estimate_memory` adds up, per device:

* **weights** of the whole model (the frozen VAE included) in the training dtype; FSDP shards the
  trainable ones over the devices (the VAE is kept whole on every rank);
* **gradients** of the trainable weights (plus DDP's gradient buckets, one more copy);
* **optimiser** state: AdamW's two moments, float32 unless ``bf16-true``;
* **EMA** shadow (float32) when ``ema`` is on;
* **activations** saved for the backward pass. These are *measured*, not guessed: a probe runs the
  real ``EarTalkModel.loss`` on the CPU with the same token layout (N tokens, K slots, T frames,
  one clip) but every transformer one layer deep and 64 and 128 wide, counts the bytes autograd saves per
  component (backbone, MAR decoder blocks, diffusion head, the rest) through
  ``torch.autograd.graph.saved_tensors_hooks``, and scales each linearly to the real width, depth
  and batch (saved tensors are proportional to tokens x width; the attention kernels save q, k, v,
  output and a log-sum-exp, no S x S matrix). With activation checkpointing each block keeps only
  its input, plus one block's activations and their gradients while it is recomputed;
* a **reserve** of 10% for the allocator's fragmentation and kernel workspaces.

The VAE encodes the clips under ``no_grad`` and saves nothing; its transient activations during
encoding (one clip's frames at a time through the 3D convolutions) are counted as ``vae_workspace``.
``python -m eartalk.recipes.memory --check`` compares the estimate with a peak measured on the CPU.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

_PROBE_WIDTH = 64
GIB = 2**30


def _precision_bytes(precision: str) -> tuple[int, int]:
    """(bytes per weight, bytes per optimiser-state element) for a Lightning precision string."""
    if precision.startswith("bf16-true") or precision.startswith("16-true"):
        return 2, 2
    return 4, 4


def _saved_bytes(arch: Any, slots: tuple, frames: int, precision: str, width: int) -> dict[str, float]:
    """Bytes autograd saves per component for one clip, every transformer one layer deep and ``width`` wide."""
    import attrs

    from eartalk.recipes.train import build_model

    small = attrs.evolve(
        arch, width=width, heads=2, depth=1, decoder_width=width, decoder_heads=2, decoder_depth=1, head_width=width,
        head_depth=1, identity_dim=min(arch.identity_dim, width), vae_channels=(4,) * len(arch.vae_channels),
        vae_res_blocks=1,
    )
    torch.manual_seed(0)
    model = build_model(small, list(slots)).train()
    n, c = small.num_tokens, small.token_dim
    half = precision.startswith("bf16-true")
    if half:
        model = model.to(torch.bfloat16)

    def fake_tokens(frames_: torch.Tensor) -> torch.Tensor:  # the VAE saves nothing (no_grad): skip it
        out = torch.randn(frames_.shape[0], frames_.shape[1], n, c)
        return out.to(torch.bfloat16) if half else out

    model.encode_tokens = fake_tokens  # type: ignore[method-assign]
    totals = {"backbone": 0.0, "decoder": 0.0, "head": 0.0, "other": 0.0}
    current = ["other"]
    seen: set[tuple[int, int]] = set()

    def enter(name: str) -> Any:
        def hook(*_: Any) -> None:
            current.append(name)
        return hook

    def leave(*_: Any) -> None:
        current.pop()

    units = [(model.backbone, "backbone"), (model.decoder.head, "head")] + [(b, "decoder") for b in model.decoder.blocks]
    for module, name in units:
        module.register_forward_pre_hook(enter(name))
        module.register_forward_hook(leave)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            totals[current[-1]] += storage.nbytes()
        return t

    r = small.resolution
    dtype = torch.bfloat16 if half else torch.float32
    batch = {"frames": torch.zeros(1, frames, 3, r, r, dtype=dtype), "reference": torch.zeros(1, 3, r, r, dtype=dtype),
             "signals": {}}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16-mixed")):
            model.loss(batch)
    totals["slots"] = model.stack.num_slots
    return totals


@functools.lru_cache(maxsize=16)
def _probe(arch: Any, slots: tuple, frames: int, precision: str) -> dict[str, float]:
    """Saved bytes of one clip: per layer and unit of width, and a shared part (the SFA mask, tables).

    Two probes, 64 and 128 wide, separate ``shared + per_width * width`` for each component.
    """
    a = _saved_bytes(arch, slots, frames, precision, _PROBE_WIDTH)
    b = _saved_bytes(arch, slots, frames, precision, 2 * _PROBE_WIDTH)
    out: dict[str, float] = {"slots": a["slots"]}
    for part in ("backbone", "decoder", "head", "other"):
        per_width = max(0.0, (b[part] - a[part]) / _PROBE_WIDTH)
        out[f"{part}_per_layer_width"] = per_width
        out[f"{part}_shared"] = max(0.0, a[part] - per_width * _PROBE_WIDTH)
    n = arch.num_tokens
    resid = 2 if precision.startswith("bf16-true") else 4
    out["backbone_input_per_width"] = (n + frames * (n + a["slots"])) * resid
    out["decoder_input_per_width"] = frames * n * resid
    return out


def estimate_memory(
    arch: Any,
    batch: tuple[int, int],
    precision: str = "bf16-mixed",
    strategy: str = "ddp",
    activation_checkpointing: bool = False,
    devices: int = 1,
    *,
    conditions: tuple[str, ...] | list[str] | None = None,
    ema: bool = False,
    latents: bool = False,
) -> dict[str, Any]:
    """Bytes per device of one training step (see the module docstring for what is counted).

    Args:
        arch: the :class:`~eartalk.core.engine.presets.ModelArch`.
        batch: ``(clips per device, frames per clip)``.
        precision: Lightning precision (``32-true``, ``bf16-mixed``, ``bf16-true``).
        strategy: ``ddp`` (or ``auto``: replicated) or ``fsdp`` (trainable weights, gradients and
            optimiser state sharded over ``devices``).
        activation_checkpointing: blocks keep only their inputs (recomputed in the backward).
        devices: data-parallel devices in all (nodes x devices per node).
        conditions: condition plugin names (default: the built-in stack's installed ones).
        ema: an EMA shadow of the trainable weights is kept.
        latents: training reads pre-encoded latents (``eartalk encode``): the VAE does not run.

    Returns:
        ``{"total_gib", "parts_gib": {...}, "params": {...}, ...}``.
    """
    from eartalk.core.engine.bench import build_stack

    clips, frames = int(batch[0]), int(batch[1])
    stack_names = tuple(conditions) if conditions else tuple(build_stack(arch, None, device="meta").names)
    info = model_info_for(arch, stack_names)
    trainable = info["params_total"] - info["params"]["vae"]
    wbytes, obytes = _precision_bytes(precision)
    shard = max(1, int(devices)) if strategy == "fsdp" else 1

    probe = _probe(arch, stack_names, frames, precision)  # ModelArch is frozen: hashable cache key
    layers = {"backbone": (arch.width, arch.depth), "decoder": (arch.decoder_width, arch.decoder_depth),
              "head": (arch.head_width, arch.head_depth)}
    act: dict[str, float] = {}
    for part, (width, depth) in layers.items():
        per_layer = probe[f"{part}_per_layer_width"] * width * clips
        shared = probe[f"{part}_shared"] * clips  # the mask is one (S, S) tensor, counted per clip to stay on the safe side
        if activation_checkpointing and part in ("backbone", "decoder"):
            inputs = probe[f"{part}_input_per_width"] * width * clips
            # Block inputs + one block recomputed, twice: its activations and their gradients during its backward.
            act[part] = inputs * depth + 2 * per_layer + shared
        elif activation_checkpointing and part == "head":
            # Checkpointed residual blocks keep their inputs (about 1/8 of a block's saves) + one recomputed block.
            act[part] = per_layer / 8 * depth + 2 * per_layer + shared
        else:
            act[part] = per_layer * depth + shared
    act["other"] = probe["other_per_layer_width"] * arch.width * clips + probe["other_shared"] * clips
    parts = {
        "weights": (trainable / shard) * wbytes + info["params"]["vae"] * wbytes,
        "gradients": (trainable / shard) * wbytes * (2 if strategy != "fsdp" and devices > 1 else 1),
        "optimizer": (trainable / shard) * obytes * 2,
        "ema": (trainable / shard) * 4 if ema else 0.0,
        "activations": sum(act.values()),
        "vae_workspace": 0.0 if latents else _vae_workspace(arch, clips, frames, 2 if precision.startswith("bf16") else 4),
    }
    parts["reserve"] = 0.10 * sum(parts.values())
    total = sum(parts.values())
    return {
        "total_gib": round(total / GIB, 2),
        "parts_gib": {k: round(v / GIB, 3) for k, v in parts.items()},
        "activations_gib": {k: round(v / GIB, 3) for k, v in act.items()},
        "params": {"trainable": trainable, "vae": info["params"]["vae"], "total": info["params_total"]},
        "batch": {"clips_per_device": clips, "frames": frames,
                  "tokens_per_clip": arch.num_tokens + frames * (arch.num_tokens + probe["slots"])},
        "precision": precision,
        "strategy": strategy,
        "devices": int(devices),
        "activation_checkpointing": bool(activation_checkpointing),
        "ema": bool(ema),
        "latents": bool(latents),
        "bytes": int(total),
    }


def model_info_for(arch: Any, conditions: tuple[str, ...]) -> dict[str, Any]:
    """Parameter counts of ``arch`` with these conditions (meta device, nothing allocated)."""
    from eartalk.core.engine.bench import build_stack
    from eartalk.core.engine.model import EarTalkModel

    stack = build_stack(arch, list(conditions), device="meta")
    with torch.device("meta"):
        counts = EarTalkModel(arch, stack).parameter_counts()
    return {"params": {k: v for k, v in counts.items() if k not in ("total", "backbone_decoder")},
            "params_total": counts["total"]}


def _vae_workspace(arch: Any, clips: int, frames: int, act_bytes: int) -> float:
    """Transient VAE encoder feature maps: the clip and its reference go through at once (no_grad);
    about three maps of the widest level are alive at a time (input, output, residual)."""
    levels = [ch * (arch.resolution // 2**i) ** 2 for i, ch in enumerate(arch.vae_channels)]
    return float(clips * (frames + 1) * max(levels) * act_bytes * 3)


def fits(estimate: dict[str, Any], gib: float = 80 * 1e9 / GIB) -> bool:
    """True when the estimate fits a card of ``gib`` GiB (80 GB = 74.5 GiB)."""
    return estimate["total_gib"] <= gib


_MEASURE = r"""
import json, sys, threading, time, torch
from eartalk.core.engine.bench_train import scaled_arch
from eartalk.recipes.train import build_model
from eartalk.recipes.strategy import apply_checkpointing
args = json.loads(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)
arch = scaled_arch(args["preset"], args["scale"])
model = build_model(arch, args["conditions"]).train()
if args["checkpointing"]:
    apply_checkpointing(model)
r, b, t = arch.resolution, args["clips"], args["frames"]
batch = {"frames": torch.rand(b, t, 3, r, r) * 2 - 1, "reference": torch.rand(b, 3, r, r) * 2 - 1, "signals": {}}
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
peak, stop = [0], [False]
def sample():
    while not stop[0]:
        peak[0] = max(peak[0], rss()); time.sleep(0.0005)
base = rss()
thread = threading.Thread(target=sample); thread.start()
loss = model.loss(batch)["loss"]
loss.backward()
stop[0] = True; thread.join()
print(json.dumps({"measured": peak[0] - base}))
"""


def check_against_measured(
    preset: str = "small", scale: int = 2, clips: int = 2, frames: int = 17,
    conditions: tuple[str, ...] = ("voice_activity", "blink"),
) -> list[dict[str, Any]]:
    """Estimate vs a peak measured on the CPU (fp32, one forward + backward, fresh process each).

    Measured: the process's resident memory sampled every 0.5 ms during the step, minus its value
    just before (weights and batch already allocated). Compared with the estimate's activations +
    gradients + VAE workspace (what the step adds on top of the weights).
    """
    import json
    import subprocess
    import sys

    from eartalk.core.engine.bench_train import scaled_arch

    arch = scaled_arch(preset, scale)
    rows = []
    for checkpointing in (False, True):
        args = {"preset": preset, "scale": scale, "clips": clips, "frames": frames, "conditions": list(conditions),
                "checkpointing": checkpointing}
        proc = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(args)], capture_output=True, text=True, check=True,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        measured = json.loads(proc.stdout.strip().splitlines()[-1])["measured"]
        est = estimate_memory(arch, (clips, frames), "32-true", "auto", checkpointing, 1, conditions=conditions)
        step = (est["parts_gib"]["activations"] + est["parts_gib"]["gradients"] + est["parts_gib"]["vae_workspace"]) * GIB
        rows.append({"activation_checkpointing": checkpointing, "estimated_mib": round(step / 2**20, 1),
                     "measured_mib": round(measured / 2**20, 1), "ratio_estimate_to_measured": round(step / measured, 3)})
    return rows


def estimate_for_config(config: Any, source: str = "<config>") -> dict[str, Any]:
    """:func:`estimate_memory` for a ``train`` recipe config (what ``eartalk train --dry-run`` prints)."""
    from eartalk.recipes.config import arch_from
    from eartalk.recipes.strategy import parse_devices

    arch = arch_from(config.model, source)
    trainer = config.trainer
    devices = parse_devices(trainer.devices)
    count = len(devices) if isinstance(devices, list) else (devices if isinstance(devices, int) and devices > 0 else 1)
    data_latents = bool(getattr(config.data, "latents", False))
    return estimate_memory(
        arch,
        (config.data.batch_size, config.data.clip_frames),
        trainer.precision,
        str(trainer.strategy),
        bool(trainer.activation_checkpointing),
        count * int(trainer.num_nodes),
        conditions=tuple(spec.name for spec in config.conditions),
        ema=float(trainer.ema_decay) > 0,
        latents=data_latents,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m eartalk.recipes.memory CONFIG [key=value ...]``: print the estimate as JSON
    (``--check``: estimate vs measured peak on a scaled-down config)."""
    import json
    import sys

    from eartalk.core.config import apply_overrides, load_yaml, structure
    from eartalk.recipes.train import TrainConfig

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--check"]:
        print(json.dumps({"preset": "small", "scale": 2, "clips": 2, "frames": 17, "rows": check_against_measured()}, indent=2))
        return 0
    if not args:
        print("usage: python -m eartalk.recipes.memory CONFIG.yaml [key=value ...]", file=sys.stderr)
        return 2
    data = load_yaml(args[0])
    data.pop("recipe", None)
    config = structure(apply_overrides(data, args[1:], TrainConfig), TrainConfig, source=args[0])
    estimate = estimate_for_config(config, args[0])
    estimate["fits_80gb"] = fits(estimate)
    print(json.dumps(estimate, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
