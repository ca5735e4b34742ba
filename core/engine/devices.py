"""Device and precision choices shared by ``generate``, ``evaluate`` and ``bench`` (``--device``, ``--precision``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from eartalk.core.errors import ConfigError

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")


def resolve_device(name: str | None = "auto") -> str:
    """``auto`` (or None) -> ``cuda`` when available, else ``cpu``; other names are checked and returned.

    Raises:
        ConfigError: CUDA asked for but not available, or an unknown device string.
    """
    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name!r}: not a torch device ({err}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu (or auto)")
    return str(device)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    return precision


def place(model: torch.nn.Module, device: str, precision: str = "32-true") -> torch.nn.Module:
    """Move ``model`` to ``device``; ``bf16-true`` also casts its weights to bfloat16."""
    check_precision(precision)
    model = model.to(device)
    return model.to(torch.bfloat16) if precision == "bf16-true" else model


@contextlib.contextmanager
def autocast(device: str, precision: str) -> Iterator[None]:
    """bfloat16 autocast for ``bf16-mixed`` (a no-op for the other precisions)."""
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        yield
