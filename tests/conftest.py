"""Shared fixtures. Every test runs with network sockets blocked."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL = SHARED / "data" / "real"
LANDMARKER = SHARED / "models" / "face_landmarker.task"

# One intra-op thread: the test tensors are small, and two OpenMP threads contending with
# MediaPipe's and DataLoader threads on a 2-core machine run many times slower than one.
torch.set_num_threads(1)


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any socket that is not a Unix socket: tests never reach the network."""
    real_socket = socket.socket

    class GuardedSocket(real_socket):  # type: ignore[misc, valid-type]
        def __init__(self, family: int = -1, *args, **kwargs) -> None:
            if family in (socket.AF_INET, socket.AF_INET6):
                raise NetworkBlocked("network access is blocked in tests")
            super().__init__(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", GuardedSocket)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(NetworkBlocked("blocked")))


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real fixtures not found at {REAL}")
    return REAL


@pytest.fixture(scope="session")
def landmarker_path() -> Path:
    if not LANDMARKER.is_file():
        pytest.skip(f"face landmarker model not found at {LANDMARKER}")
    return LANDMARKER


@pytest.fixture()
def toy_stack():
    """A two-plugin condition stack (toy: 1 slot, toy_audio: 2 slots), d_model=16."""
    from eartalk.conditions import ConditionStack
    from eartalk.conditions.testing import ToyAudio, ToyCondition

    torch.manual_seed(0)
    return ConditionStack([ToyCondition(16), ToyAudio(16)])
