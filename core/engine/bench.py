"""Model sizes and streaming benchmarks (the library side of ``eartalk model info`` / ``eartalk bench stream``).

:func:`model_info` counts parameters on the meta device (nothing is allocated, so ``base`` is
instant) and reports analytic FLOPs per generated frame. :func:`bench_stream` streams frames with
untrained weights (timing does not depend on the weights) and measures per-frame latency early and
late in the stream, peak RSS, the kv-cache speed-up against recomputing the window, and how the
achieved FLOP/s compare with a large matmul measured in the same run.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from eartalk.conditions.stack import ConditionSpec, ConditionStack
from eartalk.core.engine.model import EarTalkModel
from eartalk.core.engine.presets import DEFAULT_CONDITIONS, ModelArch, get_arch
from eartalk.core.errors import ConfigError


def default_conditions(registry: Any) -> list[str]:
    """The built-in stack's conditions that are registered, in stack order.

    Falls back to every registered condition when none of :data:`DEFAULT_CONDITIONS` is installed.

    Raises:
        ConfigError: no condition plugin is installed at all.
    """
    from eartalk.conditions import stack as stack_module

    defaults = getattr(stack_module, "DEFAULT_CONDITIONS", DEFAULT_CONDITIONS)
    registered = registry.names("condition")
    chosen = [name for name in defaults if name in registered]
    if chosen:
        return chosen
    if registered:
        return list(registered)
    raise ConfigError("no condition plugins are installed; install eartalk's plugins or pass --conditions NAME,...")


def _registry(registry: Any) -> Any:
    if registry is not None:
        return registry
    from eartalk.core import registry as registry_module

    return registry_module.get_registry()


def build_stack(arch: ModelArch, conditions: Sequence[str] | None, registry: Any = None, device: str | None = None) -> ConditionStack:
    """A condition stack of the named plugins (registry look-up) at ``d_model = arch.width``."""
    registry = _registry(registry)
    names = list(conditions) if conditions else default_conditions(registry)
    specs = [ConditionSpec(name) for name in names]
    if device == "meta":
        try:  # plugins that compute buffers in __init__ may not run on meta: build those on the CPU
            with torch.device("meta"):
                return ConditionStack.from_specs(specs, arch.width, source="--conditions", registry=registry)
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001
            pass
    return ConditionStack.from_specs(specs, arch.width, source="--conditions", registry=registry)


def model_info(
    preset: str,
    conditions: Sequence[str] | None = None,
    registry: Any = None,
    stack: ConditionStack | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Parameter counts (meta device), tokens, slots, window and FLOPs per frame of a preset."""
    arch = get_arch(preset, **overrides)
    stack = stack if stack is not None else build_stack(arch, conditions, registry, device="meta")
    with torch.device("meta"):
        model = EarTalkModel(arch, stack)
    counts = model.parameter_counts()
    flops = model.frame_flops()
    return {
        "preset": arch.name,
        "conditions": stack.names,
        "params": {k: v for k, v in counts.items() if k not in ("total", "backbone_decoder")},
        "params_backbone_decoder": counts["backbone_decoder"],
        "params_total": counts["total"],
        "resolution": arch.resolution,
        "latent": [arch.latent_channels, arch.latent_size, arch.latent_size],
        "tokens_per_frame": arch.num_tokens,
        "token_dim": arch.token_dim,
        "slots": stack.num_slots,
        "block_tokens": stack.num_slots + arch.num_tokens,
        "window": arch.window,
        "period": arch.period,
        "sampling": {
            "steps": arch.sampling.steps,
            "denoise_steps": arch.sampling.denoise_steps,
            "cfg": arch.sampling.cfg,
            "cfg_separate": arch.sampling.cfg_separate,
            "temperature": arch.sampling.temperature,
        },
        "flops_per_frame": flops["total"],
        "flops_per_frame_parts": {k: v for k, v in flops.items() if k != "total"},
    }


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def matmul_flops_per_second(size: int = 1024, seconds: float = 1.0, device: torch.device | str = "cpu") -> float:
    """FLOP/s of a ``size x size`` float32 matmul on ``device`` (best of repeated runs)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        torch.mm(a, b)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - t0))
    return best


def _median_ms(values: Sequence[float]) -> float:
    return round(statistics.median(values) * 1000, 2) if values else float("nan")


def bench_stream(*args: Any, precision: str = "32-true", **kwargs: Any) -> dict[str, Any]:
    """:func:`_bench_stream` at ``precision`` (``32-true``, ``bf16-mixed`` autocast or ``bf16-true`` weights)."""
    from eartalk.core.engine.devices import autocast, check_precision

    check_precision(precision)
    with autocast(kwargs.get("device", "cpu"), precision):
        result = _bench_stream(*args, precision=precision, **kwargs)
    result["precision"] = precision
    return result


def _bench_stream(
    preset: str = "small",
    frames: int = 64,
    warmup: int = 2,
    conditions: Sequence[str] | None = None,
    registry: Any = None,
    stack: ConditionStack | None = None,
    device: str = "cpu",
    nocache_frames: int = 4,
    progress: Callable[[int, int], None] | None = None,
    seed: int = 0,
    precision: str = "32-true",
    **overrides: Any,
) -> dict[str, Any]:
    """Stream ``frames`` frames with untrained weights and measure latency, memory and efficiency.

    Args:
        preset: model preset.
        frames: frames to stream (must exceed the window plus ``warmup``).
        warmup: frames left out of every statistic.
        conditions: condition plugin names (default: the built-in stack's registered plugins).
        registry, stack: where plugins come from, or a ready stack.
        device: torch device.
        nocache_frames: frames timed in a second session that recomputes the window without cache.
        progress: called with ``(done, total)``.
        seed: seed of the weights, reference and sampler.
        **overrides: :class:`ModelArch` overrides.

    Returns:
        A JSON-ready dict (see ``docs/benchmarks.md`` for the keys).
    """
    arch = get_arch(preset, **overrides)
    window = arch.window
    span = max(1, min(16, (frames - window - warmup) // 2))
    if frames < window + warmup + 2:
        raise ConfigError(f"--frames must be at least window + warmup + 2 = {window + warmup + 2} for preset {preset!r}")
    if nocache_frames < 1:
        raise ConfigError(f"--nocache-frames must be at least 1 (the no-cache baseline of cache_speedup); got {nocache_frames}")
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    torch.manual_seed(seed)
    stack = stack if stack is not None else build_stack(arch, conditions, registry)
    from eartalk.core.engine.devices import place

    model = place(EarTalkModel(arch, stack), device, precision).eval()
    reference = torch.rand(3, arch.resolution, arch.resolution, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    total = frames + nocache_frames + window

    session = model.session(reference.to(device), seed=seed)
    latencies, rss = [], []
    for i in range(frames):
        t0 = time.perf_counter()
        session.step()
        sync()
        latencies.append(time.perf_counter() - t0)
        rss.append(rss_mb())
        if progress is not None:
            progress(i + 1, total)
    measured = latencies[warmup:]
    early = latencies[window : window + span]
    late = latencies[-span:]
    steady = sorted(latencies[max(warmup, window) :])

    # Baseline: recompute sink + last W blocks every frame (no kv-cache), same model, same run.
    base = model.session(reference.to(device), seed=seed, use_cache=False)
    nocache = []
    for i in range(window + nocache_frames):
        t0 = time.perf_counter()
        base.step()
        sync()
        if i >= window:
            nocache.append(time.perf_counter() - t0)
        if progress is not None:
            progress(frames + i + 1, total)
    cached_late = statistics.median(late)

    # The backbone alone: one block against the cache vs the whole window recomputed.
    backbone_cache, backbone_full = _time_backbone(model, session, device, sync)

    peak = matmul_flops_per_second(1024, 1.0, device)
    flops = model.frame_flops(session.sampling)
    fps = len(measured) / sum(measured)
    kv = session.cache_nbytes()
    return {
        "preset": arch.name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "conditions": stack.names,
        "frames": frames,
        "warmup": warmup,
        "window": window,
        "tokens_per_frame": arch.num_tokens,
        "slots": stack.num_slots,
        "sampling": {"steps": session.sampling.steps, "denoise_steps": session.sampling.denoise_steps, "cfg": session.sampling.cfg,
                     "cfg_separate": session.sampling.cfg_separate},
        "latency_ms_early": _median_ms(early),
        "latency_ms_late": _median_ms(late),
        "latency_ms_median": _median_ms(measured),
        "latency_ms_p95": round(steady[min(len(steady) - 1, int(0.95 * len(steady)))] * 1000, 2),
        "fps": round(fps, 3),
        "peak_rss_mb_early": round(max(rss[window : window + span]), 1),
        "peak_rss_mb_late": round(max(rss[-span:]), 1),
        "kv_cache_mb": round(kv["kv_cache"] / 2**20, 3),
        "vae_cache_mb": round(kv["vae_cache"] / 2**20, 3),
        "nocache_latency_ms": _median_ms(nocache),
        "cache_speedup": round(statistics.median(nocache) / cached_late, 3),
        "backbone_ms_cached": round(backbone_cache * 1000, 3),
        "backbone_ms_recomputed": round(backbone_full * 1000, 3),
        "cache_speedup_backbone": round(backbone_full / backbone_cache, 3),
        "flops_per_frame": flops["total"],
        "flops_per_frame_parts": {k: v for k, v in flops.items() if k != "total"},
        "achieved_gflops": round(flops["total"] * fps / 1e9, 3),
        "matmul_gflops": round(peak / 1e9, 3),
        "matmul_peak_ratio": round(flops["total"] * fps / peak, 4),
        "load_average_before": load_before,
    }


@torch.no_grad()
def _time_backbone(model: EarTalkModel, session: Any, device: str, sync: Callable[[], None], reps: int = 5) -> tuple[float, float]:
    """Median seconds of one cached backbone step and of recomputing sink + W blocks."""
    bb, w = model.backbone, model.arch.window
    b = session.branches * session.batch
    cond = torch.zeros(b, model.stack.num_slots, model.stack.d_model, device=device, dtype=session.dtype)
    prev = session.prev_tokens.repeat(session.branches, 1, 1)
    ref = session.ref_tokens.repeat(session.branches, 1, 1)
    cached, full = [], []
    t = session.index + 1
    for _ in range(reps):
        t0 = time.perf_counter()
        bb.step(cond, prev, t, session.cache, session.mods)
        sync()
        cached.append(time.perf_counter() - t0)
        t += 1
        t0 = time.perf_counter()
        bb(ref, cond[:, None].expand(-1, w, -1, -1), prev[:, None].expand(-1, w, -1, -1), start=t - w + 1)
        sync()
        full.append(time.perf_counter() - t0)
    return statistics.median(cached), statistics.median(full)
