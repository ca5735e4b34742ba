"""Media I/O (video and audio read/write at 25 fps / 16 kHz) and the MediaPipe face pipeline.

May import the foundation (``eartalk.core`` top level) only; never the engine, data, recipes or the CLI.
``eartalk.core.media.read_video`` and the other names of :mod:`eartalk.core.media.io` resolve here too.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so that importing ``eartalk.core.media.face`` does not pull in PyAV.
    import importlib

    io = importlib.import_module("eartalk.core.media.io")
    try:
        return getattr(io, name)
    except AttributeError:
        raise AttributeError(f"module 'eartalk.core.media' has no attribute {name!r}") from None
